"""The ASGI side of the decision, shared by the proxy and the ASGI and WSGI middleware.

Ask the core; then answer its refusal, serve our own endpoint, or call the `allowed` app (the
proxy's forwarding, or the wrapped app) with the normalized path. Nothing is decided here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.core.context import SCOPE_KEY
from gateway.core.decide import Core
from gateway.core.responses import send_refusal
from gateway.core.routing import Router, encode_path
from gateway.endpoints import Endpoints
from gateway.runtime import Runtime
from gateway.telemetry import Tracing

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
Send = Callable[[dict], Awaitable[None]]
EXTENSION = "websocket.http.response"


def websocket_denial(scope: dict, send: Send) -> Send:
    """A `send` that turns an HTTP response into a refusal of the websocket handshake."""
    extension = EXTENSION in (scope.get("extensions") or {})

    async def deny(message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if extension:
                await send({**message, "type": "websocket.http.response.start"})
            else:
                # a server without the extension answers a close before accept with 403
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "http.response.body":
            if extension:
                await send({**message, "type": "websocket.http.response.body"})
        else:
            await send(message)

    return deny


def with_cookies(send: Send, cookies: list[str], ours: bytes) -> Send:
    """A `send` that adds these Set-Cookie values to the response (or the websocket accept),
    unless the response sets our cookie itself (a sign-in answering a stale cookie)."""

    async def send_with_cookies(message: dict) -> None:
        if cookies and message["type"] in ("http.response.start", "websocket.accept"):
            headers = message.get("headers", ())
            # a clear after the fresh cookie would sign the browser out again: a sign-in loop
            if not any(k == b"set-cookie" and v.startswith(ours) for k, v in headers):
                extra = [(b"set-cookie", c.encode("latin-1")) for c in cookies]
                message = {**message, "headers": [*headers, *extra]}
        await send(message)

    return send_with_cookies


class Pipeline:
    """Pure ASGI: the core's verdict, then the refusal, an endpoint of ours or `allowed`
    (`upgrades` for an allowed websocket, when the app that takes them is another)."""

    def __init__(
        self, core: Core, endpoints: ASGIApp, allowed: ASGIApp, upgrades: ASGIApp | None = None
    ) -> None:
        self.core = core
        self.endpoints = endpoints
        self.allowed = allowed
        self.upgrades = upgrades or allowed
        self.prefix = core.prefix
        self.ours = core.authn.cookies.name.encode("latin-1") + b"="

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] == "websocket":
            # a websocket upgrade refused anywhere gets that HTTP answer, never a 101
            send = websocket_denial(scope, send)
        decision = await self.core.decide(scope)
        ctx = decision.ctx
        if ctx is not None:
            # the access log, outside this step, finds the context in the scope it passed in
            scope[SCOPE_KEY] = ctx
            # an endpoint may still add one (/verify identifies again for some routes)
            if ctx.set_cookies or ctx.endpoint:
                send = with_cookies(send, ctx.set_cookies, self.ours)
        if decision.refusal is not None:
            head = scope.get("method") == "HEAD"
            await send_refusal(send, decision.refusal, head=head, prefix=self.prefix)
            return
        assert ctx is not None
        # everything after this (Starlette's router included) sees only the normalized path
        inner = {**scope, "path": ctx.path, "raw_path": encode_path(ctx.path), SCOPE_KEY: ctx}
        if ctx.endpoint:
            await self.endpoints(inner, receive, send)
        elif scope["type"] == "websocket":
            await self.upgrades(inner, receive, send)
        else:
            await self.allowed(inner, receive, send)


class TracedPipeline(Pipeline):
    """The pipeline inside a request span, the decision in an `authenticate` span (telemetry)."""

    def __init__(
        self,
        core: Core,
        endpoints: ASGIApp,
        allowed: ASGIApp,
        tracing: Tracing,
        upgrades: ASGIApp | None = None,
    ) -> None:
        traced = tracing.traced(core, "core", {"decide": "authenticate"})
        super().__init__(traced, endpoints, allowed, upgrades)
        self.tracing = tracing

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        await self.tracing.request(scope, receive, send, super().__call__)


def build_pipeline(
    rt: Runtime, router: Router, allowed: ASGIApp, upgrades: ASGIApp | None = None
) -> Pipeline:
    """The core's decision, then our endpoints or `allowed`: the proxy's forwarding, or the app
    the middleware wraps; allowed websocket upgrades go to `upgrades` if given."""
    core = Core(rt, router)
    if rt.tracing is not None:
        return TracedPipeline(core, Endpoints(rt, core), allowed, rt.tracing, upgrades)
    return Pipeline(core, Endpoints(rt, core), allowed, upgrades)
