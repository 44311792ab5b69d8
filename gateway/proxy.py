"""Forwarding with httpx: bodies streamed both ways, upstream failures -> 502/504."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import httpx

from gateway.config import Config, Route
from gateway.context import context_of
from gateway.errors import send_error
from gateway.headers import UpstreamHeaders, cookie_names, response_headers
from gateway.routing import encode_path, strip_route_prefix
from gateway.tokens import Tokens

log = logging.getLogger("gateway.proxy")


def build_clients(config: Config) -> dict[str, httpx.AsyncClient]:
    """One keep-alive AsyncClient per distinct upstream, never reading proxies from the env."""
    clients: dict[str, httpx.AsyncClient] = {}
    for route in config.routes:
        if route.upstream not in clients:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,
            )
            # httpx adds User-Agent, Accept and Accept-Encoding by default: the upstream
            # must see the client's own headers, not ours
            client.headers.clear()
            clients[route.upstream] = client
    return clients


class _RequestBody:
    """The client's request body as an async iterator, read as the upstream consumes it."""

    def __init__(self, receive) -> None:
        self.receive = receive
        self.disconnected = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
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
        self, config: Config, clients: Mapping[str, httpx.AsyncClient], tokens: Tokens
    ) -> None:
        self.config = config
        self.clients = clients
        self.tokens = tokens
        self.ours = cookie_names(config)
        self.headers = {route.name: UpstreamHeaders(config, route) for route in config.routes}
        self.base = {route.name: httpx.URL(route.upstream) for route in config.routes}

    async def __call__(self, scope, receive, send) -> None:
        ctx = context_of(scope)
        route = ctx.route
        assert route is not None
        method = scope["method"]
        request = self._request(scope, receive, route, method)
        client = self.clients[route.upstream]
        try:
            response = await client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.TimeoutException:
            log.warning("upstream timeout route=%s request_id=%s", route.name, ctx.request_id)
            await send_error(send, 504, "upstream_timeout", "The upstream did not answer in time.")
            return
        except httpx.HTTPError as exc:
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
                    "headers": response_headers(response.headers.raw, self.ours),
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as exc:
            # the status line is gone already: all we can do is cut the response short
            log.warning(
                "upstream failed mid-response route=%s kind=%s request_id=%s",
                route.name,
                exc.__class__.__name__,
                ctx.request_id,
            )
        finally:
            await response.aclose()

    def _request(self, scope, receive, route: Route, method: str) -> httpx.Request:
        ctx = context_of(scope)
        path = strip_route_prefix(ctx.path, route) if route.strip_prefix else ctx.path
        base = self.base[route.name]
        base_path = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
        raw_path = base_path + encode_path(path)
        query = scope.get("query_string", b"")
        if query:
            raw_path += b"?" + query
        url = base.copy_with(raw_path=raw_path)
        identity = ctx.identity
        assertion = None
        if identity is not None and route.identity.assertion_header:
            assertion = self.tokens.mint_assertion(
                identity.sub, identity.roles, route.name, method, ctx.path
            )
        headers = self.headers[route.name].build(
            scope["headers"],
            ctx.view,
            ctx.request_id,
            strip_authorization=ctx.used_bearer,
            identity=(identity.sub, identity.roles) if identity is not None else None,
            assertion=assertion,
        )
        length = _content_length(scope["headers"])
        content = None
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
            content = _RequestBody(receive) if length else None
        elif _chunked(scope["headers"]):
            content = _RequestBody(receive)
        return httpx.Request(
            method,
            url,
            headers=headers,
            content=content,
            extensions={"timeout": httpx.Timeout(route.timeout).as_dict()},
        )


def _content_length(headers) -> int | None:
    for key, value in headers:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _chunked(headers) -> bool:
    return any(key == b"transfer-encoding" for key, _ in headers)
