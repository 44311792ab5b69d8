"""GET and POST {prefix}/login: the sign-in form with its CSRF cookie, and signing in."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import audit, metrics
from gateway.auth.begin import begin_session, second_factor_due
from gateway.auth.redirects import Redirects
from gateway.auth.roles import TOO_MANY_ROLES, fits_store
from gateway.auth.signin import InvalidCredentials, LockedOut, SourceUnavailable
from gateway.core.context import context_of
from gateway.core.decide import Core
from gateway.core.responses import PAGE_CSP, PAGE_CSP_SCRIPT
from gateway.endpoints.common import (
    HEADERS,
    Refused,
    check_csrf,
    form_fields,
    json_error,
    json_object,
    read_body,
    same_origin,
    wants_json,
)
from gateway.endpoints.handoff import Handoff
from gateway.endpoints.mfa import MfaStep
from gateway.mfa.pending import Pending
from gateway.pages import render_login
from gateway.runtime import Runtime
from gateway.sources.base import MAX_PASSWORD_BYTES, encodable
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.login")


class Login:
    """The sign-in form and its submission; which source checks the password is the runtime's."""

    def __init__(self, rt: Runtime, core: Core, mfa: MfaStep) -> None:
        self.rt = rt
        self.mfa = mfa
        config = rt.config
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.allowed = core.allowed_origins
        self.site = urlsplit(self.public_url).netloc
        self.csrf_cookie = config.cookie_name + "_csrf"
        self.csrf_attrs = "Path=/; HttpOnly; SameSite=Strict" + (
            "; Secure" if config.cookie_secure else ""
        )
        # `next`: a relative path here, or an absolute URL on a route host or the cookie domain
        self.redirects = Redirects(config)
        self.handoff = Handoff(rt, self.redirects)
        # `users = "none"`: no password form, no password ever checked (providers only)
        self.password_form = config.auth.users != "none"
        # "Sign in with a passkey": for users of the password source, so not with providers only
        self.passkeys = config.webauthn_on and self.password_form

    def form(self, status: int, next_target: str, username: str = "", error: str = "") -> Response:
        """The sign-in page (with `error` said on it) and its CSRF cookie."""
        token = secrets.token_urlsafe(32)
        dest = None if next_target.startswith("/") else self.redirects.destination(next_target)
        page = render_login(
            prefix=self.prefix,
            # "to continue to wiki.corp.test": the site the browser came from, not the portal
            site=self.site if dest is None else dest.origin.split("://", 1)[1],
            csrf=token,
            next_target=next_target,
            username=username,
            error=error,
            password_form=self.password_form,
            providers=[
                (
                    f"{self.prefix}/oidc/{p.name}/start?next={quote(next_target, safe='')}",
                    p.config.title or f"Sign in with {p.name}",
                )
                for p in self.rt.oidc.providers.values()
            ],
            passkey=self.passkeys,
        )
        response = Response(page, status, media_type="text/html", headers=HEADERS)
        # the passkey button runs the gateway's script; without it the page runs none
        csp = (PAGE_CSP_SCRIPT if self.passkeys else PAGE_CSP).decode()
        if dest is not None:
            # CSP form-action binds every redirect after the submit: let it reach `next`'s origin
            csp = csp.replace("form-action 'self'", f"form-action 'self' {dest.origin}")
        response.headers["content-security-policy"] = csp
        response.headers.append(
            "set-cookie", f"{self.csrf_cookie}={token}; Max-Age=3600; {self.csrf_attrs}"
        )
        return response

    async def page(self, request: Request) -> Response:
        """GET: the sign-in form with a fresh CSRF token and the (sanitized) next target.

        A browser signed in already, sent here by another host (an absolute `next`), goes on
        there at once: through the hand-off when that host is outside the cookie's domain.
        """
        next_target = self.redirects.resolve(request.query_params.get("next"))
        identity = context_of(request.scope).identity
        dest = None if next_target.startswith("/") else self.redirects.destination(next_target)
        if dest is not None and identity is not None and identity.source == "cookie":
            return self.handoff.continue_signed_in(request, dest)
        return self.form(200, next_target)

    async def _credentials(self, request: Request, as_json: bool) -> tuple[str, str, str]:
        body = await read_body(request)
        if as_json:
            data = json_object(body, 'Send {"username", "password"}.')
            username, password = data.get("username"), data.get("password")
            next_target = data.get("next", "/")
        else:
            fields = form_fields(body)
            # login CSRF: a forged sign-in would put the victim in the attacker's account
            expired = "The sign-in form expired; please try again."
            check_csrf(request, self.csrf_cookie, fields, expired)
            username, password = fields.get("username"), fields.get("password")
            next_target = fields.get("next", "/")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise Refused(400, "bad_request", "Username and password are required.")
        if not encodable(username) or not encodable(password):
            # JSON may carry lone surrogates ("\ud800"), which no store or hash can take
            raise Refused(400, "bad_request", "Username and password must be valid Unicode.")
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES or len(username) > 256:
            raise Refused(400, "bad_request", "Username or password is too long.")
        next_value = next_target if isinstance(next_target, str) else None
        return username, password, self.redirects.resolve(next_value)

    async def submit(self, request: Request) -> Response:
        """POST: check credentials (form or JSON), start a session, set the cookie."""
        as_json = wants_json(request)
        next_target = "/"
        username = ""
        try:
            if not self.password_form:
                raise Refused(404, "password_sign_in_off", "Sign in with a provider instead.")
            if not same_origin(request, self.allowed):
                raise Refused(403, "cross_origin", "Cross-site sign-in is not allowed.")
            username, password, next_target = await self._credentials(request, as_json)
            return await self._sign_in(request, username, password, next_target, as_json)
        except Refused as exc:
            if as_json:
                return json_error(exc.status, exc.code, exc.detail, exc.headers)
            response = self.form(exc.status, next_target, username, exc.detail)
            response.headers.update(exc.headers)
            return response
        except (StoreUnavailable, SourceUnavailable) as exc:
            log.warning("login refused: session store unavailable: %s", exc)
            audit.event(
                "signin.failed",
                user=getattr(exc, "user", None),
                typed=username or None,
                source=self.rt.signin.source_name,
                reason="unavailable",
                client=context_of(request.scope).view.ip,
            )
            metrics.store_error("login")
            metrics.login("error")
            return json_error(503, "store_unavailable", "Sign-in is unavailable; try again.")

    async def _sign_in(
        self, request: Request, username: str, password: str, next_target: str, as_json: bool
    ) -> Response:
        rt = self.rt
        ctx = context_of(request.scope)
        address = ctx.view.ip
        try:
            signed_in = await rt.signin.sign_in(username, password, address)
        except LockedOut as exc:
            log.info("login locked out user=%r client=%s", exc.user, address)
            audit.event(
                "signin.locked",
                user=exc.user,
                typed=username,
                source=rt.signin.source_name,
                retry_after=exc.retry_after,
                client=address,
            )
            metrics.login("locked")
            raise Refused(
                429,
                "too_many_attempts",
                "Too many failed sign-ins; try again later.",
                {"retry-after": str(exc.retry_after)},
            ) from None
        except InvalidCredentials as exc:
            log.info("login failed user=%r client=%s", exc.user, address)
            audit.event(
                "signin.failed",
                user=exc.user,
                typed=username,
                source=rt.signin.source_name,
                reason="invalid_credentials",
                client=address,
            )
            metrics.login("failed")
            raise Refused(401, "invalid_credentials", "Wrong username or password.") from None
        user_id = signed_in.user_id
        if not fits_store(signed_in.roles):
            raise Refused(403, "too_many_roles", TOO_MANY_ROLES)
        due = await second_factor_due(rt, user_id)
        if due is not None:
            # a second factor first: a pending sign-in, which opens nothing, not a session
            pending = Pending(
                user_id=user_id,
                roles=signed_in.roles,
                amr=signed_in.amr,
                source=rt.signin.source_name,
                next_target=next_target,
                username=signed_in.username,
                typed=username,
                limit_name=signed_in.limit_name,
                limit_account=signed_in.limit_account,
                started=rt.clock(),
            )
            response = await self.mfa.challenge(request, pending, due, as_json)
            response.headers.append(
                "set-cookie", f"{self.csrf_cookie}=; Max-Age=0; {self.csrf_attrs}"
            )
            return response
        await rt.signin.completed(signed_in)
        begun = await begin_session(
            rt,
            ctx.identity,
            user_id=user_id,
            roles=signed_in.roles,
            amr=signed_in.amr,
            source=rt.signin.source_name,
            client=address,
            username=signed_in.username,
            typed=username,
            device=request.headers.get("user-agent", ""),
        )
        token, claims = begun.token, begun.claims
        log.info("login ok user=%r client=%s", user_id, address)
        ctx.user_for_log = user_id
        headers = dict(HEADERS)
        if as_json:
            response: Response = JSONResponse(
                {
                    "sub": user_id,
                    "roles": list(signed_in.roles),
                    "exp": claims.exp,
                    "sid": claims.sid,
                    "amr": list(claims.amr),
                },
                headers=headers,
            )
        else:
            headers["location"] = self.handoff.after_sign_in(next_target)
            response = Response(status_code=303, headers=headers)
        response.headers.append("set-cookie", rt.cookies.set(token))
        response.headers.append("set-cookie", f"{self.csrf_cookie}=; Max-Age=0; {self.csrf_attrs}")
        return response
