"""ASGI middleware: the gateway's login, sessions and route policy inside a Starlette/FastAPI app.

    from gateway.middleware.asgi import GatewayMiddleware
    app = GatewayMiddleware(app, "gateway.toml")       # or a Config

Every request runs through the proxy's own chain (ingress -> authenticate -> endpoints under
`auth.prefix` | cross-site check -> route policy); only an allowed one reaches the app, with

- `scope["gateway"]`: the RequestContext; `.identity` is the Identity (sub, roles, sid, exp,
  source) or None for an anonymous caller on a public or optional route;
- `scope["user"]` and `scope["auth"]` as Starlette's AuthenticationMiddleware sets them:
  `request.user.is_authenticated`, `.display_name` (the user id), `.roles`, and
  `request.auth.scopes` = ["authenticated", *roles], so `@requires("admin")` works;
- the identity headers (`X-User-Id`, `X-User-Roles`, `X-Gateway-Assertion`, as configured),
  after every client-sent copy of them is removed in any case or spelling, with the legacy
  identity headers the proxy strips too (`Remote-User`, `X-Forwarded-User`, ...);
- the normalized path in `path`/`raw_path` (the path matched is the path the app routes on),
  and the `Cookie` header without the session cookie (and `Authorization` without our token).

Lifespan events pass through to the app; on shutdown the store and user backend close.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser

from gateway.config import Config
from gateway.core.context import Identity, context_of
from gateway.core.nexthop import NextHop
from gateway.core.routing import Router
from gateway.middleware import middleware_config
from gateway.pipeline import build_pipeline
from gateway.runtime import build_runtime

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GatewayUser(BaseUser):
    """The signed-in caller as Starlette's `request.user`."""

    def __init__(self, identity: Identity) -> None:
        self.sub = identity.sub
        self.roles = identity.roles

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.sub

    @property
    def identity(self) -> str:
        return self.sub


class IntoApp:
    """Pure ASGI, the last step: an allowed request enters the wrapped app, identity added."""

    def __init__(self, app: ASGIApp, nexthop: NextHop) -> None:
        self.app = app
        self.nexthop = nexthop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        identity = ctx.identity
        headers = self.nexthop.app_headers(ctx, scope["headers"], scope.get("method", "GET"))
        if identity is None:
            user: BaseUser = UnauthenticatedUser()
            auth = AuthCredentials()
        else:
            user = GatewayUser(identity)
            auth = AuthCredentials(["authenticated", *identity.roles])
        scope = {**scope, "headers": headers, "user": user, "auth": auth}

        async def send_without_our_cookie(message: MutableMapping[str, Any]) -> None:
            # the app must not set or clear the gateway's session: logout is {prefix}/logout
            if message["type"] in ("http.response.start", "websocket.accept"):
                kept = self.nexthop.guard_response(message.get("headers", ()))
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, send_without_our_cookie)


class GatewayMiddleware:
    """Wrap an ASGI app: `auth.prefix` endpoints, authentication and route policy before it."""

    def __init__(self, app: ASGIApp, config: Config | str | os.PathLike[str]) -> None:
        self.app = app
        self.config = middleware_config(config)
        self.runtime = rt = build_runtime(self.config)
        self.chain = build_pipeline(rt, Router(self.config.routes), IntoApp(app, rt.nexthop))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.chain(scope, receive, send)
            return

        async def send_after_closing(message: MutableMapping[str, Any]) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        await self.app(scope, receive, send_after_closing)

    async def aclose(self) -> None:
        """Close the session store and the user backend."""
        await self.runtime.store.close()
        await self.runtime.identities.close()
