"""Forwarding: bodies streamed both ways over pooled keep-alive connections, failures -> 502/504."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlsplit

from gateway import metrics
from gateway.config import Config, Route
from gateway.core.context import context_of
from gateway.core.ingress import Header
from gateway.core.nexthop import NextHop, cookie_names, response_headers
from gateway.core.responses import send_error
from gateway.core.routing import encode_path, strip_route_prefix
from gateway.proxy.client.errors import UpstreamError, UpstreamTimeout
from gateway.proxy.client.pool import UpstreamPool
from gateway.telemetry import Tracing

log = logging.getLogger("gateway.proxy")

# what an upstream URL's path keeps as written (its %XX too); the rest is percent-encoded
_BASE_PATH_SAFE = "!$%&'()*+,/:;=@[\\]^|"


def build_clients(config: Config) -> dict[str, UpstreamPool]:
    """One keep-alive connection pool per distinct upstream origin (never a proxy from the env)."""
    clients: dict[str, UpstreamPool] = {}
    server = config.server
    for route in config.routes:
        if route.upstream not in clients:
            clients[route.upstream] = UpstreamPool(
                route.upstream,
                max_header_bytes=server.max_response_header_bytes,
                max_headers=server.max_response_headers,
            )
    return clients


class _RequestBody:
    """The client's request body as an async iterator, read as the upstream consumes it."""

    def __init__(self, receive) -> None:
        self.receive = receive

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return


class ClientGone(Exception):
    """The client went away while its body was being forwarded."""


class Forward:
    """Pure ASGI: send the request to the route's upstream and stream the answer back."""

    def __init__(
        self, config: Config, clients: Mapping[str, UpstreamPool], nexthop: NextHop
    ) -> None:
        self.config = config
        self.clients = clients
        self.nexthop = nexthop
        self.ours = cookie_names(config)
        # the upstream URL's own path, percent-encoded once: the forwarded path goes below it
        self.base_path = {route.name: upstream_base_path(route.upstream) for route in config.routes}

    async def __call__(self, scope, receive, send) -> None:
        ctx = context_of(scope)
        route = ctx.route
        assert route is not None
        method = scope["method"]
        target, headers, body, length = self._request(scope, receive, route, method)
        client = self.clients[route.upstream]
        try:
            response = await client.send(method, target, headers, body, length, route.timeout)
        except ClientGone:
            return
        except UpstreamTimeout as exc:
            log.warning("upstream timeout route=%s request_id=%s", route.name, ctx.request_id)
            metrics.upstream_failure(route.name, exc.kind)
            await send_error(send, 504, "upstream_timeout", "The upstream did not answer in time.")
            return
        except UpstreamError as exc:
            metrics.upstream_failure(route.name, exc.kind)
            log.warning(
                "upstream unreachable route=%s kind=%s request_id=%s",
                route.name,
                exc.__class__.__name__,
                ctx.request_id,
            )
            await send_error(send, 502, "bad_gateway", "The upstream could not be reached.")
            return
        ctx.upstream_status = response.status_code
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response_headers(
                        response.headers, self.ours, bodiless=response.status_code in (204, 304)
                    ),
                }
            )
            ended = False
            async for chunk in response.aiter_raw():
                # the last piece goes out with the end mark: one ASGI message for a small body
                ended = response.at_end
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            if not ended:
                await send({"type": "http.response.body", "body": b""})
        except UpstreamError as exc:
            # the status line is gone already: all we can do is cut the response short
            metrics.upstream_failure(route.name, exc.kind)
            log.warning(
                "upstream failed mid-response route=%s kind=%s request_id=%s",
                route.name,
                exc.__class__.__name__,
                ctx.request_id,
            )
        finally:
            await response.aclose()

    def upstream_target(self, route: Route, path: str, query: bytes) -> bytes:
        """The request target on the route's upstream: its own base path, then ours."""
        forwarded = strip_route_prefix(path, route) if route.strip_prefix else path
        target = self.base_path[route.name] + encode_path(forwarded)
        return target + b"?" + query if query else target

    def _request(
        self, scope, receive, route: Route, method: str
    ) -> tuple[bytes, list[Header], _RequestBody | None, int | None]:
        """Request target, headers, body (None when empty) and Content-Length for the upstream."""
        ctx = context_of(scope)
        target = self.upstream_target(route, ctx.path, scope.get("query_string", b""))
        headers = self.nexthop.upstream_headers(ctx, scope["headers"], method)
        # as ingress judged it: one Content-Length, or chunked, or no body
        length = ctx.framing.length
        content = None
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
            content = _RequestBody(receive) if length else None
        elif ctx.framing.chunked:
            content = _RequestBody(receive)
        return target, headers, content, length


class TracedForward(Forward):
    """Forward inside an `upstream` span, whose trace context the upstream receives."""

    def __init__(
        self,
        config: Config,
        clients: Mapping[str, UpstreamPool],
        nexthop: NextHop,
        tracing: Tracing,
    ) -> None:
        super().__init__(config, clients, nexthop)
        self.tracing = tracing

    async def __call__(self, scope, receive, send) -> None:
        route = context_of(scope).route
        with self.tracing.span("upstream", **{"gateway.route": route.name if route else ""}):
            await super().__call__(scope, receive, send)

    def _request(self, scope, receive, route: Route, method: str):
        target, headers, content, length = super()._request(scope, receive, route, method)
        return target, self.tracing.inject(headers), content, length


def build_forward(
    config: Config, clients: Mapping[str, UpstreamPool], nexthop: NextHop, tracing: Tracing | None
) -> Forward:
    """The proxy's last step: traced when telemetry is on."""
    if tracing is None:
        return Forward(config, clients, nexthop)
    return TracedForward(config, clients, nexthop, tracing)


def upstream_base_path(upstream: str) -> bytes:
    """The path of a route's upstream URL, dot-segments resolved, percent-encoded once."""
    segments: list[str] = []
    for segment in urlsplit(upstream).path.split("/"):
        if segment == "..":
            if len(segments) > 1:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    return quote("/".join(segments), safe=_BASE_PATH_SAFE).rstrip("/").encode("ascii")
