"""Operating a real gateway process: SIGTERM drains, SIGHUP reloads, /metrics counts, logs keep no secret."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accesslog import FIELDS
from gateway.auth.keys import load_keys
from tests.conftest import (
    USERS,
    Gateway,
    closed_port,
    free_port,
    make_gateway,
    wait_port,
    write_config,
)
from tests.upstream import RecordingUpstream

FIRST, REST = b"first-chunk;", [b"second-chunk;", b"third-chunk;", b"last-chunk"]


class TrickleUpstream:
    """An upstream whose /trickle answer sends one chunk, then the rest only once released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args) -> None:
                pass

            def do_GET(self) -> None:
                if not self.path.endswith("/trickle"):
                    body = json.dumps({"path": self.path}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self._chunk(FIRST)
                trickle.started.set()
                trickle.release.wait(30)
                for piece in REST:
                    self._chunk(piece)
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class InFlight:
    """A GET of /stream/trickle through the gateway, read on a thread as the chunks arrive."""

    def __init__(self, gateway: Gateway, trickle: TrickleUpstream) -> None:
        self.body = b""
        self.status: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(gateway.url,), daemon=True)
        self._thread.start()
        assert trickle.started.wait(10), "the upstream never got the request"
        deadline = time.monotonic() + 10
        while FIRST not in self.body and self.error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert FIRST in self.body, self.error

    def _run(self, url: str) -> None:
        try:
            with httpx.stream("GET", url + "/stream/trickle", timeout=30, trust_env=False) as r:
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.body += chunk
        except httpx.HTTPError as exc:
            self.error = exc

    def result(self) -> tuple[int | None, bytes]:
        self._thread.join(30)
        assert self.error is None, f"the in-flight request failed: {self.error!r}"
        return self.status, self.body


def routes(**upstreams: str) -> str:
    """Public routes, one per name: /name on the given upstream (the last with a 250ms timeout)."""
    out = []
    for name, url in upstreams.items():
        timeout = "250ms" if name == "slow" else "30s"
        out.append(
            f'[[routes]]\nname = "{name}"\npath = "/{name}"\nupstream = "{url}"\n'
            f'auth = "public"\ntimeout = "{timeout}"\n'
        )
    return "\n".join(out)


APP_ROUTE = textwrap.dedent(
    """
    [[routes]]
    name = "app"
    path = "/app"
    upstream = "{url}"
    auth = "required"
    """
)


def wait_for(predicate, seconds: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def access_lines(gateway: Gateway) -> list[dict]:
    """The JSON access-log lines the gateway wrote to stdout so far."""
    lines = []
    for line in gateway.logs().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def scrape(admin_port: int) -> dict[tuple[str, tuple], float]:
    """Every sample on /metrics of the admin listener, keyed by name and sorted labels."""
    response = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", trust_env=False)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
def trickle() -> Iterator[TrickleUpstream]:
    server = TrickleUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(slow_seconds=1.0)
    yield server
    server.close()


# -- metrics, access log and startup summary: one gateway --------------------------------


@pytest.fixture(scope="module")
def observed(tmp_path_factory, recording) -> Iterator[tuple[Gateway, int]]:
    admin = free_port()
    table = routes(
        pub=recording.url,
        download=recording.url,
        dead=f"http://127.0.0.1:{closed_port()}",
        slow=recording.url,
    ) + APP_ROUTE.format(url=recording.url)
    extra = f"""
        [server]
        admin_listen = "127.0.0.1:{admin}"
        [session]
        access_ttl = "2s"
        [login_limits]
        max_failures = 2
    """
    users = {**USERS, "carol": ("carol-password-1", ())}
    gateway = make_gateway(tmp_path_factory.mktemp("ops"), table, extra, users=users)
    yield gateway, admin
    gateway.stop()


def test_run_prints_a_startup_summary(observed):
    gateway, admin = observed
    kids = [k.kid for k in load_keys(gateway.directory / "keys")]
    text = wait_for(lambda: "UPSTREAM" in gateway.logs() and gateway.logs(), what="summary")
    assert f"gateway listening on http://127.0.0.1:{gateway.port} (1 worker)" in text
    assert "store: sqlite:///data/gateway.db" in text
    assert kids and all(kid in text for kid in kids)
    assert f"metrics: http://127.0.0.1:{admin}/metrics" in text
    for name in ("pub", "download", "dead", "slow", "app"):
        assert f"\n{name} " in text


def test_metrics_count_a_known_sequence_of_requests(observed):
    gateway, admin = observed
    before = scrape(admin)
    client = gateway.client()
    for _ in range(3):
        assert client.get("/pub/x").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert client.get("/dead").status_code == 502
    assert client.get("/slow/x").status_code == 504
    for _ in range(2):
        wrong = client.post("/.auth/login", json={"username": "carol", "password": "nope"})
        assert wrong.status_code == 401
    locked = client.post("/.auth/login", json={"username": "carol", "password": "carol-password-1"})
    assert locked.status_code == 429
    alice = gateway.login("alice")
    # past half of the 2s token life the next request carries a fresh cookie
    time.sleep(1.2)
    page = alice.get("/app")
    assert page.status_code == 200 and "set-cookie" in page.headers
    after = scrape(admin)

    def requests(route: str, status: str) -> float:
        return delta(before, after, "gateway_requests_total", route=route, status=status)

    assert requests("pub", "200") == 3
    assert requests("_none", "404") == 1
    assert requests("dead", "502") == 1
    assert requests("slow", "504") == 1
    assert requests("_auth", "401") == 2
    assert requests("_auth", "429") == 1
    assert requests("_auth", "200") == 1
    assert requests("app", "200") == 1
    histogram = "gateway_request_duration_seconds_count"
    assert delta(before, after, histogram, route="pub", status="200") == 3
    assert delta(before, after, "gateway_upstream_errors_total", route="dead", kind="connect") == 1
    assert delta(before, after, "gateway_upstream_errors_total", route="slow", kind="timeout") == 1
    assert delta(before, after, "gateway_logins_total", outcome="failed") == 2
    assert delta(before, after, "gateway_logins_total", outcome="locked") == 1
    assert delta(before, after, "gateway_logins_total", outcome="ok") == 1
    assert delta(before, after, "gateway_token_reissues_total") == 1
    # the public port has no /metrics
    public = client.get("/metrics")
    assert public.status_code == 404 and "gateway_requests_total" not in public.text


def test_access_log_has_every_field_and_no_secret(observed, recording):
    gateway, _ = observed
    client = gateway.client()
    wrong_password = "Wr0ng-pa55word-xyz"
    assert (
        client.post(
            "/.auth/login", json={"username": "bob", "password": wrong_password}
        ).status_code
        == 401
    )
    alice = gateway.login("alice")
    cookie = next(iter(alice.cookies.values()))
    token = gateway.login("bob").cookies["gw_session"]
    page = alice.get("/app/access-log-check")
    assert page.status_code == 200
    forwarded_id = recording.last().header("x-request-id")[0]
    bearer = client.get(
        "/pub/with-query",
        params={"token": "QUERY-SECRET-42", "password": "also-secret"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert bearer.status_code == 200
    size = 300_000
    download = client.get("/download", params={"size": size})
    assert download.status_code == 200 and len(download.content) == size

    lines = wait_for(
        lambda: (
            [x for x in access_lines(gateway) if x["path"] == "/download"] and access_lines(gateway)
        ),
        what="the access-log line of the download",
    )
    text = gateway.logs()
    for secret in (
        USERS["alice"][0],
        USERS["bob"][0],
        wrong_password,
        cookie,
        token,
        token.split(".")[2],
        "QUERY-SECRET-42",
        "also-secret",
    ):
        assert secret not in text, f"{secret[:12]}... found in the log"
    for line in lines:
        assert tuple(line) == FIELDS
    (app,) = [x for x in lines if x["path"] == "/app/access-log-check"]
    assert app["request_id"] == forwarded_id
    assert app["route"] == "app" and app["user"] == "alice" and app["method"] == "GET"
    assert app["status"] == 200 and app["upstream_status"] == 200
    assert app["client"] == "127.0.0.1" and app["bytes"] == len(page.content)
    assert isinstance(app["duration_ms"], float) and app["time"].endswith("+00:00")
    (query,) = [x for x in lines if x["path"] == "/pub/with-query"]
    assert query["user"] == "bob"  # the bearer token's subject
    (streamed,) = [x for x in lines if x["path"] == "/download"]
    assert streamed["bytes"] == size and streamed["user"] is None
    logins = [x for x in lines if x["path"] == "/.auth/login"]
    assert {(x["status"], x["user"]) for x in logins} >= {(401, None), (200, "alice"), (200, "bob")}
    assert all(x["route"] == "_auth" for x in logins)


# -- SIGTERM -----------------------------------------------------------------------------


def test_sigterm_lets_a_streaming_response_finish_then_exits_0(gateway_factory, trickle):
    trickle.release.clear()
    trickle.started.clear()
    extra = f'[server]\nadmin_listen = "127.0.0.1:{free_port()}"'
    gateway = gateway_factory(routes=routes(stream=trickle.url), extra=extra, users=None)
    port = gateway.port
    try:
        in_flight = InFlight(gateway, trickle)
        gateway.proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return True
            return False

        wait_for(refused, what="the listener to close")
        assert gateway.proc.poll() is None, "exited with a request in flight"
        trickle.release.set()
        status, body = in_flight.result()
        assert status == 200 and body == FIRST + b"".join(REST)
        assert gateway.proc.wait(timeout=20) == 0
    finally:
        gateway.stop()
    (line,) = [x for x in access_lines(gateway) if x["path"] == "/stream/trickle"]
    assert line["status"] == 200 and line["bytes"] == len(FIRST + b"".join(REST))


# -- SIGHUP ------------------------------------------------------------------------------


@pytest.fixture
def reloadable(gateway_factory, trickle, recording) -> Iterator[tuple[Gateway, str]]:
    trickle.release.clear()
    trickle.started.clear()
    extra = f'[server]\nadmin_listen = "127.0.0.1:{free_port()}"'
    table = routes(stream=trickle.url, pub=recording.url)
    gateway = gateway_factory(routes=table + APP_ROUTE.format(url=recording.url), extra=extra)
    yield gateway, extra
    trickle.release.set()
    gateway.stop()


def test_sighup_valid_config_serves_new_requests_and_finishes_old_ones(
    reloadable, trickle, recording
):
    gateway, extra = reloadable
    alice = gateway.login("alice")
    assert gateway.client().get("/new/x").status_code == 404
    in_flight = InFlight(gateway, trickle)

    table = routes(stream=trickle.url, pub=recording.url, new=recording.url)
    write_config(
        gateway.directory, gateway.port, table + APP_ROUTE.format(url=recording.url), extra
    )
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gateway.client().get("/new/x").status_code == 200, what="the new route")
    # the session store and keys carried over: the signed-in user stays signed in
    assert alice.get("/app").status_code == 200
    assert "reloaded" in gateway.logs()

    # the old config's upstream clients stay open until its last request is done
    assert "was closed" not in gateway.logs()
    trickle.release.set()
    status, body = in_flight.result()
    assert status == 200 and body == FIRST + b"".join(REST)
    wait_for(lambda: "was closed" in gateway.logs(), what="the old config to close")
    assert gateway.proc.poll() is None


def test_sighup_invalid_config_is_refused_logged_and_the_old_one_serves(reloadable, recording):
    gateway, extra = reloadable
    broken = routes(pub="htp:/x") + '\n[[routes]]\nname = "pub"\npath = "/pub2"\n'
    write_config(gateway.directory, gateway.port, broken, extra)
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "routes[0].upstream" in gateway.logs(), what="the refusal in the log")
    logs = gateway.logs()
    assert "reload refused" in logs and "'htp:/x'" in logs
    assert gateway.proc.poll() is None
    assert gateway.client().get("/pub/x").status_code == 200
    assert gateway.login("alice").get("/app").status_code == 200


def _workers(pid: int) -> list[int]:
    """The worker processes of supervisor `pid` (not multiprocessing's resource tracker)."""
    workers = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(int(child))
        except FileNotFoundError:
            pass
    return workers


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sighup_while_starting_waits_for_the_reload_handler_and_kills_nothing(
    tmp_path, recording, workers
):
    """A SIGHUP that reaches `gateway run`, or a worker of it, before its reload handler is in
    place is held until it is: no process ends (SIGHUP's default action), none is lost (as an
    ignored one would be), and the config written meanwhile is served."""
    port = free_port()
    extra = f'[server]\nadmin_listen = "127.0.0.1:{free_port()}"'
    config = write_config(tmp_path, port, routes(pub=recording.url), extra)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", str(workers)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    gateway = Gateway(f"http://127.0.0.1:{port}", port, config, tmp_path, proc, log)
    try:
        # printed by `gateway run` before it starts uvicorn: from here on a SIGHUP is its to take
        wait_for(lambda: "listen" in gateway.logs(), what="the startup summary")
        write_config(tmp_path, port, routes(pub=recording.url, new=recording.url), extra)
        targets = [proc.pid]
        if workers > 1:
            # each worker as soon as it exists: it has not even imported the gateway yet
            targets = wait_for(
                lambda: len(c := _workers(proc.pid)) == workers and c, what="workers"
            )
            targets.append(proc.pid)
        for pid in targets:
            os.kill(pid, signal.SIGHUP)
        wait_port(port, proc)
        # every serving process read the file again once it could
        wait_for(
            lambda: gateway.logs().count("reloaded ") >= workers, what="each process to reload"
        )
        assert httpx.get(gateway.url + "/new/x", trust_env=False).status_code == 200
        logs = gateway.logs()
        assert "died" not in logs and "Traceback" not in logs
        assert proc.poll() is None
        if workers > 1:
            assert sorted(_workers(proc.pid)) == sorted(targets[:-1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        gateway.stop()


# -- store errors -----------------------------------------------------------------------


def test_store_errors_and_login_errors_are_counted(gateway_factory, recording):
    admin = free_port()
    extra = f'[server]\nadmin_listen = "127.0.0.1:{admin}"'
    dead_redis = f"redis://127.0.0.1:{closed_port()}/0"
    table = routes(pub=recording.url)
    gateway = gateway_factory(routes=table, extra=extra, store=dead_redis)
    try:
        client = gateway.client()
        assert client.get("/.auth/ready").status_code == 503
        login = client.post("/.auth/login", json={"username": "alice", "password": "x"})
        assert login.status_code == 503
        samples = scrape(admin)
    finally:
        gateway.stop()
    assert samples[("gateway_store_errors_total", (("step", "ready"),))] == 1
    assert samples[("gateway_store_errors_total", (("step", "login"),))] == 1
    assert samples[("gateway_logins_total", (("outcome", "error"),))] == 1


# -- several workers ---------------------------------------------------------------------


def test_workers_share_metrics_reload_in_place_refuse_bad_config_and_clean_up(
    tmp_path, gateway_factory, recording
):
    admin = free_port()
    extra = f'[server]\nadmin_listen = "127.0.0.1:{admin}"'
    table = routes(pub=recording.url)
    gateway = gateway_factory(
        tmp_path, routes=table, extra=extra, users=None, args=("--workers", "2")
    )
    port = gateway.port
    try:
        # the parent set the variable after it started: its workers were born with it
        pid = gateway.proc.pid
        worker = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
        environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
        metrics_dir = next(
            Path(v.split(b"=", 1)[1].decode())
            for v in environ
            if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")
        )
        for _ in range(6):
            assert httpx.get(gateway.url + "/pub/x", trust_env=False).status_code == 200
        samples = scrape(admin)
        assert samples[("gateway_requests_total", (("route", "pub"), ("status", "200")))] == 6

        # the supervisor passes SIGHUP on: every worker refuses a bad config and keeps serving
        write_config(tmp_path, port, routes(pub="htp:/x"), extra)
        gateway.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: gateway.logs().count("reload refused: 1 error(s)") >= 2,
            what="both workers to refuse the config",
        )
        assert "config error: routes[0].upstream: 'htp:/x'" in gateway.logs()
        assert httpx.get(gateway.url + "/pub/x", trust_env=False).status_code == 200

        # a good config: every worker reloads in place, no worker is replaced, nothing dropped
        workers_before = set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        write_config(tmp_path, port, routes(pub=recording.url, new=recording.url), extra)
        gateway.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: gateway.logs().count("reloaded ") >= 2, what="both workers to reload")
        assert all(
            httpx.get(gateway.url + "/new/x", trust_env=False).status_code == 200 for _ in range(8)
        )
        workers_after = set(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        assert workers_after == workers_before
        # counts survive the restart of the workers: 6 before, 1 during the refused reload
        samples = scrape(admin)
        assert samples[("gateway_requests_total", (("route", "pub"), ("status", "200")))] == 7
        assert metrics_dir.is_dir()
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=30) == 0
    finally:
        gateway.stop()
    assert not metrics_dir.exists()


# -- demo --------------------------------------------------------------------------------


def test_demo_prints_the_startup_summary_and_stops_cleanly(tmp_path):
    port, legacy, api = free_port(), free_port(), free_port()
    table = textwrap.dedent(
        f"""
        [[routes]]
        name = "legacy"
        path = "/"
        upstream = "http://127.0.0.1:{legacy}"

        [[routes]]
        name = "api"
        path = "/api"
        upstream = "http://127.0.0.1:{api}"
        auth = "public"
        """
    )
    extra = f'[server]\nadmin_listen = "127.0.0.1:{free_port()}"'
    config = write_config(tmp_path, port, table, extra)
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=os.environ.copy(),
        )
        try:
            wait_port(port, proc)
            assert (
                httpx.get(f"http://127.0.0.1:{port}/api/public", trust_env=False).status_code == 200
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert "Demo gateway: open" in text
    assert f"gateway listening on http://127.0.0.1:{port}" in text
    assert "store: sqlite:///data/gateway.db" in text
    assert "legacy" in text and "api" in text and "NAME" in text
