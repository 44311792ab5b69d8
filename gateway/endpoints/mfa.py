"""{prefix}/mfa: the second-factor step, for a pending sign-in or a session being stepped up.

    GET  /mfa               the factor page (or, with none enrolled, the enrollment page)
    POST /mfa/totp          a code from an authenticator app
    POST /mfa/recovery      a recovery code (each once)
    POST /mfa/totp/enroll   the first code of a new authenticator app, which enrolls it
                            (beside a factor the user has: confirm_code= or a factor
                            entered within CONFIRM_TTL, as MfaStep.may_add says)

Who is being asked (a `Subject`) is either a pending sign-in (gateway.mfa.pending: its cookie,
or `pending` in a JSON body) or the caller's own session, whose token lacks a second factor
(step-up: `mfa = true` routes, `[mfa] required`). Completing the step begins the session of a
pending sign-in, or re-issues the session's token with the factor in `amr` (same session).
The secret an enrollment page shows is kept for that pending sign-in or session alone.
Wrong codes count in the login limits of the user, as wrong passwords do. The WebAuthn
endpoints (gateway.endpoints.webauthn) use the same subject and completion.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import audit, metrics
from gateway.auth.begin import begin_session, usable_methods
from gateway.auth.limits import Busy
from gateway.auth.oidc_users import StoredGrant
from gateway.auth.redirects import Redirects
from gateway.auth.sealed import SealError
from gateway.core.context import Identity, context_of
from gateway.core.decide import Core
from gateway.core.policy import has_second_factor
from gateway.core.responses import PAGE_CSP_SCRIPT
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
from gateway.mfa import AMR
from gateway.mfa.factors import user_key
from gateway.mfa.pending import PENDING_TTL, Pending, pending_cookie
from gateway.mfa.totp import check_code, matching_step, new_secret, provisioning_uri, qr_svg
from gateway.pages import render_card, webauthn_box
from gateway.runtime import Runtime
from gateway.sources.base import canonical_username
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.mfa")

# judges one submission for its subject and completes it (MfaStep.submit): a Response, or Refused
Check = Callable[[Request, "Subject", tuple[str, ...], dict, bool], Awaitable[Response]]

ENROLL_TTL = 600.0  # an enrollment secret shown on the page waits this long for its first code
CONFIRM_TTL = 300.0  # a factor entered counts as "just now" for the account page this long
CONFIRM_REQUIRED = "Enter a current code from your app or a recovery code."
_MAX_CODE = 64


def busy() -> Refused:
    """The answer while another attempt of the same user (or too many of one address) is
    being checked (gateway.auth.limits.LoginLimiter.turn)."""
    return Refused(
        429,
        "too_many_attempts",
        "Another attempt is being checked; try again.",
        {"retry-after": "1"},
    )


@dataclass(frozen=True)
class Subject:
    """Who the factor step is for: a pending sign-in (`handle`) or a session (`identity`)."""

    user_id: str
    roles: tuple[str, ...]
    amr: tuple[str, ...]
    source: str
    username: str
    next_target: str
    limit_name: str
    limit_account: str = ""
    handle: str = ""
    pending: Pending | None = None
    identity: Identity | None = None

    @property
    def stepped_up(self) -> bool:
        return has_second_factor(self.amr)


class MfaStep:
    """The factor page and endpoints; `challenge` is how sign-in hands a user over to them."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        config = rt.config
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.allowed = core.allowed_origins
        self.redirects = Redirects(config)
        self.handoff = Handoff(rt, self.redirects)
        secure = config.cookie_secure
        self.cookie, self.cookie_attrs = pending_cookie(config)
        self.csrf_cookie = config.cookie_name + "_csrf"
        self.csrf_attrs = "Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
        self.webauthn_on = config.webauthn_on

    # -- from sign-in ---------------------------------------------------------------------

    async def challenge(
        self, request: Request, pending: Pending, methods: tuple[str, ...], as_json: bool
    ) -> Response:
        """A first factor is done and a second is due: keep the pending sign-in, send the user
        to the factor page (API: 401 mfa_required with the handle to complete it by JSON)."""
        handle = await self.rt.pending.start(pending)
        audit.event(
            "signin.pending",
            user=pending.user_id,
            source=pending.source,
            methods=list(methods),
            client=context_of(request.scope).view.ip,
        )
        if as_json:
            response: Response = JSONResponse(
                {
                    "error": "mfa_required",
                    "detail": "A second factor is required: send it to "
                    + (f"{self.prefix}/mfa/totp" if methods else f"{self.prefix}/mfa/totp/enroll"),
                    "methods": list(methods),
                    "enroll": not methods,
                    "pending": handle,
                },
                401,
                headers=HEADERS,
            )
        else:
            location = f"{self.public_url}{self.prefix}/mfa"
            response = Response(status_code=303, headers={**HEADERS, "location": location})
        response.headers.append(
            "set-cookie", f"{self.cookie}={handle}; Max-Age={int(PENDING_TTL)}; {self.cookie_attrs}"
        )
        return response

    # -- who is asked ---------------------------------------------------------------------

    async def subject(self, request: Request, fields: dict | None = None) -> Subject | None:
        """The pending sign-in this browser or client holds, else its session; None: neither."""
        handle = ""
        if fields is not None and isinstance(fields.get("pending"), str):
            handle = fields["pending"]
        handle = handle or request.cookies.get(self.cookie, "")
        pending = await self.rt.pending.get(handle) if handle else None
        if pending is not None:
            return Subject(
                user_id=pending.user_id,
                roles=pending.roles,
                amr=pending.amr,
                source=pending.source,
                username=pending.username,
                next_target=pending.next_target,
                limit_name=pending.limit_name or canonical_username(pending.user_id),
                limit_account=pending.limit_account,
                handle=handle,
                pending=pending,
            )
        identity = context_of(request.scope).identity
        if identity is None or identity.source == "service":
            return None
        raw_next = None
        if fields is not None and isinstance(fields.get("next"), str):
            raw_next = fields["next"]
        elif "next" in request.query_params:
            raw_next = request.query_params["next"]
        return Subject(
            user_id=identity.sub,
            roles=identity.roles,
            amr=identity.amr,
            source=self.rt.identities.source_of(identity.sub) or self.rt.config.auth.users,
            username=identity.username,
            next_target=self.redirects.resolve(raw_next),
            limit_name=canonical_username(identity.username or identity.sub),
            identity=identity,
        )

    async def methods(self, subject: Subject) -> tuple[str, ...]:
        """The subject's enrolled second factors that this config takes."""
        return usable_methods(self.rt, await self.rt.factors.methods(subject.user_id))

    # -- reading a submission -------------------------------------------------------------

    async def fields(self, request: Request, as_json: bool) -> dict:
        """The form or JSON body; a form must carry the CSRF token of the page it came from."""
        if not same_origin(request, self.allowed | self._own_origin(request)):
            raise Refused(403, "cross_origin", "Cross-site requests are not allowed here.")
        body = await read_body(request)
        if as_json:
            return json_object(body, empty=True)
        fields = form_fields(body)
        check_csrf(request, self.csrf_cookie, fields, "The form expired; please try again.")
        return fields

    def _own_origin(self, request: Request) -> set[str]:
        view = context_of(request.scope).view
        return {f"{view.scheme}://{view.host}"} if view.host else set()

    @asynccontextmanager
    async def attempt(self, request: Request, subject: Subject) -> AsyncIterator[None]:
        """One factor check of this user at a time (LoginLimiter.turn), refused 429 while the
        limits are used up: wrap the check and the counting of its failure."""
        address = context_of(request.scope).view.ip
        try:
            async with self.rt.limiter.turn(subject.limit_name, address):
                await self.locked(request, subject)
                yield
        except Busy:
            raise busy() from None

    async def locked(self, request: Request, subject: Subject) -> None:
        """Refused 429 while the user's login limits are used up (codes and passwords alike)."""
        address = context_of(request.scope).view.ip
        wait = await self.rt.limiter.retry_after(subject.limit_name, address, subject.limit_account)
        if wait is not None:
            audit.event("mfa.locked", user=subject.user_id, retry_after=wait, client=address)
            metrics.login("locked")
            raise Refused(
                429,
                "too_many_attempts",
                "Too many failed attempts; try again later.",
                {"retry-after": str(wait)},
            )

    async def failed(self, request: Request, subject: Subject, method: str, why: str) -> Refused:
        """Count a wrong factor in the login limits; the refusal to raise."""
        address = context_of(request.scope).view.ip
        await self.rt.limiter.failed(subject.limit_name, address, subject.limit_account)
        log.info(
            "second factor refused user=%r method=%s client=%s", subject.user_id, method, address
        )
        audit.event("mfa.failed", user=subject.user_id, method=method, reason=why, client=address)
        metrics.login("failed")
        return Refused(401, "invalid_code", _WRONG[method])

    # -- the page -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """GET: the factor page, or enrollment when the subject has no factor yet."""
        as_json = wants_json(request)
        try:
            subject = await self.subject(request)
            if subject is None:
                return self._no_subject(as_json)
            methods = await self.methods(subject)
            confirm = request.query_params.get("confirm") == "1" and bool(methods)
            if subject.identity is not None and subject.stepped_up and not confirm:
                # nothing to step up: straight on
                if as_json:
                    return JSONResponse({"methods": list(methods), "done": True}, headers=HEADERS)
                return _see_other(self.handoff.after_sign_in(subject.next_target))
            if not methods:
                return await self._enroll_page(request, subject, as_json)
            if as_json:
                return JSONResponse({"methods": list(methods), "enroll": False}, headers=HEADERS)
            return self._factor_page(subject, methods)
        except StoreUnavailable as exc:
            return self.unavailable(exc)

    def _no_subject(self, as_json: bool) -> Response:
        if as_json:
            return json_error(401, "unauthenticated", "Sign in first.")
        return _see_other(f"{self.public_url}{self.prefix}/login")

    def _factor_page(
        self, subject: Subject, methods: tuple[str, ...], error: str = "", status: int = 200
    ) -> Response:
        token = secrets.token_urlsafe(32)
        p = html.escape(self.prefix)
        hidden = _hidden(token, subject)
        parts = [
            '<p class="sub">Confirm it is you with your second factor.</p>',
            _error(error),
        ]
        if "webauthn" in methods:
            parts.append(
                webauthn_box(
                    kind="authenticate",
                    prefix=self.prefix,
                    button="Use a security key or passkey",
                    fields=_hidden_fields(token, subject),
                )
            )
        if "totp" in methods:
            parts.append(
                f'<form method="post" action="{p}/mfa/totp">{hidden}'
                '<label for="code">Code from your authenticator app</label>'
                '<input id="code" name="code" class="code" type="text" inputmode="numeric" '
                'autocomplete="one-time-code" pattern="[0-9 ]*" maxlength="8" required autofocus>'
                '<button type="submit">Verify</button></form>'
            )
        if "recovery" in methods:
            parts.append(
                f"<details><summary>Use a recovery code</summary>"
                f'<form method="post" action="{p}/mfa/recovery">{hidden}'
                '<label for="recovery">Recovery code</label>'
                '<input id="recovery" name="code" type="text" autocomplete="off" '
                'autocapitalize="none" spellcheck="false" required>'
                '<button type="submit" class="secondary">Use recovery code</button>'
                "</form></details>"
            )
        return self._card("Two-step verification", "".join(parts), token, status)

    async def _enroll_page(self, request: Request, subject: Subject, as_json: bool) -> Response:
        config = self.rt.config
        secret = await self.enroll_secret(subject) if config.mfa.totp else ""
        account = subject.username or subject.user_id
        uri = provisioning_uri(secret, account, config.mfa.issuer) if secret else ""
        if as_json:
            doc: dict = {"methods": [], "enroll": True}
            if secret:
                doc["totp"] = {"secret": secret, "uri": uri}
            return JSONResponse(doc, headers=HEADERS)
        return self._enroll_card(subject, secret, uri)

    def _enroll_card(
        self, subject: Subject, secret: str, uri: str, error: str = "", status: int = 200
    ) -> Response:
        token = secrets.token_urlsafe(32)
        p = html.escape(self.prefix)
        hidden = _hidden(token, subject)
        parts = [
            '<p class="sub">This site needs a second factor. Set one up to continue.</p>',
            _error(error),
        ]
        if secret:
            parts.append(
                "<p>Scan this code with an authenticator app (Google Authenticator, 1Password, "
                "Authy, FreeOTP), then type the 6-digit code it shows.</p>"
                f'<div class="qr">{qr_svg(uri)}</div>'
                f'<p class="hint">Or enter this key by hand:</p>'
                f'<p class="secret">{html.escape(_grouped(secret))}</p>'
                f'<form method="post" action="{p}/mfa/totp/enroll">{hidden}'
                '<label for="code">Code from the app</label>'
                '<input id="code" name="code" class="code" type="text" inputmode="numeric" '
                'autocomplete="one-time-code" pattern="[0-9 ]*" maxlength="8" required autofocus>'
                '<label for="name">Name it (optional)</label>'
                '<input id="name" name="name" type="text" maxlength="60" '
                'placeholder="Phone">'
                '<button type="submit">Turn on</button></form>'
            )
        if self.webauthn_on:
            if secret:
                parts.append('<p class="or"><span>or</span></p>')
            parts.append(
                webauthn_box(
                    kind="register",
                    prefix=self.prefix,
                    button="Add a security key or passkey",
                    fields=_hidden_fields(token, subject),
                    name_field=True,
                )
            )
        return self._card("Set up two-step verification", "".join(parts), token, status)

    def _card(self, title: str, body: str, csrf: str, status: int) -> Response:
        page = render_card(prefix=self.prefix, title=title, body=body, scripts=self.scripts())
        return self.html_page(page, status, csrf)

    def scripts(self) -> tuple[str, ...]:
        """What a factor or account page loads: the WebAuthn script while WebAuthn is on."""
        return (f"{self.prefix}/static/webauthn.js",) if self.webauthn_on else ()

    def html_page(self, page: str, status: int, csrf: str, *, scripts: bool = True) -> Response:
        """A factor or account page with its CSRF cookie; with `scripts` (and WebAuthn on),
        the CSP that lets the page's own script run."""
        response = Response(page, status, media_type="text/html", headers=HEADERS)
        if scripts and self.webauthn_on:
            response.headers["content-security-policy"] = PAGE_CSP_SCRIPT.decode()
        response.headers.append(
            "set-cookie", f"{self.csrf_cookie}={csrf}; Max-Age=3600; {self.csrf_attrs}"
        )
        return response

    async def enroll_secret(self, subject: Subject) -> str:
        """The secret the enrollment page shows: kept (sealed) until its first code, so a
        reload shows the same QR code the user may have scanned already. It is this pending
        sign-in's or this session's (`enroll_key`), never another's of the same user."""
        key = enroll_key(subject)
        now = self.rt.clock()
        sealer = self.rt.sealer
        value = await self.rt.store.get_record(key, now)
        if value is not None:
            try:
                return sealer.open(value, "mfa-enroll", key)
            except SealError:
                pass
        secret = new_secret()
        await self.rt.store.put_record(
            key, sealer.seal(secret, "mfa-enroll", key), now, now + ENROLL_TTL
        )
        return secret

    # -- the submissions ------------------------------------------------------------------

    async def totp(self, request: Request) -> Response:
        """POST code=: a code of one of the subject's authenticator apps."""
        return await self.submit(request, "totp", partial(self._check_code, "totp"))

    async def recovery(self, request: Request) -> Response:
        """POST code=: one of the subject's recovery codes, used up by this."""
        return await self.submit(request, "recovery", partial(self._check_code, "recovery"))

    async def enroll_totp(self, request: Request) -> Response:
        """POST code= [name=]: the first code of the authenticator app the enrollment page
        showed; enrolls it, and, for a first factor, makes the recovery codes."""
        return await self.submit(request, "enroll", self._enroll)

    async def confirmed_now(self, sid: str, method: str) -> None:
        """This session entered a second factor just now (what `recently_confirmed` reads)."""
        now = self.rt.clock()
        await self.rt.store.put_record(f"mfa-confirmed:{sid}", method, now, now + CONFIRM_TTL)

    async def recently_confirmed(self, identity: Identity) -> bool:
        """True for a few minutes after this session entered a second factor (`confirm`
        asks it before a factor is added or removed or the recovery codes are replaced)."""
        key = f"mfa-confirmed:{identity.sid}"
        return await self.rt.store.get_record(key, self.rt.clock()) is not None

    async def confirm(self, request: Request, subject: Subject, code: object) -> None:
        """A current second factor of this session, before it changes the user's factors:
        `code` (an app's code or a recovery code: checked, counted when wrong, and then this
        session counts as confirmed just now), or, with no code, a factor it entered within
        CONFIRM_TTL. Refused 403 confirm_required otherwise."""
        identity = subject.identity
        if identity is None:
            raise Refused(403, "step_up_required", "Confirm a second factor you have first.")
        if code is None:
            code = ""
        if not isinstance(code, str) or len(code) > _MAX_CODE:
            raise Refused(400, "bad_request", "Enter the code.")
        code = code.strip()
        if not code:
            if await self.recently_confirmed(identity):
                return
            raise Refused(403, "confirm_required", CONFIRM_REQUIRED)
        methods = await self.methods(subject)
        async with self.attempt(request, subject):
            digits = code.replace(" ", "")
            if digits.isdigit() and len(digits) <= 8:
                method = "totp"
                ok = "totp" in methods and bool(
                    await check_code(self.rt.factors, subject.user_id, code, self.rt.clock)
                )
            else:
                method = "recovery"
                ok = "recovery" in methods and await self.rt.factors.use_recovery(
                    subject.user_id, code
                )
            if not ok:
                raise await self.failed(request, subject, method, "wrong_code")
        await self.rt.limiter.succeeded(subject.limit_name, subject.limit_account)
        await self.confirmed_now(identity.sid, method)

    async def submit(self, request: Request, kind: str, check: Check) -> Response:
        """A factor step's submission: read it (form with CSRF, or JSON), find its subject,
        let `check` judge it and complete; a refusal is the page again with the error (JSON:
        the error shape). `kind` "enroll" and "register" add a factor; the others prove one."""
        as_json = wants_json(request)
        subject: Subject | None = None
        methods: tuple[str, ...] = ()
        try:
            fields = await self.fields(request, as_json)
            subject = await self.subject(request, fields)
            if subject is None:
                raise Refused(
                    401, "unauthenticated", "Sign in first; the sign-in may have expired."
                )
            methods = await self.methods(subject)
            return await check(request, subject, methods, fields, as_json)
        except Refused as exc:
            if as_json or subject is None:
                return json_error(exc.status, exc.code, exc.detail, exc.headers)
            if kind in ("enroll", "register") and methods and subject.identity is not None:
                # a session adding a factor beside its others (from the account page): after
                # the factor it is asked for, back to the account page to add it again
                back = self.redirects.resolve(f"{self.prefix}/account")
                subject = replace(subject, next_target=back)
            if kind in ("enroll", "register") and not methods:
                secret = await self.enroll_secret(subject) if self.rt.config.mfa.totp else ""
                account = subject.username or subject.user_id
                uri = provisioning_uri(secret, account, self.rt.config.mfa.issuer) if secret else ""
                response = self._enroll_card(subject, secret, uri, exc.detail, exc.status)
            else:
                response = self._factor_page(subject, methods, exc.detail, exc.status)
            response.headers.update(exc.headers)
            return response
        except StoreUnavailable as exc:
            return self.unavailable(exc)

    async def _check_code(
        self,
        kind: str,
        request: Request,
        subject: Subject,
        methods: tuple[str, ...],
        fields: dict,
        as_json: bool,
    ) -> Response:
        """A code of `kind`: "totp" (an authenticator app's) or "recovery"."""
        code = _code(fields)
        if kind == "totp" and "totp" not in methods:
            raise Refused(400, "not_enrolled", "No authenticator app is set up.")
        if kind == "recovery" and "recovery" not in methods:
            raise Refused(400, "not_enrolled", "No recovery codes are left.")
        async with self.attempt(request, subject):
            if kind == "totp":
                ok = await check_code(self.rt.factors, subject.user_id, code, self.rt.clock)
            else:
                ok = await self.rt.factors.use_recovery(subject.user_id, code)
            if not ok:
                raise await self.failed(request, subject, kind, "wrong_code")
        return await self.complete(request, subject, kind, as_json)

    async def may_add(
        self, request: Request, subject: Subject, methods: tuple[str, ...], fields: dict
    ) -> None:
        """Refused unless this subject may add a factor now: a first one on the way in, or
        another from a session that entered a second factor and confirms one now (`confirm`:
        within CONFIRM_TTL, or `confirm_code` in the request), as a removal does."""
        if not methods:
            return
        if subject.identity is None or not subject.stepped_up:
            raise Refused(403, "step_up_required", "Confirm a second factor you have first.")
        code = fields.get("confirm_code")
        if code and await self.recently_confirmed(subject.identity):
            # confirmed already (say, by the same code at the options a moment ago): a code
            # checked twice would be refused as used
            code = None
        await self.confirm(request, subject, code)

    async def _enroll(
        self,
        request: Request,
        subject: Subject,
        methods: tuple[str, ...],
        fields: dict,
        as_json: bool,
    ) -> Response:
        if not self.rt.config.mfa.totp:
            raise Refused(404, "totp_off", "Authenticator apps are turned off here.")
        code = _code(fields)
        await self.may_add(request, subject, methods, fields)
        key = enroll_key(subject)
        async with self.attempt(request, subject):
            value = await self.rt.store.get_record(key, self.rt.clock())
            if value is None:
                raise Refused(400, "enrollment_expired", "The setup expired; scan the new code.")
            try:
                secret = self.rt.sealer.open(value, "mfa-enroll", key)
            except SealError:
                raise Refused(
                    400, "enrollment_expired", "The setup expired; scan the new code."
                ) from None
            step = matching_step(secret, code, self.rt.clock())
            if step is None:
                raise await self.failed(request, subject, "totp", "wrong_enrollment_code")
        name = factor_name(fields, "Authenticator app")
        try:
            factor = await self.rt.factors.add(
                subject.user_id, "totp", name, {"secret": secret, "last_step": step}
            )
        except ValueError as exc:
            raise Refused(400, "too_many_factors", str(exc).capitalize() + ".") from None
        await self.rt.store.delete_record(key)
        await self.rt.factors.used_once(subject.user_id, f"{factor.id}:{step}", 120)
        audit.event("mfa.enrolled", user=subject.user_id, kind="totp", factor=factor.id, label=name)
        codes = None
        if not methods:
            codes = await self.rt.factors.new_recovery_codes(subject.user_id)
        return await self.complete(request, subject, "totp", as_json, codes)

    # -- completing -----------------------------------------------------------------------

    async def complete(
        self,
        request: Request,
        subject: Subject,
        method: str,
        as_json: bool,
        recovery_codes: list[str] | None = None,
    ) -> Response:
        """The factor is good: begin the pending session, or step the session up; then on to
        `next` (or, with new recovery codes, a page showing them once)."""
        rt = self.rt
        ctx = context_of(request.scope)
        amr = tuple(dict.fromkeys((*subject.amr, AMR[method])))
        await rt.limiter.succeeded(subject.limit_name, subject.limit_account)
        if subject.pending is not None:
            if not await rt.pending.finish(subject.handle):
                # the same pending sign-in completed by another request a moment ago
                raise Refused(409, "already_used", "This sign-in was completed already.")
            begun = await begin_session(
                rt,
                ctx.identity,
                user_id=subject.user_id,
                roles=subject.roles,
                amr=amr,
                source=subject.source,
                client=ctx.view.ip,
                username=subject.username,
                typed=subject.pending.typed or None,
                device=request.headers.get("user-agent", ""),
            )
            if subject.pending.grant:
                stored = StoredGrant.from_json(subject.pending.grant)
                await rt.oidc.keep(begun.session.sid, stored, begun.session.expires)
            token, claims, host = begun.token, begun.claims, None
        else:
            identity = subject.identity
            assert identity is not None
            session = await rt.sessions.check(identity.sid, identity.sub)
            if session is None:
                raise Refused(401, "unauthenticated", "The session has ended; sign in again.")
            packed, ref = await rt.roles.pack(identity.sid, identity.roles, session.expires)
            token, claims = rt.tokens.mint_session(
                identity.sub, packed, identity.sid, amr, identity.username, ref
            )
            host = ctx.view.host or None
        await self.confirmed_now(claims.sid, method)
        ctx.user_for_log = subject.user_id
        audit.event(
            "mfa.succeeded",
            user=subject.user_id,
            method=method,
            session=claims.sid,
            step_up=subject.pending is None,
            client=ctx.view.ip,
        )
        log.info("second factor ok user=%r method=%s", subject.user_id, method)
        location = self.handoff.after_sign_in(subject.next_target)
        if as_json:
            doc = {
                "sub": subject.user_id,
                "roles": list(subject.roles),
                "exp": claims.exp,
                "sid": claims.sid,
                "amr": list(claims.amr),
            }
            if recovery_codes is not None:
                doc["recovery_codes"] = recovery_codes
            response: Response = JSONResponse(doc, headers=HEADERS)
        elif recovery_codes is not None:
            response = self.recovery_codes_page(recovery_codes, location)
        else:
            response = _see_other(location)
        response.headers.append("set-cookie", rt.cookies.set(token, host))
        if subject.pending is not None:
            response.headers.append("set-cookie", f"{self.cookie}=; Max-Age=0; {self.cookie_attrs}")
        return response

    def recovery_codes_page(self, codes: list[str], continue_to: str) -> Response:
        """The new recovery codes, shown this once."""
        items = "".join(f"<li>{html.escape(c)}</li>" for c in codes)
        body = (
            '<p class="notice">Two-step verification is on.</p>'
            "<p>Keep these recovery codes somewhere safe. Each one signs you in once if you "
            "lose your device. They are not shown again.</p>"
            f'<ol class="codes">{items}</ol>'
            f'<a class="button" href="{html.escape(continue_to)}">Continue</a>'
        )
        page = render_card(prefix=self.prefix, title="Your recovery codes", body=body)
        return Response(page, 200, media_type="text/html", headers=HEADERS)

    def unavailable(self, exc: Exception) -> Response:
        """503: the store (or a source) cannot answer just now."""
        log.warning("second factor unavailable: store: %s", exc)
        metrics.store_error("mfa")
        return json_error(503, "store_unavailable", "Sign-in is unavailable; try again.")


_WRONG = {
    "totp": "That code is not right, or was used already.",
    "recovery": "That recovery code is not right, or was used already.",
    "webauthn": "That security key was not accepted.",
}


def _hidden_fields(csrf: str, subject: Subject) -> dict[str, str]:
    """What a factor form carries: the CSRF token and, for a session, where to go next."""
    fields = {"csrf": csrf}
    if subject.pending is None:
        fields["next"] = subject.next_target
    return fields


def _hidden(csrf: str, subject: Subject) -> str:
    return "".join(
        f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
        for k, v in _hidden_fields(csrf, subject).items()
    )


def enroll_key(subject: Subject) -> str:
    """The record of the enrollment secret `subject` was shown: the user's, and of this
    pending sign-in (its handle) or this session (its id), by a hash of either."""
    if subject.handle:
        holder = "pending:" + subject.handle
    else:
        assert subject.identity is not None
        holder = "session:" + subject.identity.sid
    return f"mfa-enroll:{user_key(subject.user_id)}:{user_key(holder)}"


def factor_name(fields: dict, default: str) -> str:
    """The name the person gave a new factor, without characters that do not print (a
    terminal's escape sequences) and cut to 60 characters, or `default`."""
    name = fields.get("name")
    if not isinstance(name, str):
        return default
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:60].strip()
    return name or default


def _code(fields: dict) -> str:
    code = fields.get("code")
    if not isinstance(code, str) or not code.strip() or len(code) > _MAX_CODE:
        raise Refused(400, "bad_request", "Enter the code.")
    return code


def _error(text: str) -> str:
    return f'<p class="error" role="alert">{html.escape(text)}</p>' if text else ""


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _see_other(location: str) -> Response:
    return Response(status_code=303, headers={**HEADERS, "location": location})
