"""WebSocket upgrades: refused as plain HTTP before any upgrade, or proxied both ways.

The upgrade gets the same decision as any request (gateway.core), and every HTTP answer before
the accept goes out through the ASGI "websocket.http.response" extension
(gateway.pipeline.websocket_denial), so a refused upgrade is an ordinary 401/403 response
and never a 101. An allowed one reaches `ProxyWebSocket`, which opens the upstream connection
first and accepts the client only once the upstream has accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway import metrics
from gateway.config import Route
from gateway.core.context import RequestContext, context_of
from gateway.core.responses import send_error
from gateway.proxy.forward import Forward

log = logging.getLogger("gateway.websocket")

Send = Callable[[dict], Awaitable[None]]
# the handshake is the websocket client's own business: the client's copies never pass
HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
# uvicorn's default ws_max_size: a frame the client may send, the upstream may send back
MAX_MESSAGE = 16 * 1024 * 1024
# 1005 (no code) and 1006 (abnormal) are never sent on the wire; 1014 is "bad gateway"
NO_STATUS, ABNORMAL, BAD_GATEWAY, GOING_AWAY, NORMAL = 1005, 1006, 1014, 1001, 1000


def sendable_close_code(code: int | None, *, upstream_side: bool) -> int:
    """A close code that may go on the wire, standing in for 1005/1006 and invalid codes."""
    if code is None or code == NO_STATUS:
        return NORMAL
    if code == ABNORMAL:
        # the upstream vanished: tell the client the gateway's peer failed; a client that
        # vanished is "going away" to the upstream
        return BAD_GATEWAY if upstream_side else GOING_AWAY
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return NORMAL


def upstream_uri(upstream: str, target: bytes) -> str:
    """The ws:// or wss:// address for a request target on the route's upstream."""
    parts = urlsplit(upstream)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{target.decode('latin-1')}"


class ProxyWebSocket:
    """Pure ASGI for allowed websocket upgrades (the pipeline's `upgrades`): the route's
    upstream first, then the client."""

    def __init__(self, forward: Forward) -> None:
        # the HTTP step builds the same upstream target and headers for an upgrade
        self.forward = forward

    async def __call__(self, scope, receive, send) -> None:
        ctx = context_of(scope)
        route = ctx.route
        assert route is not None  # the core answered 404 before this
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        upstream = await self._open(scope, ctx, route, send)
        if upstream is None:
            return
        ctx.upstream_status = 101
        try:
            await send(
                {"type": "websocket.accept", "subprotocol": upstream.subprotocol, "headers": []}
            )
            await relay(receive, send, upstream)
        finally:
            await upstream.close()

    async def _open(
        self, scope: dict, ctx: RequestContext, route: Route, send: Send
    ) -> ClientConnection | None:
        """Connect to the upstream with our headers, or refuse the client with 502/504."""
        query = scope.get("query_string", b"")
        if b"#" in query:
            # an HTTP request's fragment is cut off by the parser; an upgrade's is kept, and
            # no ws:// address can carry it
            await send_error(send, 400, "bad_request", "Refused: # in the request target.")
            return None
        client_headers = [(k, v) for k, v in scope["headers"] if k not in HANDSHAKE_HEADERS]
        headers = self.forward.nexthop.upstream_headers(ctx, client_headers, "GET")
        target = self.forward.upstream_target(route, ctx.path, query)
        uri = upstream_uri(route.upstream, target)
        extra: dict = {}
        host = [v for k, v in headers if k == b"host"]
        if host:
            # preserve_host: the Host header comes from the URI, the socket from the upstream
            target = urlsplit(uri)
            extra = {"host": target.hostname, "port": target.port or _default_port(uri)}
            if target.scheme == "wss":
                extra["server_hostname"] = target.hostname
            uri = uri.replace(target.netloc, host[0].decode("latin-1"), 1)
            headers = [(k, v) for k, v in headers if k != b"host"]
        try:
            return await connect(
                uri,
                additional_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                subprotocols=scope.get("subprotocols") or None,
                user_agent_header=None,
                # like the HTTP clients: never a proxy taken from the environment
                proxy=None,
                open_timeout=route.timeout,
                max_size=MAX_MESSAGE,
                **extra,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            log.warning(
                "upstream refused websocket route=%s status=%s request_id=%s",
                route.name,
                status,
                ctx.request_id,
            )
            ctx.upstream_status = status
            code = status if 400 <= status < 600 else 502
            await send_error(
                send, code, "upstream_refused", "The upstream refused the WebSocket upgrade."
            )
        except TimeoutError:
            log.warning(
                "upstream websocket timeout route=%s request_id=%s", route.name, ctx.request_id
            )
            metrics.upstream_failure(route.name, "timeout")
            await send_error(send, 504, "upstream_timeout", "The upstream did not answer in time.")
        except (OSError, InvalidHandshake) as exc:
            metrics.upstream_failure(route.name, "connect" if isinstance(exc, OSError) else "other")
            log.warning(
                "upstream websocket unreachable route=%s kind=%s request_id=%s",
                route.name,
                exc.__class__.__name__,
                ctx.request_id,
            )
            await send_error(send, 502, "bad_gateway", "The upstream could not be reached.")
        return None


def _default_port(uri: str) -> int:
    return 443 if uri.startswith("wss:") else 80


async def relay(receive, send: Send, upstream: ClientConnection) -> None:
    """Copy frames both ways until one side closes, then close the other with its code."""
    # each side ends on its own: a close from the upstream is passed on, and uvicorn then
    # reports the client's disconnect; a client's close is passed on and ends the upstream
    async with asyncio.TaskGroup() as group:
        group.create_task(_client_to_upstream(receive, upstream))
        group.create_task(_upstream_to_client(send, upstream))


async def _client_to_upstream(receive, upstream: ClientConnection) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = sendable_close_code(message.get("code"), upstream_side=False)
            await upstream.close(code, message.get("reason") or "")
            return
        try:
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])
        except ConnectionClosed:
            # the upstream is closing; its code reaches the client by the other direction,
            # and the client's disconnect still comes through receive()
            continue


async def _upstream_to_client(send: Send, upstream: ClientConnection) -> None:
    try:
        async for data in upstream:
            if isinstance(data, bytes):
                await send({"type": "websocket.send", "bytes": data})
            else:
                await send({"type": "websocket.send", "text": data})
    except ConnectionClosed:
        pass  # an error close ends the iteration with an exception: passed on the same way
    except OSError:
        return  # the client is gone (uvicorn's ClientDisconnected); receive() reports it
    try:
        await send(
            {
                "type": "websocket.close",
                "code": sendable_close_code(upstream.close_code, upstream_side=True),
                "reason": upstream.close_reason or "",
            }
        )
    except OSError:
        return
