"""The request -> identity step: cookie or bearer JWT, session checks, cookie re-issue."""

from __future__ import annotations

from gateway import metrics
from gateway.auth.cookies import CookieJar
from gateway.auth.sessions import Sessions
from gateway.auth.tokencache import VerifiedTokens
from gateway.auth.tokens import Claims, TokenError, TokenExpired, Tokens
from gateway.core.context import Identity, RequestContext
from gateway.core.ingress import Header
from gateway.store.base import StoreUnavailable


class Authenticator:
    """Find and verify the caller's token; put the Identity (or why not) in the request context."""

    def __init__(
        self,
        *,
        tokens: Tokens,
        sessions: Sessions,
        cookies: CookieJar,
        strict: bool,
    ) -> None:
        self.tokens = tokens
        self.verified = VerifiedTokens(tokens)
        self.sessions = sessions
        self.cookies = cookies
        self.strict = strict

    def _token(self, headers: list[Header], ctx: RequestContext) -> tuple[str | None, str]:
        route = ctx.route
        if ctx.endpoint or (route is not None and route.bearer):
            for key, value in headers:
                if key == b"authorization" and value[:7].lower() == b"bearer ":
                    ctx.used_bearer = True
                    return value[7:].strip().decode("latin-1"), "bearer"
        return self.cookies.read(headers), "cookie"

    async def identify(self, headers: list[Header], ctx: RequestContext) -> None:
        """Set ctx.identity (or ctx.auth_error) and any cookie the response must carry.

        Raises StoreUnavailable when the session must be asked and the store cannot answer.
        """
        token, source = self._token(headers, ctx)
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
        token, fresh = self.tokens.mint_session(claims.sub, claims.roles, claims.sid, claims.amr)
        ctx.set_cookies.append(self.cookies.set(token))
        metrics.token_reissued()
        ctx.identity = _identity(fresh, "cookie")

    def _refuse(self, ctx: RequestContext, reason: str, source: str) -> None:
        ctx.auth_error = reason
        if source == "cookie":
            ctx.set_cookies.append(self.cookies.clear())


def _identity(claims: Claims, source: str) -> Identity:
    return Identity(claims.sub, claims.roles, claims.sid, claims.exp, source, claims.amr)
