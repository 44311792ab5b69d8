"""A hostile upstream behind the real gateway: one response per request, retries, head limits.

The upstream is a raw socket that answers each path with scripted bytes: two responses for
one request, a Content-Length that counts characters, 2 MB of headers, a 101 nobody asked for,
trailers, Connection-named headers, a head that trickles. Signed-in users share its keep-alive
connections, as they do in production, and what one of them is answered must never reach the
next one.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import Gateway, make_gateway

# [server] max_response_headers for this gateway: below the default of 100, so that the
# config key is seen to reach the pool
MAX_RESPONSE_HEADERS = 50
LEFTOVER_SECRET = "alice-secret-0451"


@dataclass
class Seen:
    """One request as the hostile upstream read it."""

    connection: int  # the upstream connection's number, from 1
    index: int  # the request's place on its connection, from 0
    method: str
    path: str
    headers: dict[str, str]

    @property
    def user(self) -> str:
        return self.headers.get("x-user-id", "")


# an answer: bytes to send, floats to sleep between them; None closes without answering
Answer = list[bytes | float] | None


def ok(text: str, *extra: str) -> bytes:
    body = text.encode()
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def echo(seen: Seen) -> bytes:
    body = json.dumps({"user": seen.user, "connection": seen.connection, "path": seen.path})
    return ok(body, "Content-Type: application/json")


@dataclass
class HostileUpstream:
    """A threaded raw-socket HTTP/1.1 upstream answering `script(seen)` for each request."""

    script: Callable[[Seen], Answer]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        try:
            for index in range(1000):
                line = reader.readline(65536)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (hline := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
                    name, _, value = hline.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", "0")))
                seen = Seen(number, index, method, target.split("?", 1)[0], headers)
                with self._lock:
                    self.seen.append(seen)
                answer = self.script(seen)
                if answer is None:
                    return
                for piece in answer:
                    if isinstance(piece, float):
                        time.sleep(piece)
                    else:
                        conn.sendall(piece)
        except OSError:
            return  # the gateway hung up on us, as it should on most of these
        finally:
            conn.close()


def _leftover(header: str, value: str) -> bytes:
    # the start of a response whose last header line is cut short: without the fix the next
    # response on the connection completed it, so its user got this status and header
    return f"HTTP/1.1 302 Found\r\n{header}: {value}".encode()


LEFTOVERS = {
    "set-cookie": _leftover("Set-Cookie", f"sid={LEFTOVER_SECRET}; Path=/; x="),
    "location": _leftover("Location", f"http://evil.example/?stolen={LEFTOVER_SECRET}&x="),
    "token": _leftover("X-Auth-Token", f"{LEFTOVER_SECRET}-"),
    "whole-second-response": (
        b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n"
        + f"Set-Cookie: sid={LEFTOVER_SECRET}\r\nContent-Length: 0\r\n\r\n".encode()
    ),
}


def _utf8_counted_as_characters() -> bytes:
    # a page with user content, its Content-Length counted in characters: the last bytes,
    # one per "é", spill past the end, and the content's author chose them
    spill = f"HTTP/1.1 302 Found\r\nSet-Cookie: sid={LEFTOVER_SECRET}; x="
    text = "é" * len(spill.encode()) + spill
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(text)}\r\n\r\n".encode() + text.encode()


def _big_head(total: int) -> Answer:
    # fewer headers than max_response_headers, 64 KiB each: only their size can stop them
    line = b"X-Filler: " + b"f" * 65536 + b"\r\n"
    pieces: list[bytes | float] = [b"HTTP/1.1 200 OK\r\n"]
    pieces += [line] * (total // len(line))
    pieces.append(b"Content-Length: 0\r\n\r\n")
    return pieces


def _headers(count: int) -> bytes:
    lines = "".join(f"X-Many-{i}: {i}\r\n" for i in range(count))
    return f"HTTP/1.1 200 OK\r\n{lines}Content-Length: 2\r\n\r\nok".encode()


def _trickle() -> Answer:
    # each line comes well inside the route's 1 s per-read limit; the whole head never does
    pieces: list[bytes | float] = [b"HTTP/1.1 200 OK\r\n"]
    for i in range(20):
        pieces += [0.25, f"X-Drip-{i}: {i}\r\n".encode()]
    pieces.append(b"Content-Length: 2\r\n\r\nok")
    return pieces


# response header lines holding bytes no header may carry to the client; the rest is valid
FORBIDDEN_HEADERS = {
    "name-paren": ok("forbidden", "X-Bad(Name): 1"),
    "name-bracket": ok("forbidden", "X-Bad[Name]: 1"),
    "name-slash": ok("forbidden", "X-Bad\\Name: 1"),
    "value-ctl": ok("forbidden", "X-Ctl: a\x01b"),
    "value-del": ok("forbidden", "X-Del: a\x7fb"),
    "value-nul": ok("forbidden", "X-Nul: a\x00b"),
}
for _answer in FORBIDDEN_HEADERS.values():
    assert b"\r\n\r\n" in _answer


def script(seen: Seen) -> Answer:
    path = seen.path
    if path.startswith("/leftover/"):
        if seen.user == "alice":
            return [ok("for alice") + LEFTOVERS[path.removeprefix("/leftover/")]]
        return [echo(seen)]
    if path == "/utf8":
        return [_utf8_counted_as_characters()] if seen.user == "alice" else [echo(seen)]
    if path == "/close-reused":
        # reads a request on a kept-alive connection, then closes without answering
        return None if seen.index > 0 else [echo(seen)]
    if path == "/big-head":
        return _big_head(2 * 1024 * 1024)
    if path == "/headers/over":
        return [_headers(MAX_RESPONSE_HEADERS + 10)]
    if path == "/headers/under":
        return [_headers(MAX_RESPONSE_HEADERS - 10)]
    if path == "/switch":
        return [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"]
    if path == "/trailers":
        return [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n\r\n"
            b"2\r\nab\r\n0\r\nX-Trailer: evil\r\nSet-Cookie: trailer=1\r\n\r\n"
        ]
    if path == "/hop":
        return [
            ok("hop", "Connection: keep-alive, X-Internal-Hop", "X-Internal-Hop: 1", "X-Kept: 1")
        ]
    if path == "/interim-body":
        return [b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nabc" + ok("final")]
    if path == "/no-content":
        return [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"]
    if path == "/not-modified":
        return [b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n']
    if path == "/slow/trickle":
        return _trickle()
    if path.startswith("/forbidden/"):
        return [FORBIDDEN_HEADERS[path.removeprefix("/forbidden/")]]
    return [echo(seen)]


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    server = HostileUpstream(script)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hgw(tmp_path_factory, hostile) -> Iterator[Gateway]:
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "slow"
        path = "/slow"
        upstream = "{hostile.url}"
        auth = "required"
        timeout = "1s"

        [[routes]]
        name = "app"
        path = "/"
        upstream = "{hostile.url}"
        auth = "required"
        timeout = "5s"
        """
    )
    extra = f"[server]\nmax_response_headers = {MAX_RESPONSE_HEADERS}\n"
    gateway = make_gateway(tmp_path_factory.mktemp("hostile"), routes, extra)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def alice(hgw) -> Iterator[httpx.Client]:
    client = hgw.login("alice")
    yield client
    client.close()


@pytest.fixture(scope="module")
def bob(hgw) -> Iterator[httpx.Client]:
    client = hgw.login("bob")
    yield client
    client.close()


def _no_leftover_in(response: httpx.Response) -> None:
    assert LEFTOVER_SECRET not in json.dumps(list(response.headers.multi_items()))
    assert LEFTOVER_SECRET not in response.text
    assert "location" not in response.headers
    assert len(response.headers.get_list("content-length")) <= 1


def _connection_of(hostile: HostileUpstream, path: str, user: str) -> int:
    return [s.connection for s in hostile.requests_to(path) if s.user == user][-1]


@pytest.mark.parametrize(
    "kind",
    ["set-cookie", "location", "token", "whole-second-response"],
    ids=lambda k: f"a {k.replace('-', ' ')} left after alice's response",
)
def test_what_follows_a_response_never_answers_the_next_users_request(hostile, alice, bob, kind):
    path = f"/leftover/{kind}"
    first = alice.get(path)
    assert first.status_code in (200, 502)
    if first.status_code == 200:
        assert first.text == "for alice"
    _no_leftover_in(first)
    second = bob.get(path)
    assert second.status_code == 200
    _no_leftover_in(second)
    assert second.json()["user"] == "bob"
    # the connection that carried the leftover was closed, not handed to bob
    assert _connection_of(hostile, path, "bob") != _connection_of(hostile, path, "alice")


def test_a_content_length_counted_in_characters_cannot_answer_the_next_user(hostile, alice, bob):
    first = alice.get("/utf8")
    assert first.status_code in (200, 502)
    _no_leftover_in(first)
    second = bob.get("/utf8")
    assert second.status_code == 200
    _no_leftover_in(second)
    assert second.json()["user"] == "bob"
    assert _connection_of(hostile, "/utf8", "bob") != _connection_of(hostile, "/utf8", "alice")


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE"])
def test_a_request_that_may_have_been_read_is_not_sent_twice(hgw, hostile, alice, method):
    assert alice.get("/warm").status_code == 200  # leaves a kept-alive connection idle
    origin = f"http://localhost:{hgw.port}"  # the public_url: a same-origin form post
    response = alice.request(method, "/close-reused", headers={"origin": origin})
    assert response.status_code == 502
    assert [s.method for s in hostile.requests_to("/close-reused")].count(method) == 1


def test_a_get_on_a_connection_the_upstream_closed_is_retried_once(hostile, alice):
    before = len(hostile.requests_to("/close-reused"))
    assert alice.get("/warm").status_code == 200
    response = alice.get("/close-reused")
    assert response.status_code == 200
    tries = hostile.requests_to("/close-reused")[before:]
    assert [(s.method, s.index > 0) for s in tries] == [("GET", True), ("GET", False)]
    assert response.json()["connection"] == tries[-1].connection


def test_an_oversized_response_head_is_502_and_not_buffered(hgw, hostile, alice):
    rss_before = hgw.rss_kib()
    response = alice.get("/big-head")
    assert response.status_code == 502
    assert hgw.rss_kib() - rss_before < 32 * 1024
    assert alice.get("/after").status_code == 200


def test_too_many_response_headers_is_502_past_the_configured_count(alice):
    assert alice.get("/headers/over").status_code == 502
    under = alice.get("/headers/under")
    assert under.status_code == 200
    assert under.headers["x-many-0"] == "0"


def test_a_101_to_a_request_that_asked_for_no_upgrade_is_502(hostile, alice, bob):
    response = alice.get("/switch", timeout=5)
    assert response.status_code == 502
    after = bob.get("/after-switch")
    assert after.status_code == 200
    assert after.json()["connection"] != _connection_of(hostile, "/switch", "alice")


def test_chunked_trailers_never_become_response_headers(alice):
    response = alice.get("/trailers")
    assert response.status_code == 200
    assert response.text == "ab"
    assert "x-trailer" not in response.headers
    assert "trailer=1" not in response.headers.get_list("set-cookie")


def test_response_headers_the_upstream_names_in_connection_are_dropped(alice):
    response = alice.get("/hop")
    assert response.status_code == 200
    assert "x-internal-hop" not in response.headers
    assert response.headers["x-kept"] == "1"


def test_a_1xx_with_a_body_is_not_merged_into_the_final_response(alice):
    response = alice.get("/interim-body")
    assert response.status_code in (200, 502)
    assert "abc" not in response.text
    if response.status_code == 200:
        assert response.text == "final"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/no-content", 204), ("/not-modified", 304)],
    ids=["a 204 with a Content-Length", "a 304 with a Content-Length"],
)
def test_a_bodiless_status_with_a_content_length_is_answered_cleanly(hgw, alice, path, status):
    logged = len(hgw.logs())
    response = alice.get(path)
    assert response.status_code == status
    assert response.content == b""
    assert "content-length" not in response.headers
    # the client's connection is still good, and the gateway logged no traceback
    assert alice.get("/after-bodiless").status_code == 200
    time.sleep(0.2)
    new_log = hgw.logs()[logged:]
    assert "Traceback" not in new_log
    assert "Exception in ASGI application" not in new_log


def test_a_response_head_that_trickles_is_504_at_the_route_timeout(alice):
    started = time.monotonic()
    response = alice.get("/slow/trickle", timeout=15)
    assert response.status_code == 504
    assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("case", sorted(FORBIDDEN_HEADERS))
def test_a_response_header_with_a_forbidden_byte_is_502(hgw, alice, case):
    # the pool's parser refuses the head: no header line reaches the client half-checked
    response = alice.get(f"/forbidden/{case}")
    assert response.status_code == 502
    assert "forbidden" not in response.text
    assert not [name for name in response.headers if name.startswith("x-") and "bad" in name]
    assert alice.get("/after-forbidden").status_code == 200
