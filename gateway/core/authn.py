"""The request -> identity step: cookie or bearer JWT, session checks, cookie re-issue.

A token older than `[auth] refresh` (and every re-issue) asks the users source about the
user again: a removed or disabled user is refused and their sessions revoked; changed roles
go into the re-issued token (or, for a bearer token, into this request's identity).
"""

from __future__ import annotations

import dataclasses

from gateway import audit, metrics
from gateway.auth.cookies import CookieJar
from gateway.auth.identities import Identities
from gateway.auth.roles import RolesTooLarge, SessionRoles
from gateway.auth.servicetokens import ServiceTokens, looks_like_token
from gateway.auth.sessions import Sessions
from gateway.auth.tokencache import VerifiedTokens
from gateway.auth.tokens import Claims, TokenError, TokenExpired, Tokens
from gateway.core.context import Identity, RequestContext
from gateway.core.ingress import Header
from gateway.sources.base import SERVICE_PREFIX, User
from gateway.store.base import StoreUnavailable

_STANDING_LIMIT = 10_000
# after the users source failed, requests do not queue on it (a dead host waits out a timeout)
SOURCE_RETRY_SECONDS = 5.0


class Authenticator:
    """Find and verify the caller's token; put the Identity (or why not) in the request context."""

    def __init__(
        self,
        *,
        tokens: Tokens,
        sessions: Sessions,
        cookies: CookieJar,
        strict: bool,
        users: Identities,
        refresh: float,
        services: ServiceTokens,
        roles: SessionRoles,
    ) -> None:
        self.tokens = tokens
        self.services = services
        self.roles = roles
        self.verified = VerifiedTokens(tokens)
        self.sessions = sessions
        self.cookies = cookies
        self.strict = strict
        self.users = users
        self.refresh = refresh
        # the source's answer per session (sid), until the next refresh is due: bearer tokens
        # cannot be re-issued, and a cookie client may keep sending the old token
        self._standing: dict[str, tuple[float, User | None]] = {}
        # per source (the password source "", each provider by name): one down never holds
        # back the users of another
        self._source_down_until: dict[str, float] = {}

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
        if source == "bearer" and looks_like_token(token):
            # a service account's API token: looked up in the store on every request
            ctx.identity = await self.services.identify(token)
            if ctx.identity is None:
                ctx.auth_error = "unknown_service_token"
            return
        expired = False
        try:
            claims = self.verified.verify_session(token)
        except TokenExpired as exc:
            claims, expired = exc.claims, True
        except TokenError as exc:
            ctx.auth_error = exc.reason
            if source == "cookie":
                ctx.set_cookies.append(self.cookies.clear(ctx.view.host or None))
            return
        if claims.sub.startswith(SERVICE_PREFIX):
            # sign-in never mints one: a service identity comes from its API token only
            self._refuse(ctx, "reserved_id", source)
            return
        if claims.roles_ref:
            # a big identity: its roles are in the store (gateway.auth.roles); a store that
            # cannot answer is 503 in both modes, as there are no roles to serve without it
            roles = await self.roles.unpack(claims.sid, claims.roles, claims.roles_ref)
            if roles is None:
                # the record is gone (store flushed): ask the source again rather than refuse
                if source == "bearer":
                    await self._bearer(ctx, claims, expired, roles_known=False)
                else:
                    await self._reissue(ctx, claims, expired, roles_known=False)
                return
            claims = dataclasses.replace(claims, roles=roles)
        if source == "bearer":
            await self._bearer(ctx, claims, expired)
            return
        now = self.sessions.clock()
        if expired or self.sessions.reissue_due(claims.iat, claims.exp):
            await self._reissue(ctx, claims, expired)
            return
        identity = _identity(claims, source)
        if now >= claims.iat + self.refresh:
            standing = self._standing.get(claims.sid)
            if standing is None or standing[0] <= now or standing[1] is None:
                # asked again at most once per refresh per session: a client that keeps
                # sending the old cookie (a script, a burst of parallel requests) is answered
                # from that one answer until the next refresh
                await self._reissue(ctx, claims, expired)
                return
            identity = dataclasses.replace(identity, roles=standing[1].roles)
        if self.strict and not await self.sessions.check_strict(claims.sid, claims.sub):
            self._refuse(ctx, "revoked", source)
            return
        ctx.identity = identity

    async def _bearer(
        self, ctx: RequestContext, claims: Claims, expired: bool, roles_known: bool = True
    ) -> None:
        # a bearer client holds no cookie to refresh: an expired token is simply refused
        if expired:
            ctx.auth_error = "expired"
            return
        if self.strict and not await self.sessions.check_strict(claims.sid, claims.sub):
            ctx.auth_error = "revoked"
            return
        identity = _identity(claims, "bearer")
        if not roles_known or self.sessions.clock() >= claims.iat + self.refresh:
            try:
                user = await self._bearer_standing(claims)
            except StoreUnavailable:
                # a token whose stored roles are gone has none to fall back on
                if self.strict or not roles_known:
                    raise
                metrics.store_error("authn")
                user = User(claims.sub, claims.roles)
            if user is None:
                ctx.auth_error = "revoked"
                return
            identity = dataclasses.replace(identity, roles=user.roles)
        ctx.identity = identity

    async def _bearer_standing(self, claims: Claims) -> User | None:
        """The user behind an old bearer token, asked at most once per refresh per session."""
        now = self.sessions.clock()
        cached = self._standing.get(claims.sid)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self._current_user(claims)
        if user is not None and await self.sessions.check(claims.sid, claims.sub) is None:
            user = None
        self._stand(claims.sid, user, now)
        return user

    def _stand(self, sid: str, user: User | None, now: float) -> None:
        """Remember the source's answer for this session until the next refresh is due."""
        if len(self._standing) >= _STANDING_LIMIT:
            self._standing.clear()
        self._standing[sid] = (now + self.refresh, user)

    async def _current_user(self, claims: Claims) -> User | None:
        """The source's user for this token now; a gone user's sessions end everywhere."""
        now = self.sessions.clock()
        source = self.users.source_of(claims.sub)
        if now < self._source_down_until.get(source, 0.0):
            raise StoreUnavailable("users source unavailable")
        try:
            user = await self.users.lookup(claims.sub, claims.username, claims.sid)
        except StoreUnavailable:
            self._source_down_until[source] = now + SOURCE_RETRY_SECONDS
            raise
        if user is None:
            audit.event(
                "session.ended",
                user=claims.sub,
                session=claims.sid,
                reason="removed or disabled at the source",
            )
            try:
                # removed or disabled: every replica refuses their sessions from now on
                await self.sessions.revoke_user(claims.sub)
            except StoreUnavailable:
                # the refusal stands; other replicas find out at their own refresh
                metrics.store_error("authn")
        return user

    async def _reissue(
        self, ctx: RequestContext, claims: Claims, expired: bool, roles_known: bool = True
    ) -> None:
        try:
            session = await self.sessions.check(claims.sid, claims.sub)
            user = await self._current_user(claims) if session is not None else None
        except StoreUnavailable:
            # the store or the users source is down: lazy mode may serve a still-valid token
            # without re-issuing (not one whose stored roles are gone); anything else fails closed
            if expired or self.strict or not roles_known:
                raise
            metrics.store_error("authn")
            ctx.identity = _identity(claims, "cookie")
            return
        if user is None:
            self._standing.pop(claims.sid, None)
            self._refuse(ctx, "revoked", "cookie")
            return
        self._stand(claims.sid, user, self.sessions.clock())
        await self.sessions.touch(claims.sid)
        assert session is not None  # a user is only looked up for a live session
        try:
            roles, ref = await self.roles.pack(claims.sid, user.roles, session.expires)
        except RolesTooLarge:
            self._refuse(ctx, "too_many_roles", "cookie")
            return
        token, fresh = self.tokens.mint_session(
            claims.sub, roles, claims.sid, claims.amr, claims.username, ref
        )
        ctx.set_cookies.append(self.cookies.set(token, ctx.view.host or None))
        metrics.token_reissued()
        ctx.identity = _identity(dataclasses.replace(fresh, roles=user.roles), "cookie")

    def _refuse(self, ctx: RequestContext, reason: str, source: str) -> None:
        ctx.auth_error = reason
        if source == "cookie":
            ctx.set_cookies.append(self.cookies.clear(ctx.view.host or None))


def _identity(claims: Claims, source: str) -> Identity:
    return Identity(
        claims.sub, claims.roles, claims.sid, claims.exp, source, claims.amr, claims.username
    )
