"""WebSocket upgrades through a real gateway process to a real websocket upstream.

The upstream (websockets' own server, on a thread) echoes frames, answers "headers" with the
handshake headers it received, closes with a code on "close CODE REASON", and records the close
code each client connection ended with.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import Request, ServerConnection, serve

from gateway.config import load_config
from tests.conftest import Gateway, closed_port, make_gateway


class EchoUpstream:
    """A websocket server on 127.0.0.1 that echoes and records."""

    def __init__(self) -> None:
        self.handshakes: list[tuple[str, list[tuple[str, str]]]] = []
        self.closed: dict[str, int | None] = {}  # ?id= of the connection -> close code received
        self.server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=lambda _, offered: "chat.v1" if "chat.v1" in offered else None,
            compression=None,
        )
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append((request.path, list(request.headers.raw_items())))
        if request.path.startswith("/ws/forbidden"):
            return Response(403, "Forbidden", Headers([("Content-Length", "0")]), b"")
        return None

    def _handle(self, connection: ServerConnection) -> None:
        key = connection.request.path.partition("id=")[2]
        try:
            for message in connection:
                if message == "headers":
                    headers = list(connection.request.headers.raw_items())
                    connection.send(json.dumps({"path": connection.request.path, "h": headers}))
                elif isinstance(message, str) and message.startswith("close "):
                    _, code, reason = message.split(" ", 2)
                    connection.close(int(code), reason)
                else:
                    connection.send(message)
        except ConnectionClosed:
            pass
        self.closed[key] = connection.close_code

    def wait_closed(self, key: str, seconds: float = 15.0) -> int | None:
        deadline = time.monotonic() + seconds
        while key not in self.closed and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.closed[key]

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, echo: EchoUpstream) -> Iterator[Gateway]:
    dead = f"http://127.0.0.1:{closed_port()}"
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "ws"
        path = "/ws"
        upstream = "{echo.url}"
        auth = "required"

        [[routes]]
        name = "ws-admin"
        path = "/wsadmin"
        upstream = "{echo.url}"
        auth = "required"
        roles = ["admin"]

        [[routes]]
        name = "plain"
        path = "/plain"
        upstream = "{echo.url}"
        auth = "required"
        websocket = false

        [[routes]]
        name = "ws-dead"
        path = "/wsdead"
        upstream = "{dead}"
        auth = "public"
        """
    )
    gateway = make_gateway(tmp_path_factory.mktemp("ws"), routes)
    yield gateway
    gateway.stop()


def session_cookie(gw: Gateway, user: str = "alice") -> str:
    client = gw.login(user)
    try:
        return client.cookies["gw_session"]
    finally:
        client.close()


def open_ws(
    gw: Gateway, path: str, headers: list[tuple[str, str]] = (), subprotocols: list[str] = ()
) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{gw.port}{path}",
        additional_headers=list(headers),
        subprotocols=list(subprotocols) or None,
        proxy=None,
        open_timeout=10,
        compression=None,
    )


@pytest.mark.parametrize("how", ["cookie", "bearer"])
def test_authenticated_upgrade_echoes_text_and_binary_frames(gw: Gateway, how: str) -> None:
    token = session_cookie(gw)
    header = (
        ("Cookie", f"gw_session={token}")
        if how == "cookie"
        else ("Authorization", f"Bearer {token}")
    )
    with open_ws(gw, "/ws/echo", [header]) as ws:
        ws.send("hello, upstream")
        assert ws.recv(timeout=10) == "hello, upstream"
        blob = bytes(range(256)) * 300  # bigger than one TCP segment, every byte value
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
        ws.send("héllo ✓")
        assert ws.recv(timeout=10) == "héllo ✓"


def test_upstream_sees_our_identity_not_a_spoofed_one_nor_the_session_cookie(
    gw: Gateway, echo: EchoUpstream
) -> None:
    token = session_cookie(gw)
    spoofed = [
        ("Cookie", f"theme=dark; gw_session={token}; lang=en"),
        ("X-User-Id", "mallory"),
        ("x_user_id", "mallory"),
        ("X-User-Roles", "admin"),
        ("X-Forwarded-User", "mallory"),
        ("X-Gateway-Assertion", "forged"),
    ]
    with open_ws(gw, "/ws/headers?x=1", spoofed) as ws:
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=10))
    assert seen["path"] == "/ws/headers?x=1"
    headers = [(name.lower(), value) for name, value in seen["h"]]
    values = {name: [v for n, v in headers if n == name] for name, _ in headers}
    assert values["x-user-id"] == ["alice"]
    assert values["x-user-roles"] == ["staff"]
    assert "x_user_id" not in values and "x-forwarded-user" not in values
    assert values["x-gateway-assertion"] != ["forged"] and len(values["x-gateway-assertion"]) == 1
    assert values["cookie"] == ["theme=dark; lang=en"]
    assert token not in json.dumps(seen)
    assert values["x-forwarded-for"] == ["127.0.0.1"]
    assert values["host"] == [f"127.0.0.1:{echo.port}"]


def test_the_upstream_chooses_among_the_subprotocols_the_client_offers(gw: Gateway) -> None:
    token = session_cookie(gw)
    offered = ["chat.v2", "chat.v1"]
    with open_ws(gw, "/ws/echo", [("Cookie", f"gw_session={token}")], offered) as ws:
        assert ws.subprotocol == "chat.v1"
        ws.send("headers")
        seen = json.loads(ws.recv(timeout=10))
    protocols = [v for n, v in seen["h"] if n.lower() == "sec-websocket-protocol"]
    assert protocols == ["chat.v2, chat.v1"]


def test_upstream_close_code_and_reason_reach_the_client(gw: Gateway) -> None:
    token = session_cookie(gw)
    with open_ws(gw, "/ws/close", [("Cookie", f"gw_session={token}")]) as ws:
        ws.send("close 4001 upstream says bye")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 4001
        assert ws.close_reason == "upstream says bye"


def test_client_close_code_reaches_the_upstream(gw: Gateway, echo: EchoUpstream) -> None:
    token = session_cookie(gw)
    with open_ws(gw, "/ws/echo?id=client-close", [("Cookie", f"gw_session={token}")]) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.close(4002, "client says bye")
    assert echo.wait_closed("client-close") == 4002


REFUSALS = [
    pytest.param("/ws/echo", None, [], 401, "unauthenticated", id="no session gets 401"),
    pytest.param(
        "/ws/echo",
        None,
        [("Cookie", "gw_session=not-a-token")],
        401,
        "unauthenticated",
        id="a forged cookie gets 401",
    ),
    pytest.param(
        "/wsadmin/echo", "alice", [], 403, "forbidden", id="a user without the role gets 403"
    ),
    pytest.param(
        "/ws/echo",
        "alice",
        [("Origin", "https://evil.example")],
        403,
        "cross_site",
        id="a cross-site page using the cookie gets 403",
    ),
    pytest.param(
        "/plain/echo",
        "alice",
        [],
        403,
        "websocket_refused",
        id="a route with websocket false gets 403",
    ),
    pytest.param("/nowhere", "alice", [], 404, "not_found", id="no route gets 404"),
    pytest.param("/wsdead/x", None, [], 502, "bad_gateway", id="an unreachable upstream is 502"),
    pytest.param(
        "/ws/forbidden",
        "alice",
        [],
        403,
        "upstream_refused",
        id="an upstream refusing the upgrade passes its status on",
    ),
]


@pytest.mark.parametrize(("path", "user", "headers", "status", "error"), REFUSALS)
def test_refused_upgrade_is_an_http_answer_before_any_upgrade(
    gw: Gateway,
    echo: EchoUpstream,
    path: str,
    user: str | None,
    headers: list[tuple[str, str]],
    status: int,
    error: str,
) -> None:
    sent = list(headers)
    if user is not None:
        sent.append(("Cookie", f"gw_session={session_cookie(gw, user)}"))
    before = len(echo.handshakes)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(gw, path, sent)
    response = refused.value.response
    assert response.status_code == status
    assert json.loads(response.body)["error"] == error
    assert "Sec-WebSocket-Accept" not in response.headers
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if error != "upstream_refused":
        assert len(echo.handshakes) == before  # the upstream never saw it


def test_an_unreachable_websocket_upstream_is_counted_in_metrics(gw: Gateway) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    config = load_config(gw.config)
    admin = f"http://{config.server.admin_listen}/metrics"

    def connect_errors() -> float:
        text = httpx.get(admin, trust_env=False).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gateway_upstream_errors_total" and sample.labels == {
                    "route": "ws-dead",
                    "kind": "connect",
                }:
                    return sample.value
        return 0.0

    before = connect_errors()
    with pytest.raises(InvalidStatus):
        open_ws(gw, "/wsdead/x")
    assert connect_errors() == before + 1


def test_an_upgrade_with_two_host_headers_is_refused_before_any_upgrade(
    gw: Gateway, echo: EchoUpstream
) -> None:
    from tests.rawhttp import raw_request

    before = len(echo.handshakes)
    request = (
        "GET /ws/echo HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\n"
        "Host: crm.example.com\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Cookie: gw_session={session_cookie(gw)}\r\n\r\n"
    )
    response = raw_request(gw.port, request.encode("latin-1"))
    assert response.status == 400
    assert len(echo.handshakes) == before


@pytest.mark.parametrize(
    "target", ["/ws/echo?q=1#frag", "/ws/echo#frag", "/plain#/../ws/echo"], ids=str
)
def test_an_upgrade_with_a_fragment_is_refused_not_a_500(
    gw: Gateway, echo: EchoUpstream, target: str
) -> None:
    # an HTTP request's `#` is cut off by the parser; an upgrade's was kept: judged against
    # one path, it could not be forwarded (ws:// has no room for it) and gave a 500
    from tests.rawhttp import raw_request

    before = len(echo.handshakes)
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{gw.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Cookie: gw_session={session_cookie(gw)}\r\n\r\n"
    )
    response = raw_request(gw.port, request.encode("latin-1"))
    assert response.status == 400, response
    assert len(echo.handshakes) == before
