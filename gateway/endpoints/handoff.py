"""GET {prefix}/handoff: a sign-in carried to a host outside the cookie's domain, as Pomerium does.

The portal (public_url) cannot set a cookie for `app.other.test`, so it hands the browser a
one-time code that the gateway on that host trades for a host cookie of the same session:

    portal, signed in, next=https://app.other.test/page
      -> 303 https://app.other.test{prefix}/handoff?next=/page         start: a state cookie
      -> 303 {public_url}{prefix}/login?next=https://app.other.test/page&state=S
      -> 303 https://app.other.test{prefix}/handoff?code=C&next=/page  the portal mints C
      -> 303 https://app.other.test/page                                with the host cookie

The code is a JWT signed with the gateway's own keys (audience `{public_url}{prefix}/handoff`,
header typ `gateway-handoff+jwt`, so it is never read as a session token nor the other way
round). It lives 30 s, names the target host and the session (sid), and the hash of the state
cookie the target host set in that browser: a code handed to another browser (login CSRF with
the attacker's own session) is refused there. Used once: the first redeemer claims the code's
`jti` in the store (`put_record(..., only_new=True)`, atomic in every backend, shared by
workers and replicas); any later claim is a replay. The session is checked in the store at the
trade, so a code from a session signed out since is refused; the cookie it gives carries the
same sid, so a sign-out on any host revokes it everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
from starlette.requests import Request
from starlette.responses import Response

from gateway import audit
from gateway.auth.redirects import (
    Destination,
    Redirects,
    bare_host,
    location_path,
    parse_absolute,
    safe_next,
)
from gateway.auth.roles import TOO_MANY_ROLES, fits_store
from gateway.auth.tokens import (
    _FORBIDDEN_HEADERS,
    Claims,
    TokenError,
    TokenExpired,
    claim_number,
    claim_text,
    claim_texts,
)
from gateway.core.context import RequestContext, context_of
from gateway.endpoints.common import HEADERS, Refused, json_error, wants_json
from gateway.pages import render_message
from gateway.runtime import Runtime
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.login")

HANDOFF_TTL = 30
# a code minted on one replica and redeemed on another: this much clock skew is forgiven on iat
CLOCK_SKEW = 5
# the single-use mark outlives every code it could match
USED_WINDOW = 4 * HANDOFF_TTL
TYP = "gateway-handoff+jwt"
CLAIMS = ("iss", "aud", "sub", "sid", "host", "origin", "state", "jti", "iat", "nbf", "exp")
MAX_CODE = 4096
STATE_TTL = 120
_STATE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode("ascii")).hexdigest()


def _see_other(location: str) -> Response:
    return Response(status_code=303, headers={**HEADERS, "location": location})


class Handoff:
    """Both halves: the portal's code for a signed-in browser, and the trade on the target host."""

    def __init__(self, rt: Runtime, redirects: Redirects | None = None) -> None:
        config = rt.config
        self.rt = rt
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.public_scheme = urlsplit(self.public_url).scheme
        self.redirects = redirects or Redirects(config)
        self.audience = f"{self.public_url}{self.prefix}/handoff"
        secure = config.cookie_secure
        # host-only and __Host- when Secure: a sibling host cannot toss its own state in
        self.state_cookie = ("__Host-" if secure else "") + config.session.cookie + "_handoff"
        self.state_attrs = "Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")

    # -- the portal -------------------------------------------------------------------------

    def after_sign_in(self, next_target: str) -> str:
        """Where the browser goes after any sign-in: a path here, or the host an absolute
        `next` names (by way of the hand-off when the cookie does not reach it)."""
        if next_target.startswith("/"):
            # `/é` would leave as a raw byte, and `/Ā` could not be written at all (a 500 after
            # the session was made)
            return self.public_url + location_path(next_target)
        dest = self.redirects.destination(next_target)
        return self.public_url + "/" if dest is None else self.entry(dest)

    def entry(self, dest: Destination) -> str:
        """Where a signed-in browser bound for `dest` goes: there, or the hand-off on its host."""
        if self.redirects.shares_cookie(dest.host):
            return dest.url
        return f"{dest.origin}{self.prefix}/handoff?next={quote(dest.path, safe='')}"

    def continue_signed_in(self, request: Request, dest: Destination) -> Response:
        """The portal asked to sign in a browser that already is: on to `dest`, with a code
        when its host needs one and has set its state cookie (`state` in the query)."""
        state = request.query_params.get("state", "")
        ctx = context_of(request.scope)
        identity = ctx.identity
        if self.redirects.shares_cookie(dest.host) or not _STATE.match(state) or identity is None:
            return _see_other(self.entry(dest))
        claims = self._cookie_claims(request)
        # the username the source finds the user by at the trade (when it is not the id)
        username = claims.username if claims is not None and claims.sid == identity.sid else ""
        now = int(self.rt.clock())
        payload: dict[str, Any] = {
            "iss": self.public_url,
            "aud": self.audience,
            "sub": identity.sub,
            "sid": identity.sid,
            "amr": list(identity.amr),
            "host": dest.host,
            "origin": dest.origin,
            "state": _digest(state),
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "nbf": now,
            "exp": now + HANDOFF_TTL,
        }
        if username:
            payload["username"] = username
        key = self.rt.keyring.signing_key()
        code = jwt.encode(
            payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": TYP}
        )
        log.info("handoff issued user=%r host=%s client=%s", identity.sub, dest.host, ctx.view.ip)
        return _see_other(
            f"{dest.origin}{self.prefix}/handoff?code={code}&next={quote(dest.path, safe='')}"
        )

    def _cookie_claims(self, request: Request) -> Claims | None:
        """The claims of the cookie that signed this browser in (the username is only there)."""
        token = self.rt.cookies.read(request.scope["headers"])
        if not token:
            return None
        try:
            return self.rt.tokens.verify_session(token)
        except TokenExpired as exc:
            return exc.claims  # the core re-issued it in this very request
        except TokenError:
            return None

    # -- the target host --------------------------------------------------------------------

    async def handoff(self, request: Request) -> Response:
        """GET: without `code`, start (state cookie, on to the portal); with it, the trade."""
        ctx = context_of(request.scope)
        next_target = safe_next(request.query_params.get("next"))
        code = request.query_params.get("code")
        try:
            if code is None:
                return self._start(ctx, next_target)
            return await self._redeem(request, ctx, code, next_target)
        except Refused as exc:
            log.info(
                "handoff refused reason=%s host=%s client=%s", exc.code, ctx.view.host, ctx.view.ip
            )
            audit.event(
                "handoff.refused",
                reason=exc.code,
                host=bare_host(ctx.view.host) if ctx.view.host else "",
                client=ctx.view.ip,
            )
            return self._refusal(request, exc, next_target)
        except StoreUnavailable as exc:
            log.warning("handoff refused: store or users source unavailable: %s", exc)
            return json_error(503, "store_unavailable", "Sign-in is unavailable; try again.")

    def _here(self, ctx: RequestContext, next_target: str) -> Destination | None:
        """This host and `next` as the portal would allow them (https if public_url is)."""
        if not ctx.view.host:
            return None
        scheme = "https" if self.public_scheme == "https" else ctx.view.scheme
        return self.redirects.destination(f"{scheme}://{ctx.view.host}{next_target}")

    def _start(self, ctx: RequestContext, next_target: str) -> Response:
        dest = self._here(ctx, next_target)
        if dest is None:
            raise Refused(400, "handoff_host", "This host is not one the sign-in portal serves.")
        identity = ctx.identity
        if self.redirects.shares_cookie(dest.host) or (
            identity is not None and identity.source == "cookie"
        ):
            return _see_other(dest.url)  # signed in here already: nothing to hand over
        state = secrets.token_urlsafe(32)
        login = f"{self.public_url}{self.prefix}/login?next={quote(dest.url, safe='')}"
        response = _see_other(f"{login}&state={state}")
        response.headers.append(
            "set-cookie", f"{self.state_cookie}={state}; Max-Age={STATE_TTL}; {self.state_attrs}"
        )
        return response

    async def _redeem(
        self, request: Request, ctx: RequestContext, code: str, next_target: str
    ) -> Response:
        rt = self.rt
        claims = self._verify(code)
        now = rt.clock()
        if claims["iat"] > now + CLOCK_SKEW or claims["exp"] - claims["iat"] > HANDOFF_TTL:
            raise Refused(400, "handoff_invalid", "This sign-in link is not valid.")
        if now >= claims["exp"]:
            raise Refused(403, "handoff_expired", "This sign-in link has expired.")
        host = bare_host(ctx.view.host)
        origin = parse_absolute(claims["origin"] + "/")
        if claims["host"] != host or origin is None or origin.host != host:
            raise Refused(403, "handoff_wrong_host", "This sign-in link is for another site.")
        state = request.cookies.get(self.state_cookie, "")
        if not state or not hmac.compare_digest(_digest(state), claims["state"]):
            raise Refused(403, "handoff_state", "This sign-in link was started in another browser.")
        # the first to claim this code wins: atomic in every store, shared by every replica
        used = f"handoff:{claims['jti']}"
        if not await rt.store.put_record(used, "1", now, now + USED_WINDOW, only_new=True):
            raise Refused(403, "handoff_used", "This sign-in link was already used.")
        sub, sid, username = claims["sub"], claims["sid"], claims["username"]
        session = await rt.sessions.check(sid, sub)
        user = await rt.identities.lookup(sub, username, sid) if session is not None else None
        if user is None:
            raise Refused(403, "handoff_session_ended", "That session has ended; sign in again.")
        if not fits_store(user.roles):
            raise Refused(403, "too_many_roles", TOO_MANY_ROLES)
        roles, roles_ref = await rt.roles.pack(sid, user.roles, session.expires)
        token, _ = rt.tokens.mint_session(sub, roles, sid, claims["amr"], username, roles_ref)
        log.info("handoff redeemed user=%r host=%s client=%s", sub, host, ctx.view.ip)
        audit.event("session.handoff", user=sub, session=sid, host=host, client=ctx.view.ip)
        ctx.user_for_log = sub
        response = _see_other(origin.origin + next_target)
        response.headers.append("set-cookie", rt.cookies.set(token, ctx.view.host))
        response.headers.append("set-cookie", self._clear_state())
        return response

    def _verify(self, code: str) -> dict[str, Any]:
        """The code's claims, signature, audience and types checked; times are the caller's."""
        invalid = Refused(400, "handoff_invalid", "This sign-in link is not valid.")
        keyring = self.rt.keyring
        if not code or len(code) > MAX_CODE:
            raise invalid
        try:
            header = jwt.get_unverified_header(code)
        except jwt.PyJWTError:
            raise invalid from None
        kid = header.get("kid")
        if (
            header.get("typ") != TYP
            or header.get("alg") != keyring.algorithm
            or _FORBIDDEN_HEADERS & set(header)
            or not isinstance(kid, str)
        ):
            raise invalid
        key = keyring.lookup(kid)
        if key is None:
            raise invalid
        try:
            payload = jwt.decode(
                code,
                key.public,
                algorithms=[keyring.algorithm],
                audience=self.audience,
                issuer=self.public_url,
                options={
                    "require": list(CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise invalid from None
        # the session token's own rules: printable text, finite times (a NaN exp would never
        # expire: it compares false with every clock)
        try:
            for name in ("sub", "sid", "host", "origin", "state", "jti"):
                claim_text(payload[name])
            iat, exp = claim_number(payload["iat"]), claim_number(payload["exp"])
            amr = claim_texts(payload.get("amr", []))
            username = claim_text(payload.get("username", ""), nonempty=False)
        except TokenError:
            raise invalid from None
        return {**payload, "iat": iat, "exp": exp, "amr": amr, "username": username}

    def _clear_state(self) -> str:
        return f"{self.state_cookie}=; Max-Age=0; {self.state_attrs}"

    def _refusal(self, request: Request, exc: Refused, next_target: str) -> Response:
        """JSON for API clients; for a browser a page with a link that starts over."""
        if wants_json(request):
            response = json_error(exc.status, exc.code, exc.detail)
        else:
            again = f"{self.prefix}/handoff?next={quote(next_target, safe='')}"
            page = render_message(
                prefix=self.prefix,
                title="Sign-in link refused",
                detail=exc.detail,
                link=(again, "Sign in again"),
            )
            response = Response(page, exc.status, media_type="text/html", headers=HEADERS)
        response.headers.append("set-cookie", self._clear_state())
        return response
