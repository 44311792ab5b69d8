"""ASGI middleware: the gateway's login, sessions and route policy inside a Starlette/FastAPI app.

    from gateway.asgi import GatewayMiddleware
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

from gateway.app import build_chain, build_runtime
from gateway.config import Config
from gateway.context import Identity, context_of
from gateway.embedded import AppHeaders, middleware_config
from gateway.errors import send_error
from gateway.headers import drop_cookie
from gateway.routing import Router

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

    def __init__(self, app: ASGIApp, headers: AppHeaders) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope)
        route = ctx.route
        assert route is not None  # ingress answers 404 before this
        identity = ctx.identity
        # cross-site upgrades were refused by the chain (csrf.RefuseCrossSite)
        if scope["type"] == "websocket" and not route.websocket:
            await send_error(
                send, 403, "websocket_refused", "This route does not accept WebSocket upgrades."
            )
            return
        headers = []
        for key, value in scope["headers"]:
            if self.headers.removed(route, key):
                continue
            if key == b"cookie":
                value = drop_cookie(value, self.headers.cookie_names)
                if not value:
                    continue
            elif key == b"authorization" and ctx.used_bearer:
                continue
            headers.append((key, value))
        headers.extend(self.headers.added(ctx, scope.get("method", "GET")))
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
                kept = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if k.lower() != b"set-cookie" or not self.headers.sets_our_cookie(v)
                ]
                message = {**message, "headers": kept}
            await send(message)

        await self.app(scope, receive, send_without_our_cookie)


class GatewayMiddleware:
    """Wrap an ASGI app: `auth.prefix` endpoints, authentication and route policy before it."""

    def __init__(self, app: ASGIApp, config: Config | str | os.PathLike[str]) -> None:
        self.app = app
        self.config = middleware_config(config)
        self.runtime = rt = build_runtime(self.config)
        into = IntoApp(app, AppHeaders(self.config, rt.tokens))
        self.chain = build_chain(rt, Router(self.config.routes), into)

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
        await self.runtime.users.close()
