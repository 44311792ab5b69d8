"""{prefix}/account: a signed-in person's own page: who, factors, recovery codes, sessions,
password.

    GET  /account                         the page (a notice= key shows a short message)
    GET  /account/totp                    add an authenticator app: its QR code, posting to
                                          {prefix}/mfa/totp/enroll with next={prefix}/account
                                          (beside other factors: confirmed a moment ago)
    POST /account/confirm                 code=           confirm a factor, to add another
    POST /account/factors/remove          factor= code=   (code: or confirmed a moment ago)
    POST /account/recovery                code=           new recovery codes, shown once
    POST /account/sessions/revoke         session=        one other session of this user
    POST /account/sessions/revoke-others  every session of this user but this one
    POST /account/password                current= new= confirm=  (users = "file" only)

A security key is added by the page's WebAuthn button, through {prefix}/mfa/webauthn/register
(gateway.endpoints.webauthn) with next={prefix}/account. Adding a factor beside others, removing
one and new recovery codes all need a factor confirmed within CONFIRM_TTL or a current code
(MfaStep.confirm): while there is none, the page offers the code field in place of the add
buttons.

Every form is same-origin and CSRF-checked (MfaStep.fields). A user with second factors sees
the page only from a session that entered one. Sessions are named in forms by a hash of
their id, looked up among the user's own sessions only: no form can name another's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import secrets
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import audit, metrics
from gateway.auth.begin import session_info_key, usable_methods
from gateway.auth.signin import InvalidCredentials, LockedOut, SourceUnavailable
from gateway.core.context import Identity, context_of
from gateway.core.decide import Core
from gateway.core.policy import has_second_factor
from gateway.endpoints.common import HEADERS, Refused, json_error, wants_json
from gateway.endpoints.mfa import MfaStep, Subject
from gateway.mfa.totp import provisioning_uri, qr_svg
from gateway.pages import render_account, webauthn_box
from gateway.runtime import Runtime
from gateway.sources.base import MAX_PASSWORD_BYTES, canonical_username
from gateway.sources.file import UsersFileError, set_user
from gateway.store.base import Session, StoreUnavailable

log = logging.getLogger("gateway.account")

MIN_PASSWORD = 8
_MAX_CODE = 64
_KINDS = {"totp": "Authenticator app", "webauthn": "Security key or passkey"}
# what a 303 back to the page may say: a key, never text from the request
NOTICES = {
    "factor_removed": "The second factor was removed.",
    "session_ended": "That session was signed out.",
    "others_ended": "Every other session was signed out.",
    "password_changed": "Your password was changed; your other sessions were signed out.",
    "totp_added": "The authenticator app was added.",
    "key_added": "The security key was added.",
    "confirmed": "Confirmed: you can add a second factor for the next few minutes.",
}


class Account:
    """The account page and its forms."""

    def __init__(self, rt: Runtime, core: Core, mfa: MfaStep) -> None:
        self.rt = rt
        self.core = core
        self.mfa = mfa
        self.prefix = rt.config.auth.prefix
        self.public_url = rt.config.server.public_url

    def routes(self, prefix: str) -> list[Route]:
        """The Starlette routes these endpoints add under the prefix."""
        p = prefix
        return [
            Route(f"{p}/account", self.page, methods=["GET"]),
            Route(f"{p}/account/totp", self.totp_page, methods=["GET"]),
            Route(f"{p}/account/confirm", self.confirm, methods=["POST"]),
            Route(f"{p}/account/factors/remove", self.remove_factor, methods=["POST"]),
            Route(f"{p}/account/recovery", self.regenerate, methods=["POST"]),
            Route(f"{p}/account/sessions/revoke", self.revoke_session, methods=["POST"]),
            Route(f"{p}/account/sessions/revoke-others", self.revoke_others, methods=["POST"]),
            Route(f"{p}/account/password", self.change_password, methods=["POST"]),
        ]

    # -- who is asking --------------------------------------------------------------------

    async def _signed_in(self, request: Request) -> Identity | Response:
        """The caller's identity with a live session and (when they have factors) a second
        factor in this session; otherwise the response that sends them to get one."""
        as_json = wants_json(request)
        identity = context_of(request.scope).identity
        alive = (
            identity is not None
            and identity.source != "service"
            and await self.rt.sessions.check(identity.sid, identity.sub) is not None
        )
        if not alive:
            if as_json:
                return json_error(401, "unauthenticated", "Sign in first.")
            target = quote(f"{self.prefix}/account", safe="/")
            return _see_other(f"{self.public_url}{self.prefix}/login?next={target}")
        assert identity is not None
        if not has_second_factor(identity.amr) and await self._methods(identity.sub):
            if as_json:
                return json_error(403, "mfa_required", "Enter your second factor first.")
            target = quote(f"{self.prefix}/account", safe="/")
            return _see_other(f"{self.public_url}{self.prefix}/mfa?next={target}")
        return identity

    def _subject(self, identity: Identity) -> Subject:
        """The session as the factor checks see it (as MfaStep.subject makes it for a session;
        never a pending sign-in another cookie of this browser may name)."""
        return Subject(
            user_id=identity.sub,
            roles=identity.roles,
            amr=identity.amr,
            source=self.rt.identities.source_of(identity.sub) or self.rt.config.auth.users,
            username=identity.username,
            next_target=f"{self.prefix}/account",
            limit_name=canonical_username(identity.username or identity.sub),
            identity=identity,
        )

    async def _methods(self, user_id: str) -> tuple[str, ...]:
        return usable_methods(self.rt, await self.rt.factors.methods(user_id))

    # -- the page -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        try:
            who = await self._signed_in(request)
            if isinstance(who, Response):
                return who
            notice = NOTICES.get(request.query_params.get("notice", ""), "")
            return await self._page(request, who, notice=notice)
        except StoreUnavailable as exc:
            return _unavailable(exc)

    async def _page(
        self,
        request: Request,
        identity: Identity,
        *,
        notice: str = "",
        error: str = "",
        status: int = 200,
    ) -> Response:
        rt = self.rt
        now = rt.clock()
        token = secrets.token_urlsafe(32)
        csrf = f'<input type="hidden" name="csrf" value="{html.escape(token)}">'
        p = html.escape(self.prefix)
        source = rt.identities.source_of(identity.sub) or rt.config.auth.users
        factors = await rt.factors.list(identity.sub)
        methods = await self._methods(identity.sub)
        confirmed = await self.mfa.recently_confirmed(identity)
        parts = []
        if notice:
            parts.append(f'<p class="notice" role="status">{html.escape(notice)}</p>')
        if error:
            parts.append(f'<p class="error" role="alert">{html.escape(error)}</p>')

        # who am I
        roles = ", ".join(identity.roles) or "none"
        amr = ", ".join(identity.amr) or "-"
        parts.append(
            '<section aria-labelledby="who"><h2 id="who">You</h2><dl class="facts">'
            f"<dt>User</dt><dd>{html.escape(identity.sub)}</dd>"
            f"<dt>Roles</dt><dd>{html.escape(roles)}</dd>"
            f"<dt>Signed in with</dt><dd>{html.escape(source)} ({html.escape(amr)})</dd>"
            "</dl></section>"
        )

        # second factors
        confirm = self._confirm_field(methods, confirmed)
        rows = []
        for factor in factors:
            kind = _KINDS.get(factor.kind, factor.kind)
            rows.append(
                '<li class="item"><div class="what">'
                f"<strong>{html.escape(factor.name)}</strong>"
                f'<span class="hint">{html.escape(kind)} · added {_when(factor.created)} · '
                f"last used {_when(factor.last_used) if factor.last_used else 'never'}</span>"
                "</div>"
                f'<form method="post" action="{p}/account/factors/remove" class="inline">{csrf}'
                f'<input type="hidden" name="factor" value="{html.escape(factor.id)}">'
                f"{confirm}"
                '<button type="submit" class="secondary small">Remove</button></form></li>'
            )
        listing = (
            f'<ul class="items">{"".join(rows)}</ul>'
            if rows
            else '<p class="hint">No second factor yet.</p>'
        )
        add = (
            f'<a class="button secondary" href="{p}/account/totp">Add an authenticator app</a>'
            if rt.config.mfa.totp
            else ""
        )
        if methods and not confirmed:
            # another factor only with one of these confirmed now (MfaStep.may_add)
            add = (
                f'<form method="post" action="{p}/account/confirm">{csrf}'
                '<p class="hint">To add a second factor, confirm one you have first.</p>'
                f"{confirm}"
                '<button type="submit" class="secondary">Confirm</button></form>'
                if confirm
                else ""
            )
        elif rt.config.webauthn_on:
            add += webauthn_box(
                kind="register",
                prefix=self.prefix,
                button="Add a security key or passkey",
                fields={"csrf": token, "next": f"{self.prefix}/account?notice=key_added"},
                name_field=True,
            )
        parts.append(
            '<section aria-labelledby="factors"><h2 id="factors">Two-step verification</h2>'
            f"{listing}{add}{self._webauthn_hint(methods, confirmed)}</section>"
        )

        # recovery codes
        if factors:
            left = await rt.factors.recovery_left(identity.sub)
            parts.append(
                '<section aria-labelledby="recovery"><h2 id="recovery">Recovery codes</h2>'
                f'<p><span class="count">{left}</span> of 10 recovery codes left.</p>'
                f'<form method="post" action="{p}/account/recovery">{csrf}{confirm}'
                '<button type="submit" class="secondary">Regenerate recovery codes</button>'
                "</form></section>"
            )

        # sessions
        sessions = await self._sessions(identity.sub)
        rows = []
        for session in sessions:
            info = await self._info(session.sid, now)
            this = hmac.compare_digest(session.sid, identity.sid)
            device = _device(info.get("device", ""))
            badge = ' <span class="badge">this session</span>' if this else ""
            action = (
                ""
                if this
                else f'<form method="post" action="{p}/account/sessions/revoke" class="inline">'
                f'{csrf}<input type="hidden" name="session" value="{_handle(session.sid)}">'
                '<button type="submit" class="secondary small">Sign out</button></form>'
            )
            rows.append(
                f'<li class="item{" current" if this else ""}"><div class="what">'
                f'<span class="title"><strong>{html.escape(device)}</strong>{badge}</span>'
                f'<span class="hint">{html.escape(info.get("address", "") or "unknown address")}'
                f" · signed in {_when(session.created)} · last seen {_when(session.last_seen)}"
                f"</span></div>{action}</li>"
            )
        others = len(sessions) > 1
        parts.append(
            '<section aria-labelledby="sessions"><h2 id="sessions">Your sessions</h2>'
            f'<ul class="items">{"".join(rows)}</ul>'
            + (
                f'<form method="post" action="{p}/account/sessions/revoke-others">{csrf}'
                '<button type="submit" class="secondary">Sign out all other sessions</button>'
                "</form>"
                if others
                else ""
            )
            + "</section>"
        )

        # password
        if self._password_changeable(identity):
            parts.append(
                '<section aria-labelledby="password"><h2 id="password">Change password</h2>'
                f'<form method="post" action="{p}/account/password">{csrf}'
                '<label for="current">Current password</label>'
                '<input id="current" name="current" type="password" '
                'autocomplete="current-password" required>'
                '<label for="new">New password</label>'
                f'<input id="new" name="new" type="password" minlength="{MIN_PASSWORD}" '
                'autocomplete="new-password" required>'
                '<label for="confirm">New password again</label>'
                f'<input id="confirm" name="confirm" type="password" minlength="{MIN_PASSWORD}" '
                'autocomplete="new-password" required>'
                '<button type="submit">Change password</button></form></section>'
            )
        page = render_account(
            prefix=self.prefix,
            title="Your account",
            body="".join(parts),
            scripts=self.mfa.scripts(),
        )
        return self.mfa.html_page(page, status, token)

    def _confirm_field(self, methods: tuple[str, ...], confirmed: bool) -> str:
        if "totp" not in methods and "recovery" not in methods:
            return ""
        required = "" if confirmed else " required"
        placeholder = "not needed just now" if confirmed else "code or recovery code"
        return (
            '<input name="code" type="text" class="confirm" autocomplete="one-time-code" '
            f'aria-label="Current code" placeholder="{placeholder}" maxlength="{_MAX_CODE}"'
            f"{required}>"
        )

    def _webauthn_hint(self, methods: tuple[str, ...], confirmed: bool) -> str:
        if confirmed or "webauthn" not in methods or "totp" in methods:
            return ""
        target = quote(f"{self.prefix}/account", safe="/")
        return (
            f'<p class="hint"><a href="{html.escape(self.prefix)}/mfa?confirm=1&amp;next='
            f'{html.escape(target)}">Confirm with your security key</a> to add or remove a factor '
            "or make new recovery codes.</p>"
        )

    def _password_changeable(self, identity: Identity) -> bool:
        return self.rt.config.auth.users == "file" and not self.rt.identities.source_of(
            identity.sub
        )

    async def _sessions(self, user_id: str) -> list[Session]:
        listed = await self.rt.store.list_sessions(user_id, self.rt.clock())
        live = [s for s in listed if s.user == user_id and self.rt.sessions.alive(s)]
        return sorted(live, key=lambda s: s.created, reverse=True)

    async def _info(self, sid: str, now: float) -> dict:
        raw = await self.rt.store.get_record(session_info_key(sid), now)
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {}
        return doc if isinstance(doc, dict) else {}

    # -- adding an authenticator app --------------------------------------------------------

    async def totp_page(self, request: Request) -> Response:
        try:
            who = await self._signed_in(request)
            if isinstance(who, Response):
                return who
            if not self.rt.config.mfa.totp:
                return json_error(404, "totp_off", "Authenticator apps are turned off here.")
            subject = self._subject(who)
            try:
                # beside other factors: one of them confirmed first (the enrollment asks again)
                await self.mfa.may_add(request, subject, await self._methods(who.sub), {})
            except Refused as refused:
                if wants_json(request):
                    return json_error(refused.status, refused.code, refused.detail)
                return await self._page(request, who, error=refused.detail, status=refused.status)
            secret = await self.mfa.enroll_secret(subject)
            uri = provisioning_uri(
                secret, subject.username or subject.user_id, self.rt.config.mfa.issuer
            )
            token = secrets.token_urlsafe(32)
            p = html.escape(self.prefix)
            body = (
                "<p>Scan this code with an authenticator app, then type the 6-digit code it "
                "shows.</p>"
                f'<div class="qr">{qr_svg(uri)}</div>'
                '<p class="hint">Or enter this key by hand:</p>'
                f'<p class="secret">{html.escape(_grouped(secret))}</p>'
                f'<form method="post" action="{p}/mfa/totp/enroll">'
                f'<input type="hidden" name="csrf" value="{html.escape(token)}">'
                f'<input type="hidden" name="next" value="{p}/account?notice=totp_added">'
                '<label for="code">Code from the app</label>'
                '<input id="code" name="code" class="code" type="text" inputmode="numeric" '
                'autocomplete="one-time-code" pattern="[0-9 ]*" maxlength="8" required autofocus>'
                '<label for="name">Name it (optional)</label>'
                '<input id="name" name="name" type="text" maxlength="60" placeholder="Phone">'
                '<button type="submit">Add</button></form>'
                f'<a class="button secondary" href="{p}/account">Cancel</a>'
            )
            page = render_account(
                prefix=self.prefix, title="Add an authenticator app", body=body, wide=False
            )
            return self.mfa.html_page(page, 200, token, scripts=False)
        except StoreUnavailable as exc:
            return _unavailable(exc)

    # -- the forms ------------------------------------------------------------------------

    async def _form(self, request: Request, handler) -> Response:
        """Sign-in and CSRF checks, then `handler(identity, fields, subject)`; a refusal
        is the page with the error (JSON: the error shape)."""
        as_json = wants_json(request)
        identity: Identity | None = None
        try:
            who = await self._signed_in(request)
            if isinstance(who, Response):
                return who
            identity = who
            fields = await self.mfa.fields(request, as_json)
            return await handler(request, identity, fields, self._subject(identity), as_json)
        except Refused as exc:
            # an expired form is the page again with a fresh token; a cross-site post is no
            # page of ours to answer with
            if as_json or identity is None or exc.code == "cross_origin":
                return json_error(exc.status, exc.code, exc.detail, exc.headers)
            response = await self._page(request, identity, error=exc.detail, status=exc.status)
            response.headers.update(exc.headers)
            return response
        except StoreUnavailable as exc:
            return _unavailable(exc)

    def _done(self, as_json: bool, notice: str) -> Response:
        if as_json:
            return JSONResponse({"ok": True, "notice": NOTICES[notice]}, headers=HEADERS)
        return _see_other(f"{self.public_url}{self.prefix}/account?notice={notice}")

    async def _confirm(self, request: Request, subject: Subject, fields: dict) -> None:
        """A current second factor: a code in the form (checked, counted when wrong), or one
        this session entered a moment ago (MfaStep.confirm, as adding a factor asks)."""
        await self.mfa.confirm(request, subject, fields.get("code", ""))

    async def confirm(self, request: Request) -> Response:
        return await self._form(request, self._confirm_now)

    async def _confirm_now(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        if not await self._methods(identity.sub):
            raise Refused(400, "not_enrolled", "Set up a second factor first.")
        await self._confirm(request, subject, fields)
        return self._done(as_json, "confirmed")

    async def remove_factor(self, request: Request) -> Response:
        return await self._form(request, self._remove_factor)

    async def _remove_factor(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        factor_id = fields.get("factor", "")
        factors = await self.rt.factors.list(identity.sub)
        factor = next((f for f in factors if f.id == factor_id), None)
        if factor is None:
            raise Refused(404, "no_factor", "That second factor is not yours or is gone.")
        if self.rt.config.mfa.required and len(factors) == 1:
            raise Refused(400, "last_factor", "This site needs a second factor: add another first.")
        await self._confirm(request, subject, fields)
        await self.rt.factors.remove(identity.sub, factor.id)
        if len(factors) == 1:
            # the last factor went: its recovery codes would be of no use, and none should be
            await self.rt.factors.reset(identity.sub)
        audit.event("mfa.removed", user=identity.sub, kind=factor.kind, factor=factor.id, by="user")
        log.info("second factor removed user=%r factor=%s", identity.sub, factor.id)
        return self._done(as_json, "factor_removed")

    async def regenerate(self, request: Request) -> Response:
        return await self._form(request, self._regenerate)

    async def _regenerate(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        if not await self.rt.factors.list(identity.sub):
            raise Refused(400, "not_enrolled", "Set up a second factor first.")
        await self._confirm(request, subject, fields)
        codes = await self.rt.factors.new_recovery_codes(identity.sub)
        audit.event("mfa.recovery_codes", user=identity.sub, by="user")
        if as_json:
            return JSONResponse({"recovery_codes": codes}, headers=HEADERS)
        return self.mfa.recovery_codes_page(codes, f"{self.public_url}{self.prefix}/account")

    async def revoke_session(self, request: Request) -> Response:
        return await self._form(request, self._revoke_session)

    async def _revoke_session(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        handle = fields.get("session", "")
        target = None
        if isinstance(handle, str) and handle:
            for session in await self._sessions(identity.sub):
                if hmac.compare_digest(_handle(session.sid), handle):
                    target = session
        # only a session of this very user, found among theirs; this one ends at /logout
        if target is None or target.user != identity.sub or target.sid == identity.sid:
            raise Refused(404, "no_session", "That session is not one of yours, or ended.")
        await self._end(target.sid)
        audit.event(
            "session.revoked", user=identity.sub, session=target.sid, reason="account", by="user"
        )
        return self._done(as_json, "session_ended")

    async def revoke_others(self, request: Request) -> Response:
        return await self._form(request, self._revoke_others)

    async def _revoke_others(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        count = await self._end_others(identity)
        audit.event(
            "session.revoked", user=identity.sub, count=count, reason="account_others", by="user"
        )
        return self._done(as_json, "others_ended")

    async def _end(self, sid: str) -> None:
        if self.rt.oidc:
            await self.rt.oidc.forget(sid)
        await self.rt.sessions.revoke(sid)

    async def _end_others(self, identity: Identity) -> int:
        count = 0
        for session in await self._sessions(identity.sub):
            if session.user == identity.sub and session.sid != identity.sid:
                await self._end(session.sid)
                count += 1
        return count

    async def change_password(self, request: Request) -> Response:
        return await self._form(request, self._change_password)

    async def _change_password(
        self, request: Request, identity: Identity, fields: dict, subject: Subject, as_json: bool
    ) -> Response:
        if not self._password_changeable(identity):
            raise Refused(400, "not_here", "Your password is not managed by this gateway.")
        current, new, again = (fields.get(k, "") for k in ("current", "new", "confirm"))
        if not all(isinstance(v, str) for v in (current, new, again)) or not current:
            raise Refused(400, "bad_request", "Enter your current password.")
        if new != again:
            raise Refused(400, "mismatch", "The new passwords do not match.")
        if len(new) < MIN_PASSWORD:
            raise Refused(
                400, "too_short", f"The new password needs at least {MIN_PASSWORD} characters."
            )
        if len(new.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise Refused(400, "too_long", "The new password is too long.")
        address = context_of(request.scope).view.ip
        try:
            signed = await self.rt.signin.sign_in(
                identity.username or identity.sub, current, address
            )
        except LockedOut as exc:
            raise Refused(
                429,
                "too_many_attempts",
                "Too many failed attempts; try again later.",
                {"retry-after": str(exc.retry_after)},
            ) from None
        except InvalidCredentials:
            raise Refused(401, "wrong_password", "The current password is not right.") from None
        except SourceUnavailable:
            raise Refused(503, "source_unavailable", "Try again in a moment.") from None
        if signed.user_id != identity.sub:
            raise Refused(401, "wrong_password", "The current password is not right.")
        await self.rt.signin.completed(signed)
        try:
            await asyncio.to_thread(
                set_user, self.rt.config.auth.users_file, identity.sub, new, None
            )
        except UsersFileError as exc:
            log.warning("password change failed user=%r: %s", identity.sub, exc)
            raise Refused(400, "not_changed", "The password could not be changed.") from None
        count = await self._end_others(identity)
        audit.event("password.changed", user=identity.sub, by="user", client=address)
        audit.event(
            "session.revoked",
            user=identity.sub,
            count=count,
            reason="password_changed",
            by="user",
        )
        log.info("password changed user=%r sessions_ended=%d", identity.sub, count)
        return self._done(as_json, "password_changed")


def _handle(sid: str) -> str:
    """What a form names a session by: not its id (which the page need not show)."""
    return hashlib.sha256(b"account-session:" + sid.encode()).hexdigest()[:32]


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _device(agent: str) -> str:
    """A short name for a user agent: browser on system, or the agent cut short."""
    if not agent:
        return "Unknown device"
    low = agent.lower()
    browser = next(
        (
            name
            for key, name in (
                ("edg/", "Edge"),
                ("firefox/", "Firefox"),
                ("chrome/", "Chrome"),
                ("chromium/", "Chromium"),
                ("safari/", "Safari"),
                ("curl/", "curl"),
                ("python-httpx", "httpx"),
            )
            if key in low
        ),
        "",
    )
    system = next(
        (
            name
            for key, name in (
                ("android", "Android"),
                ("iphone", "iPhone"),
                ("ipad", "iPad"),
                ("windows", "Windows"),
                ("mac os", "macOS"),
                ("linux", "Linux"),
            )
            if key in low
        ),
        "",
    )
    if browser and system:
        return f"{browser} on {system}"
    return browser or agent[:60]


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _see_other(location: str) -> Response:
    return Response(status_code=303, headers={**HEADERS, "location": location})


def _unavailable(exc: Exception) -> Response:
    log.warning("account page unavailable: store: %s", exc)
    metrics.store_error("account")
    return json_error(503, "store_unavailable", "Your account page is unavailable; try again.")
