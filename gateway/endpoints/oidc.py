"""{prefix}/oidc/{name}/start, /callback and /backchannel: sign-in at an OpenID provider.

    browser -> /oidc/corp/start?next=/page        flow cookie; 302 to the provider
            -> the provider's own sign-in pages
            -> /oidc/corp/callback?code=...&state=...
               the flow used once, state checked, code exchanged (PKCE), ID token verified
               (nonce), the rules applied; a session as a password sign-in makes; 303 to next

The flow (state, nonce, PKCE verifier, next) lives in the store for FLOW_TTL under the hash of
a random value held by the browser in a cookie (`{cookie}_oidc`, HttpOnly, SameSite=Lax: the
provider's redirect back is a top-level navigation); it is deleted at the callback, so a state
or code is used once. A lost, expired or mismatched flow starts sign-in again once (a second
cookie notes the retry for RETRY_TTL, and the new flow's state starts with RETRY_MARK, which
comes back from the provider even to a browser that keeps no cookie): never a redirect loop,
the second time a page says why.

Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the provider POSTs a logout
token; verified (gateway.auth.oidc), its `jti` used once, it revokes the sessions it names in
the shared store, so every replica refuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import audit, metrics
from gateway.auth.begin import begin_session, second_factor_due
from gateway.auth.oidc import MAX_AGE, Provider, ProviderUnavailable, TokenRefused, same_secret
from gateway.auth.oidc_users import NotAllowed, user_from_claims
from gateway.auth.redirects import Redirects
from gateway.core.context import context_of
from gateway.endpoints.common import HEADERS, Refused, read_body
from gateway.endpoints.handoff import Handoff
from gateway.endpoints.mfa import MfaStep
from gateway.mfa.pending import Pending
from gateway.pages import render_message
from gateway.runtime import Runtime
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.login")

FLOW_TTL = 600  # seconds a sign-in at the provider may take
RETRY_TTL = 60  # a failed callback starts again at most once within this
RETRY_MARK = "r."  # the state of a flow started again (token_urlsafe never holds a ".")
AMR = ("oidc",)


def _flow_key(value: str) -> str:
    return "oidc-flow:" + hashlib.sha256(value.encode("ascii")).hexdigest()


class OidcSignIn:
    """The start, the callback and the back-channel logout of every configured provider."""

    def __init__(self, rt: Runtime, mfa: MfaStep) -> None:
        self.mfa = mfa
        self.rt = rt
        config = rt.config
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.flow_cookie = config.cookie_name + "_oidc"
        self.retry_cookie = config.cookie_name + "_oidc_retry"
        self.cookie_attrs = "Path=/; HttpOnly; SameSite=Lax" + (
            "; Secure" if config.cookie_secure else ""
        )
        self.redirects = Redirects(config)
        self.handoff = Handoff(rt, self.redirects)

    def _provider(self, request: Request) -> Provider:
        provider = self.rt.oidc.providers.get(request.path_params["name"])
        if provider is None:
            raise Refused(404, "not_found", "There is no such sign-in service here.")
        return provider

    def _page(self, status: int, title: str, detail: str, again: str | None) -> Response:
        link = (again, "Try again") if again else (f"{self.prefix}/login", "Back to sign-in")
        page = render_message(prefix=self.prefix, title=title, detail=detail, link=link)
        return Response(page, status, media_type="text/html", headers=HEADERS)

    def _title(self, provider: Provider) -> str:
        return provider.config.title or provider.name

    # -- start ----------------------------------------------------------------------------

    async def start(self, request: Request) -> Response:
        """GET: a new flow; 302 to the provider's authorization endpoint."""
        try:
            provider = self._provider(request)
        except Refused as exc:
            return self._page(exc.status, "Not found", exc.detail, None)
        next_target = self.redirects.resolve(request.query_params.get("next"))
        return await self._start(provider, next_target)

    async def _start(
        self, provider: Provider, next_target: str, *extra: str, retry: bool = False
    ) -> Response:
        rt = self.rt
        browser = secrets.token_urlsafe(32)
        flow = {
            "provider": provider.name,
            "state": (RETRY_MARK if retry else "") + secrets.token_urlsafe(24),
            "nonce": secrets.token_urlsafe(24),
            "verifier": secrets.token_urlsafe(48),
            "next": next_target,
        }
        again = f"{self.prefix}/oidc/{provider.name}/start?next={quote(next_target, safe='')}"
        try:
            url = await provider.authorization_url(flow["state"], flow["nonce"], flow["verifier"])
            now = rt.clock()
            await rt.store.put_record(_flow_key(browser), json.dumps(flow), now, now + FLOW_TTL)
        except ProviderUnavailable as exc:
            log.warning("oidc %s: %s", provider.name, exc)
            return self._page(
                502,
                "Sign-in service unavailable",
                f"{self._title(provider)} cannot be reached just now. Try again in a moment.",
                again,
            )
        except StoreUnavailable as exc:
            log.warning("oidc %s: store unavailable: %s", provider.name, exc)
            return self._page(503, "Service unavailable", "Sign-in is unavailable.", again)
        response = Response(status_code=302, headers={**HEADERS, "location": url})
        response.headers.append(
            "set-cookie",
            f"{self.flow_cookie}={browser}; Max-Age={FLOW_TTL}; {self.cookie_attrs}",
        )
        for cookie in extra:
            response.headers.append("set-cookie", cookie)
        return response

    # -- callback -------------------------------------------------------------------------

    async def callback(self, request: Request) -> Response:
        """GET: the provider sends the browser back with a code (or an error)."""
        try:
            provider = self._provider(request)
        except Refused as exc:
            return self._page(exc.status, "Not found", exc.detail, None)
        ctx = context_of(request.scope)
        params = request.query_params
        flow = await self._take_flow(request, provider)
        next_target = flow["next"] if flow else "/"
        again = f"{self.prefix}/oidc/{provider.name}/start?next={quote(next_target, safe='')}"
        state = params.get("state", "")
        # any characters may come in the query: compared as bytes, "é" is a mismatch, not a 500
        if flow is None or not state or not same_secret(state, flow["state"]):
            return await self._restart(request, provider, next_target, "oidc_state")
        if "error" in params:
            error = params.get("error", "")[:64]
            log.info("oidc %s: the provider answered error=%r", provider.name, error)
            self._failed(ctx, provider, f"provider:{error}")
            if error in ("access_denied", "consent_required", "login_required"):
                detail = f"Sign-in at {self._title(provider)} was cancelled or refused."
                return self._cleared(self._page(403, "Sign-in cancelled", detail, again))
            detail = f"{self._title(provider)} could not sign you in ({error or 'error'})."
            return self._cleared(self._page(502, "Sign-in failed", detail, again))
        code = params.get("code", "")
        if not code or len(code) > 4096:
            return self._cleared(
                self._page(400, "Sign-in failed", "The sign-in service sent no code.", again)
            )
        try:
            grant = await provider.exchange(code, flow["verifier"], flow["nonce"])
            user = user_from_claims(provider.config, grant.claims)
        except ProviderUnavailable as exc:
            log.warning("oidc %s: %s", provider.name, exc)
            self._failed(ctx, provider, "unavailable")
            detail = f"{self._title(provider)} cannot be reached just now. Try again in a moment."
            return self._cleared(self._page(502, "Sign-in service unavailable", detail, again))
        except TokenRefused as exc:
            log.warning("oidc %s: sign-in refused: %s", provider.name, exc.reason)
            self._failed(ctx, provider, f"token:{exc.reason}")
            detail = "The answer of the sign-in service could not be trusted; nobody was signed in."
            return self._cleared(self._page(403, "Sign-in failed", detail, again))
        except NotAllowed as exc:
            log.info("oidc %s: not allowed: %s", provider.name, exc.code)
            self._failed(ctx, provider, exc.code)
            return self._cleared(self._page(403, "Access denied", exc.detail, None))
        try:
            return await self._signed_in(request, provider, user, grant, next_target)
        except StoreUnavailable as exc:
            log.warning("oidc %s: store unavailable: %s", provider.name, exc)
            metrics.login("error")
            return self._cleared(
                self._page(503, "Service unavailable", "Sign-in is unavailable.", again)
            )

    async def _take_flow(self, request: Request, provider: Provider) -> dict | None:
        """The flow this browser started, deleted as it is read: a callback is used once."""
        browser = request.cookies.get(self.flow_cookie, "")
        if not browser or len(browser) > 100 or not browser.isascii():
            return None  # none of ours (a handle is token_urlsafe): no flow, and no 500
        key = _flow_key(browser)
        try:
            value = await self.rt.store.get_record(key, self.rt.clock())
            if value is None or not await self.rt.store.delete_record(key):
                return None  # unknown, expired, or taken by a request just before this one
        except StoreUnavailable:
            return None
        try:
            flow = json.loads(value)
        except ValueError:
            return None
        return flow if flow.get("provider") == provider.name else None

    async def _restart(
        self, request: Request, provider: Provider, next_target: str, reason: str
    ) -> Response:
        """A lost or mismatched flow: sign in again, once; the second time, a page."""
        ctx = context_of(request.scope)
        self._failed(ctx, provider, reason)
        retried = request.query_params.get("state", "").startswith(RETRY_MARK)
        if retried or request.cookies.get(self.retry_cookie):
            detail = (
                "The sign-in could not be completed: it expired or was started in another "
                "window. Start it again from this page."
            )
            again = f"{self.prefix}/oidc/{provider.name}/start?next={quote(next_target, safe='')}"
            return self._cleared(self._page(400, "Sign-in expired", detail, again))
        log.info("oidc %s: %s; starting sign-in again once", provider.name, reason)
        note = f"{self.retry_cookie}=1; Max-Age={RETRY_TTL}; {self.cookie_attrs}"
        return await self._start(provider, next_target, note, retry=True)

    def _cleared(self, response: Response) -> Response:
        for name in (self.flow_cookie, self.retry_cookie):
            response.headers.append("set-cookie", f"{name}=; Max-Age=0; {self.cookie_attrs}")
        return response

    def _failed(self, ctx, provider: Provider, reason: str) -> None:
        audit.event(
            "signin.failed",
            source=f"oidc:{provider.name}",
            reason=reason,
            client=ctx.view.ip,
        )
        metrics.login("failed")

    async def _signed_in(self, request, provider, user, grant, next_target: str) -> Response:
        rt = self.rt
        ctx = context_of(request.scope)
        due = await second_factor_due(rt, user.id)
        if due is not None:
            # the provider's sign-in is the first factor; ours is the second
            pending = Pending(
                user_id=user.id,
                roles=user.roles,
                amr=AMR,
                source=f"oidc:{provider.name}",
                next_target=next_target,
                limit_name=user.id,
                started=rt.clock(),
                grant=rt.oidc.stored_grant(provider, user, grant).to_json(),
            )
            return self._cleared(await self.mfa.challenge(request, pending, due, False))
        begun = await begin_session(
            rt,
            ctx.identity,
            user_id=user.id,
            roles=user.roles,
            amr=AMR,
            source=f"oidc:{provider.name}",
            client=ctx.view.ip,
            device=request.headers.get("user-agent", ""),
        )
        await rt.oidc.remember(begun.session.sid, provider, user, grant, begun.session.expires)
        token = begun.token
        log.info("login ok user=%r source=oidc:%s client=%s", user.id, provider.name, ctx.view.ip)
        ctx.user_for_log = user.id
        location = self.handoff.after_sign_in(next_target)
        response = Response(status_code=303, headers={**HEADERS, "location": location})
        response.headers.append("set-cookie", rt.cookies.set(token))
        return self._cleared(response)

    # -- back-channel logout --------------------------------------------------------------

    async def backchannel(self, request: Request) -> Response:
        """POST logout_token=...: end the sessions it names; 200, or 400 with the reason."""
        headers = {**HEADERS, "cache-control": "no-store"}

        def refuse(why: str) -> Response:
            return JSONResponse(
                {"error": "invalid_request", "error_description": why}, 400, headers=headers
            )

        try:
            provider = self._provider(request)
            body = await read_body(request)
        except Refused as exc:
            return JSONResponse({"error": exc.code}, exc.status, headers=headers)
        try:
            fields = dict(parse_qsl(body.decode("utf-8"), max_num_fields=10))
        except (ValueError, UnicodeDecodeError):
            return refuse("the body is not a form")
        token = fields.get("logout_token", "")
        rt = self.rt
        try:
            claims = await provider.verify_logout_token(token)
        except TokenRefused as exc:
            log.warning("oidc %s: logout token refused: %s", provider.name, exc.reason)
            return refuse(f"logout token refused: {exc.reason}")
        except ProviderUnavailable as exc:
            log.warning("oidc %s: %s", provider.name, exc)
            return refuse("the provider's keys could not be fetched")
        now = rt.clock()
        jti = hashlib.sha256(claims["jti"].encode("utf-8")).hexdigest()
        try:
            fresh = await rt.store.put_record(
                f"oidc-jti:{provider.name}:{jti}", "1", now, now + 2 * MAX_AGE, only_new=True
            )
            if not fresh:
                return refuse("logout token already used")
            sids = await rt.oidc.sessions_of(provider, claims)
            ended = 0
            for sid in sids:
                if await rt.sessions.revoke(sid):
                    ended += 1
                await rt.oidc.forget(sid)
        except StoreUnavailable as exc:
            log.warning("oidc %s: store unavailable at back-channel logout: %s", provider.name, exc)
            return JSONResponse({"error": "temporarily_unavailable"}, 503, headers=headers)
        log.info("oidc %s: back-channel logout ended %d session(s)", provider.name, ended)
        audit.event(
            "session.revoked",
            count=ended,
            reason="backchannel_logout",
            by=f"oidc:{provider.name}",
        )
        return Response(status_code=200, headers=headers)
