"""The request -> identity step: cookie or bearer JWT, session checks, cookie re-issue."""

from __future__ import annotations

import logging

from gateway import metrics
from gateway.context import Identity, RequestContext, context_of
from gateway.cookies import CookieJar
from gateway.errors import send_error
from gateway.sessions import Sessions
from gateway.store.base import StoreUnavailable
from gateway.tokencache import VerifiedTokens
from gateway.tokens import Claims, TokenError, TokenExpired, Tokens

log = logging.getLogger("gateway.authn")


class Authenticate:
    """Pure ASGI: find and verify the caller's token, put the Identity in the request context."""

    def __init__(
        self,
        app,
        *,
        tokens: Tokens,
        sessions: Sessions,
        cookies: CookieJar,
        strict: bool,
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.verified = VerifiedTokens(tokens)
        self.sessions = sessions
        self.cookies = cookies
        self.strict = strict

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ctx = context_of(scope)
        try:
            await self.identify(scope, ctx)
        except StoreUnavailable as exc:
            log.warning("session store unavailable request_id=%s: %s", ctx.request_id, exc)
            metrics.store_error("authn")
            await send_error(
                send, 503, "store_unavailable", "The session store is unavailable; try again."
            )
            return
        if not ctx.set_cookies:
            await self.app(scope, receive, send)
            return

        async def send_with_cookies(message) -> None:
            # a websocket upgrade carries a re-issued cookie on its 101 (or on its refusal)
            if message["type"] in ("http.response.start", "websocket.accept"):
                extra = [(b"set-cookie", c.encode("latin-1")) for c in ctx.set_cookies]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    def _token(self, scope, ctx: RequestContext) -> tuple[str | None, str]:
        route = ctx.route
        if ctx.endpoint or (route is not None and route.bearer):
            for key, value in scope["headers"]:
                if key == b"authorization" and value[:7].lower() == b"bearer ":
                    ctx.used_bearer = True
                    return value[7:].strip().decode("latin-1"), "bearer"
        return self.cookies.read(scope["headers"]), "cookie"

    async def identify(self, scope, ctx: RequestContext) -> None:
        """Set ctx.identity (or ctx.auth_error) and any cookie the response must carry."""
        token, source = self._token(scope, ctx)
        if not token:
            return
        expired = False
        try:
            claims = self.verified.verify_session(token)
        except TokenExpired as exc:
            claims, expired = exc.claims, True
        except TokenError as exc:
            ctx.auth_error = exc.reason
            if source == "cookie":
                ctx.set_cookies.append(self.cookies.clear())
            return
        if source == "bearer":
            await self._bearer(ctx, claims, expired)
            return
        if expired or self.sessions.reissue_due(claims.iat, claims.exp):
            await self._reissue(ctx, claims, expired)
            return
        if self.strict and not await self.sessions.check_strict(claims.sid, claims.sub):
            self._refuse(ctx, "revoked", source)
            return
        ctx.identity = _identity(claims, source)

    async def _bearer(self, ctx: RequestContext, claims: Claims, expired: bool) -> None:
        # a bearer client holds no cookie to refresh: an expired token is simply refused
        if expired:
            ctx.auth_error = "expired"
            return
        if self.strict and not await self.sessions.check_strict(claims.sid, claims.sub):
            ctx.auth_error = "revoked"
            return
        ctx.identity = _identity(claims, "bearer")

    async def _reissue(self, ctx: RequestContext, claims: Claims, expired: bool) -> None:
        try:
            session = await self.sessions.check(claims.sid, claims.sub)
        except StoreUnavailable:
            # lazy mode may serve a still-valid token without re-issuing; anything else fails closed
            if expired or self.strict:
                raise
            metrics.store_error("authn")
            ctx.identity = _identity(claims, "cookie")
            return
        if session is None:
            self._refuse(ctx, "revoked", "cookie")
            return
        await self.sessions.touch(claims.sid)
        token, fresh = self.tokens.mint_session(claims.sub, claims.roles, claims.sid)
        ctx.set_cookies.append(self.cookies.set(token))
        metrics.token_reissued()
        ctx.identity = _identity(fresh, "cookie")

    def _refuse(self, ctx: RequestContext, reason: str, source: str) -> None:
        ctx.auth_error = reason
        if source == "cookie":
            ctx.set_cookies.append(self.cookies.clear())


def _identity(claims: Claims, source: str) -> Identity:
    return Identity(claims.sub, claims.roles, claims.sid, claims.exp, source)
