"""The ASGI and WSGI middleware: a real Flask app under werkzeug's server and a real Starlette
app under uvicorn, each wrapped, driven over HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest
import uvicorn
from flask import Flask, Response, jsonify, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from werkzeug.serving import make_server

from gateway import asgi, wsgi
from gateway.config import ConfigError, load_config
from gateway.core.nexthop import canonical
from tests.conftest import ROOT, USERS, add_users, free_port, wait_port, write_config

# routes without `upstream`: the wrapped app is what they protect
ROUTES = """
[[routes]]
name = "site"
path = "/"
auth = "optional"

[[routes]]
name = "app"
path = "/app"
auth = "required"

[[routes]]
name = "admin"
path = "/admin"
auth = "required"
roles = ["admin"]
"""
STREAM_CHUNK = bytes(range(256)) * 256  # 64 KiB
STREAM_CHUNKS = 32  # 2 MiB in all
IDENTITY_NAMES = {b"x-user-id", b"x-user-roles", b"x-gateway-assertion", b"remote-user"}


# -- the wrapped apps: the same answers from Flask and from Starlette ---------------------


def flask_app() -> Flask:
    app = Flask("wrapped")

    @app.get("/app/stream")
    def stream() -> Response:
        return Response((STREAM_CHUNK for _ in range(STREAM_CHUNKS)), mimetype="text/plain")

    @app.get("/app/set-cookies")
    def set_cookies() -> Response:
        response = Response("ok")
        response.headers.add("Set-Cookie", "gw_session=forged; Path=/")
        response.headers.add("Set-Cookie", "theme=dark; Path=/")
        return response

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST"])
    @app.route("/<path:rest>", methods=["GET", "POST"])
    def echo(rest: str) -> Response:
        body = request.get_data()
        identity = request.environ.get("gateway.identity")
        return jsonify(
            path=request.path,
            user=request.environ.get("REMOTE_USER"),
            identity=identity.sub if identity else None,
            roles=list(identity.roles) if identity else [],
            headers=list(request.headers.items()),
            body_length=len(body),
            body_sha256=hashlib.sha256(body).hexdigest(),
        )

    return app


@dataclass
class LifespanLog:
    events: list[str] = field(default_factory=list)


def starlette_app(lifespan_log: LifespanLog) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        identity = request.scope["gateway"].identity
        user = request.user.display_name if request.user.is_authenticated else None
        return JSONResponse(
            {
                "path": request.url.path,
                "user": user,
                "identity": identity.sub if identity else None,
                "roles": list(identity.roles) if identity else [],
                "scopes": request.auth.scopes,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]
                ],
                "body_length": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    async def stream(request: Request) -> StreamingResponse:
        async def chunks():
            for _ in range(STREAM_CHUNKS):
                yield STREAM_CHUNK

        return StreamingResponse(chunks(), media_type="text/plain")

    async def set_cookies(request: Request) -> JSONResponse:
        response = JSONResponse("ok")
        response.headers.append("set-cookie", "gw_session=forged; Path=/")
        response.headers.append("set-cookie", "theme=dark; Path=/")
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app):
        lifespan_log.events.append("startup")
        yield
        lifespan_log.events.append("shutdown")

    async def whoami_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        identity = websocket.scope["gateway"].identity
        await websocket.send_json(
            {
                "user": identity.sub if identity else None,
                "header": websocket.headers.get("x-user-id"),
            }
        )
        await websocket.close()

    methods = ["GET", "POST"]
    return Starlette(
        routes=[
            WebSocketRoute("/app/socket", whoami_socket),
            Route("/app/stream", stream),
            Route("/app/set-cookies", set_cookies),
            Route("/", echo, methods=methods),
            Route("/{rest:path}", echo, methods=methods),
        ],
        lifespan=lifespan,
    )


# -- serving them -------------------------------------------------------------------------


@dataclass
class Served:
    kind: str
    url: str
    port: int

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, trust_env=False, **kwargs)

    def login(self, user: str) -> httpx.Client:
        client = self.client()
        response = client.post("/.auth/login", json={"username": user, "password": USERS[user][0]})
        assert response.status_code == 200, response.text
        return client


class WerkzeugServer:
    """werkzeug's threaded WSGI server on 127.0.0.1 in a background thread."""

    def __init__(self, app, port: int) -> None:
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        wait_port(port)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)


class UvicornServer:
    """uvicorn.Server on 127.0.0.1 in a background thread, lifespan on."""

    def __init__(self, app, port: int) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def middleware_dir(tmp_path_factory, port: int) -> Path:
    directory = tmp_path_factory.mktemp("mw")
    # strict revocation: a logged-out token is refused at once, not at its next re-issue
    write_config(directory, port, ROUTES, extra='[session]\nrevocation = "strict"\n')
    add_users(directory / "users.toml")
    return directory


@pytest.fixture(scope="module", params=["flask", "starlette"])
def served(request, tmp_path_factory) -> Iterator[Served]:
    port = free_port()
    config_file = middleware_dir(tmp_path_factory, port) / "gateway.toml"
    if request.param == "flask":
        middleware = wsgi.GatewayMiddleware(flask_app().wsgi_app, config_file)
        server: WerkzeugServer | UvicornServer = WerkzeugServer(middleware, port)
    else:
        # a Config object works as well as a path
        config = load_config(config_file, require_upstream=False)
        server = UvicornServer(asgi.GatewayMiddleware(starlette_app(LifespanLog()), config), port)
    yield Served(request.param, f"http://127.0.0.1:{port}", port)
    server.stop()
    if request.param == "flask":
        middleware.close()


def identity_headers(seen: dict) -> list[tuple[str, str]]:
    """The headers the app saw whose name folds to an identity header's."""
    return [
        (k, v)
        for k, v in seen["headers"]
        if canonical(k.lower().encode("latin-1")) in IDENTITY_NAMES
    ]


# -- the tests ------------------------------------------------------------------------------


def test_a_browser_without_a_session_is_sent_to_the_login_page(served):
    with served.client() as client:
        response = client.get("/app/page?q=1", headers={"accept": "text/html"})
    assert response.status_code == 302
    assert response.headers["location"] == (
        f"http://localhost:{served.port}/.auth/login?next=%2Fapp%2Fpage%3Fq%3D1"
    )


def test_an_api_call_without_a_session_gets_401_json(served):
    with served.client() as client:
        response = client.get("/app/whoami", headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"


def test_the_login_page_is_served_by_the_middleware(served):
    with served.client() as client:
        response = client.get("/.auth/login?next=/app")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert 'name="csrf"' in response.text


def test_after_json_login_the_cookie_carries_the_identity_to_the_app(served):
    with closing(served.login("alice")) as client:
        assert client.get("/.auth/me").json()["sub"] == "alice"
        client.cookies.set("theme", "dark")
        response = client.get("/app/whoami")
        assert response.status_code == 200
        seen = response.json()
    assert seen["path"] == "/app/whoami"
    assert seen["user"] == seen["identity"] == "alice"
    assert seen["roles"] == ["staff"]
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-user-id"] == "alice"
    assert headers["x-user-roles"] == "staff"
    assertion = jwt.decode(headers["x-gateway-assertion"], options={"verify_signature": False})
    assert (assertion["sub"], assertion["aud"]) == ("alice", "app")
    assert "path" not in assertion  # one per session and route (not bound by default)
    # the session cookie stays with the gateway; the app's own cookies pass
    assert headers["cookie"] == "theme=dark"
    if served.kind == "starlette":
        assert seen["scopes"] == ["authenticated", "staff"]


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed in as alice"])
def test_client_sent_identity_headers_never_reach_the_app(served, signed_in):
    spoofed = [
        ("X-User-Id", "mallory"),
        ("x-user-roles", "admin"),
        ("X_User_Id", "mallory"),
        ("X.User.Id", "mallory"),
        ("X-Gateway-Assertion", "forged"),
        ("Remote-User", "mallory"),
        ("X-Forwarded-User", "mallory"),
    ]
    client = served.login("alice") if signed_in else served.client()
    with closing(client):
        seen = client.get("/", headers=httpx.Headers(spoofed)).json()
    names = [k.lower() for k, _ in seen["headers"]]
    assert "x-forwarded-user" not in names
    if signed_in:
        assert seen["user"] == "alice"
        assert {
            (k.lower(), v) for k, v in identity_headers(seen) if k.lower() != "x-gateway-assertion"
        } == {
            ("x-user-id", "alice"),
            ("x-user-roles", "staff"),
        }
        assert len(identity_headers(seen)) == 3
    else:
        assert seen["user"] is None and seen["identity"] is None
        assert identity_headers(seen) == []


def test_a_user_without_the_role_gets_403_and_one_with_it_gets_in(served):
    with closing(served.login("alice")) as alice:
        assert alice.get("/admin").status_code == 403
    with closing(served.login("bob")) as bob:
        response = bob.get("/admin/users")
    assert response.status_code == 200
    assert response.json()["roles"] == ["admin", "staff"]


def test_the_path_matched_is_the_path_the_app_sees(served):
    # an encoded dot segment must not walk past the /admin rule into the public catch-all
    with closing(served.login("alice")) as alice:
        assert alice.get("/x/%2e%2e/admin").status_code == 403
    with closing(served.login("bob")) as bob:
        response = bob.get("/x/%2e%2e/ADMIN/./list")
    assert response.status_code == 200
    assert response.json()["path"] == "/ADMIN/list"


def test_a_bearer_token_works_and_is_not_passed_to_the_app(served):
    with closing(served.login("bob")) as bob:
        token = bob.cookies["gw_session"]
    with served.client() as client:
        seen = client.get("/app/x", headers={"authorization": f"Bearer {token}"}).json()
    assert seen["user"] == "bob"
    assert "authorization" not in [k.lower() for k, _ in seen["headers"]]


def test_logout_revokes_the_session_and_clears_the_cookie(served):
    client = served.login("alice")
    with closing(client):
        token = client.cookies["gw_session"]
        response = client.post("/.auth/logout", json={})
        assert response.status_code == 204
        assert "gw_session=;" in response.headers["set-cookie"]
        assert client.get("/app/x").status_code == 401
    with served.client() as replay:
        response = replay.get("/app/x", headers={"cookie": f"gw_session={token}"})
    assert response.status_code == 401


def test_the_app_cannot_set_the_gateway_cookie_but_sets_its_own(served):
    with closing(served.login("alice")) as client:
        response = client.get("/app/set-cookies")
    cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith("theme=dark") for c in cookies)
    assert not any("forged" in c for c in cookies)


def test_request_and_response_bodies_pass_whole(served):
    payload = bytes(range(256)) * 12 * 1024  # 3 MiB
    with closing(served.login("alice")) as client:
        seen = client.post("/app/upload", content=payload).json()
        assert seen["body_length"] == len(payload)
        assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
        with client.stream("GET", "/app/stream") as response:
            assert response.status_code == 200
            received = b"".join(response.iter_bytes())
    assert received == STREAM_CHUNK * STREAM_CHUNKS


# -- lifespan, config, examples -------------------------------------------------------------


def test_asgi_lifespan_reaches_the_app_and_shutdown_closes_the_store(tmp_path_factory):
    port = free_port()
    directory = middleware_dir(tmp_path_factory, port)
    log = LifespanLog()
    middleware = asgi.GatewayMiddleware(starlette_app(log), directory / "gateway.toml")
    server = UvicornServer(middleware, port)
    try:
        assert log.events == ["startup"]
        with closing(
            Served("starlette", f"http://127.0.0.1:{port}", port).login("alice")
        ) as client:
            assert client.get("/app/x").json()["user"] == "alice"
    finally:
        server.stop()
    assert log.events == ["startup", "shutdown"]
    assert middleware.runtime.store._conn is None  # the sqlite connection is closed


@pytest.mark.parametrize("served", ["starlette"], indirect=True)
def test_asgi_websockets_carry_the_identity_and_refuse_strangers(served):
    with closing(served.login("alice")) as alice:
        cookie = f"gw_session={alice.cookies['gw_session']}"
    uri = f"ws://127.0.0.1:{served.port}/app/socket"
    spoofed = {"cookie": cookie, "x-user-id": "mallory"}
    with ws_connect(uri, additional_headers=spoofed) as socket:
        assert json.loads(socket.recv(timeout=10)) == {"user": "alice", "header": "alice"}
    with pytest.raises(InvalidStatus) as anonymous:
        ws_connect(uri)
    assert anonymous.value.response.status_code == 401
    # cross-site websocket hijacking: another site's page opening a socket with our cookie
    with pytest.raises(InvalidStatus) as cross_site:
        ws_connect(uri, additional_headers={"cookie": cookie}, origin="http://evil.example")
    assert cross_site.value.response.status_code == 403


def test_middleware_routes_need_no_upstream_but_the_proxy_still_does(tmp_path):
    config_file = write_config(tmp_path, free_port(), ROUTES)
    assert load_config(config_file, require_upstream=False).routes[0].upstream == ""
    with pytest.raises(ConfigError) as raised:
        load_config(config_file)
    assert "routes[0].upstream: missing" in raised.value.errors


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("example", "page", "expected"),
    [("flask_app", "/notes", "alice's notes"), ("starlette_app", "/api/me", '"user":"alice"')],
)
def test_the_examples_sign_in_and_greet(tmp_path_factory, example, page, expected):
    port = free_port()
    directory = tmp_path_factory.mktemp("example")
    config_text = (ROOT / "examples" / f"{example.split('_')[0]}.toml").read_text()
    config_text = config_text.replace(":5000", f":{port}").replace(":8000", f":{port}")
    (directory / "gateway.toml").write_text(config_text)
    add_users(directory / "users.toml")
    app = _load_example(example).create_app(directory / "gateway.toml")
    if example == "flask_app":
        server: WerkzeugServer | UvicornServer = WerkzeugServer(app, port)
    else:
        server = UvicornServer(app, port)
    try:
        served = Served(example, f"http://127.0.0.1:{port}", port)
        with served.client() as anonymous:
            assert anonymous.get(page, headers={"accept": "text/html"}).status_code == 302
        with closing(served.login("alice")) as client:
            response = client.get(page)
        assert response.status_code == 200
        assert expected in response.text
    finally:
        server.stop()
        if example == "flask_app":
            app.wsgi_app.close()


@pytest.mark.parametrize("served", ["flask"], indirect=True)
def test_wsgi_serves_concurrent_requests_from_many_threads(served):
    with closing(served.login("bob")) as bob:
        token = bob.cookies["gw_session"]

    def one(index: int) -> tuple[int, str | None]:
        with served.client() as client:
            client.cookies.set("gw_session", token)
            response = client.get(f"/app/{index}")
            return response.status_code, response.json()["user"]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, range(48)))
    assert results == [(200, "bob")] * 48


def test_wsgi_under_gunicorn_preload_starts_its_loop_in_each_forked_worker(tmp_path_factory):
    pytest.importorskip("gunicorn")
    port = free_port()
    directory = tmp_path_factory.mktemp("gunicorn")
    config_text = (ROOT / "examples" / "flask.toml").read_text().replace(":5000", f":{port}")
    (directory / "gateway.toml").write_text(config_text)
    add_users(directory / "users.toml")
    log = (directory / "gunicorn.log").open("wb")
    # --preload builds the middleware in the master before it forks the workers
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{port}",
            "--chdir",
            str(ROOT / "examples"),
            f"flask_app:create_app({str(directory / 'gateway.toml')!r})",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(directory)},  # its control socket goes under HOME
    )
    try:
        wait_port(port, proc)
        served = Served("gunicorn", f"http://127.0.0.1:{port}", port)
        for _ in range(4):  # fresh connections, spread over the workers
            with closing(served.login("alice")) as client:
                response = client.get("/notes")
                assert response.status_code == 200, response.text
                assert "alice's notes" in response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
