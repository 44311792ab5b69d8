"""{prefix}/mfa/webauthn/...: security keys and passkeys (gateway.mfa.webauthn), and the script
the pages load for the browser's WebAuthn calls.

    POST /mfa/webauthn/register/options       [confirm_code=]: options for a new key (JSON)
    POST /mfa/webauthn/register               credential= [name=] [confirm_code=]: the new key,
                                              kept as a factor
    POST /mfa/webauthn/authenticate/options   options for a second factor or a step-up (JSON)
    POST /mfa/webauthn/authenticate           credential=: the key's answer, as a second factor
    POST /mfa/webauthn/passkey/options        options for a passkey sign-in (JSON, no user yet)
    POST /mfa/webauthn/passkey                credential= [next=]: signs in with the passkey alone
    GET  /static/webauthn.js                  the script

Registration and the second factor are the factor step's (MfaStep.submit: the same subject,
CSRF, limits and completion as a code; a key beside the user's other factors needs one of
them confirmed a moment ago or confirm_code=, MfaStep.may_add); a passkey is a sign-in of its
own, like the password form: the user its handle names is asked of their source, as at a
refresh, and a passkey must have verified the user (PIN or biometric), so it stands for both
factors (amr ["hwk"]).
Every submission is a form (with the page's CSRF token) or JSON; the options are JSON only.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import audit, metrics
from gateway.auth.begin import begin_session
from gateway.auth.limits import Busy
from gateway.auth.roles import TOO_MANY_ROLES, fits_store
from gateway.core.context import context_of
from gateway.endpoints.common import HEADERS, Refused, json_error, wants_json
from gateway.endpoints.login import Login
from gateway.endpoints.mfa import MfaStep, Subject, busy, factor_name
from gateway.mfa.webauthn import CeremonyFailed, WebAuthn, parse_credential, web_origin
from gateway.pages import script
from gateway.runtime import Runtime
from gateway.sources.base import SERVICE_PREFIX, canonical_username
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.webauthn")


class WebAuthnSteps:
    """Registration and authentication ceremonies, as a second factor and passkey-only."""

    def __init__(self, rt: Runtime, mfa: MfaStep, login: Login) -> None:
        self.rt = rt
        self.mfa = mfa
        self.login = login
        config = rt.config
        self.ceremonies = WebAuthn(
            rp_id=config.rp_id,
            rp_name=config.mfa.issuer,
            # the pages that make the calls are served at public_url: that is the one origin
            origin=web_origin(config.server.public_url),
            store=rt.store,
            factors=rt.factors,
            sealer=rt.sealer,
            clock=rt.clock,
        )
        # a passkey signs in a user of the password source; with providers only there is none
        self.passkeys = login.passkeys

    def routes(self, prefix: str) -> list[Route]:
        """The Starlette routes these endpoints add under the prefix (none while WebAuthn is
        off, but the script, which then does nothing)."""
        p = f"{prefix}/mfa/webauthn"
        routes = [Route(f"{prefix}/static/webauthn.js", self.script, methods=["GET"])]
        if not self.rt.config.webauthn_on:
            return routes
        routes += [
            Route(f"{p}/register/options", self.register_options, methods=["POST"]),
            Route(f"{p}/register", self.register, methods=["POST"]),
            Route(f"{p}/authenticate/options", self.authenticate_options, methods=["POST"]),
            Route(f"{p}/authenticate", self.authenticate, methods=["POST"]),
        ]
        if self.passkeys:
            routes += [
                Route(f"{p}/passkey/options", self.passkey_options, methods=["POST"]),
                Route(f"{p}/passkey", self.passkey, methods=["POST"]),
            ]
        return routes

    async def script(self, request: Request) -> Response:
        """The pages' WebAuthn calls (CSP: the pages run this script and no other)."""
        return Response(
            script(),
            media_type="text/javascript",
            headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"},
        )

    # -- options --------------------------------------------------------------------------

    async def _options(self, request: Request, subject_needed: bool) -> tuple[Subject | None, dict]:
        fields = await self.mfa.fields(request, as_json=True)
        if not subject_needed:
            return None, fields
        subject = await self.mfa.subject(request, fields)
        if subject is None:
            raise Refused(401, "unauthenticated", "Sign in first; the sign-in may have expired.")
        return subject, fields

    async def register_options(self, request: Request) -> Response:
        """POST (JSON): options for navigator.credentials.create(), for the subject."""
        try:
            subject, fields = await self._options(request, True)
            assert subject is not None
            await self.mfa.may_add(request, subject, await self.mfa.methods(subject), fields)
            options = await self.ceremonies.registration_options(
                subject.user_id, subject.username or subject.user_id
            )
            return _options_response(options)
        except Refused as exc:
            return json_error(exc.status, exc.code, exc.detail, exc.headers)
        except StoreUnavailable as exc:
            return self.mfa.unavailable(exc)

    async def authenticate_options(self, request: Request) -> Response:
        """POST (JSON): options for navigator.credentials.get(), with the subject's keys."""
        try:
            subject, _ = await self._options(request, True)
            assert subject is not None
            if "webauthn" not in await self.mfa.methods(subject):
                raise Refused(400, "not_enrolled", "No security key is set up.")
            return _options_response(await self.ceremonies.authentication_options(subject.user_id))
        except Refused as exc:
            return json_error(exc.status, exc.code, exc.detail, exc.headers)
        except StoreUnavailable as exc:
            return self.mfa.unavailable(exc)

    async def passkey_options(self, request: Request) -> Response:
        """POST (JSON): options for a passkey sign-in: no user named, the browser offers its
        passkeys for this site."""
        try:
            await self._options(request, False)
            # a locked-out address gets no challenge (the challenge itself keeps nothing)
            await self._address_locked(context_of(request.scope).view.ip)
            return _options_response(await self.ceremonies.authentication_options(None))
        except Refused as exc:
            return json_error(exc.status, exc.code, exc.detail, exc.headers)
        except StoreUnavailable as exc:
            return self.mfa.unavailable(exc)

    # -- the factor step ------------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        """POST credential= [name=]: keep the new key; for a first factor, with recovery codes."""
        return await self.mfa.submit(request, "register", self._register)

    async def _register(
        self,
        request: Request,
        subject: Subject,
        methods: tuple[str, ...],
        fields: dict,
        as_json: bool,
    ) -> Response:
        await self.mfa.may_add(request, subject, methods, fields)
        await self.mfa.locked(request, subject)
        name = factor_name(fields, "Security key")
        try:
            factor = await self.ceremonies.register(
                subject.user_id, parse_credential(fields.get("credential")), name
            )
        except CeremonyFailed as exc:
            # a key that could not be added is no guess at a secret: refused, not counted
            log.info("security key not added user=%r: %s", subject.user_id, exc)
            audit.event(
                "mfa.refused",
                user=subject.user_id,
                kind="webauthn",
                reason=exc.reason,
                client=context_of(request.scope).view.ip,
            )
            raise Refused(400, "key_not_added", "That security key could not be added.") from None
        audit.event(
            "mfa.enrolled", user=subject.user_id, kind="webauthn", factor=factor.id, label=name
        )
        codes = None if methods else await self.rt.factors.new_recovery_codes(subject.user_id)
        return await self.mfa.complete(request, subject, "webauthn", as_json, codes)

    async def authenticate(self, request: Request) -> Response:
        """POST credential=: the answer of one of the subject's keys, as the second factor."""
        return await self.mfa.submit(request, "webauthn", self._authenticate)

    async def _authenticate(
        self,
        request: Request,
        subject: Subject,
        methods: tuple[str, ...],
        fields: dict,
        as_json: bool,
    ) -> Response:
        if "webauthn" not in methods:
            raise Refused(400, "not_enrolled", "No security key is set up.")
        async with self.mfa.attempt(request, subject):
            try:
                await self.ceremonies.authenticate(
                    subject.user_id, parse_credential(fields.get("credential"))
                )
            except CeremonyFailed as exc:
                log.info("security key refused user=%r: %s", subject.user_id, exc)
                raise await self.mfa.failed(request, subject, "webauthn", exc.reason) from None
        return await self.mfa.complete(request, subject, "webauthn", as_json)

    # -- a passkey alone ------------------------------------------------------------------

    async def passkey(self, request: Request) -> Response:
        """POST credential= [next=]: sign in with a passkey (form from the sign-in page, with
        its CSRF token; or JSON)."""
        as_json = wants_json(request)
        ctx = context_of(request.scope)
        address = ctx.view.ip
        next_target = "/"
        user_id = ""
        try:
            fields = await self.mfa.fields(request, as_json)
            next_value = fields.get("next")
            next_target = self.mfa.redirects.resolve(
                next_value if isinstance(next_value, str) else None
            )
            credential = parse_credential(fields.get("credential"))
            # an address locked out by failures asks no more (whoever the passkey names)
            try:
                async with self.rt.limiter.turn("", address):
                    await self._address_locked(address)
                    try:
                        user_id, username = await self.ceremonies.passkey_owner(credential)
                    except CeremonyFailed:
                        await self.rt.limiter.failed("", address)
                        raise
            except Busy:
                raise busy() from None
            subject = Subject(
                user_id=user_id,
                roles=(),
                amr=(),
                source=self.rt.signin.source_name,
                username=username,
                next_target=next_target,
                limit_name=canonical_username(username or user_id),
                limit_account="" if canonical_username(username or user_id) == user_id else user_id,
            )
            async with self.mfa.attempt(request, subject):
                try:
                    await self.ceremonies.authenticate(user_id, credential, passkey=True)
                except CeremonyFailed:
                    await self.rt.limiter.failed(subject.limit_name, address, subject.limit_account)
                    raise
            return await self._begin(request, subject, as_json)
        except CeremonyFailed as exc:
            log.info("passkey refused user=%r client=%s: %s", user_id or None, address, exc)
            audit.event(
                "signin.failed",
                user=user_id or None,
                source="passkey",
                reason=exc.reason,
                client=address,
            )
            metrics.login("failed")
            return self._refused(
                Refused(401, "passkey_refused", "That passkey was not accepted."),
                as_json,
                next_target,
            )
        except Refused as exc:
            return self._refused(exc, as_json, next_target)
        except StoreUnavailable as exc:
            return self.mfa.unavailable(exc)

    async def _begin(self, request: Request, subject: Subject, as_json: bool) -> Response:
        """The passkey held: the user as their source has them now, then their session."""
        rt = self.rt
        ctx = context_of(request.scope)
        user_id = subject.user_id
        if rt.identities.source_of(user_id):
            # a provider's user: only the provider can say they may still sign in
            raise Refused(
                403, "provider_user", "Sign in with your provider; your passkey is asked after."
            )
        user = await rt.identities.lookup(user_id, subject.username)
        if user is None or user.id != user_id or user_id.startswith(SERVICE_PREFIX):
            audit.event(
                "signin.failed",
                user=user_id,
                source="passkey",
                reason="user_gone",
                client=ctx.view.ip,
            )
            metrics.login("failed")
            raise Refused(401, "passkey_refused", "This account cannot sign in.")
        if not fits_store(user.roles):
            raise Refused(403, "too_many_roles", TOO_MANY_ROLES)
        await rt.limiter.succeeded(subject.limit_name, subject.limit_account)
        begun = await begin_session(
            rt,
            ctx.identity,
            user_id=user_id,
            roles=user.roles,
            amr=("hwk",),
            source="passkey",
            client=ctx.view.ip,
            username=user.name or subject.username,
            device=request.headers.get("user-agent", ""),
        )
        # the key was entered just now: the account page asks for no other before a change
        await self.mfa.confirmed_now(begun.claims.sid, "webauthn")
        ctx.user_for_log = user_id
        log.info("passkey sign-in ok user=%r client=%s", user_id, ctx.view.ip)
        if as_json:
            response: Response = JSONResponse(
                {
                    "sub": user_id,
                    "roles": list(user.roles),
                    "exp": begun.claims.exp,
                    "sid": begun.claims.sid,
                    "amr": list(begun.claims.amr),
                },
                headers=HEADERS,
            )
        else:
            location = self.mfa.handoff.after_sign_in(subject.next_target)
            response = Response(status_code=303, headers={**HEADERS, "location": location})
        response.headers.append("set-cookie", rt.cookies.set(begun.token))
        response.headers.append(
            "set-cookie", f"{self.mfa.csrf_cookie}=; Max-Age=0; {self.mfa.csrf_attrs}"
        )
        return response

    async def _address_locked(self, address: str) -> None:
        wait = await self.rt.limiter.retry_after("", address)
        if wait is not None:
            metrics.login("locked")
            raise Refused(
                429,
                "too_many_attempts",
                "Too many failed sign-ins; try again later.",
                {"retry-after": str(wait)},
            )

    def _refused(self, exc: Refused, as_json: bool, next_target: str) -> Response:
        """JSON: the error shape; a browser: back to the sign-in page, which says why."""
        if as_json or exc.code in ("cross_origin", "csrf"):
            return json_error(exc.status, exc.code, exc.detail, exc.headers)
        response = self.login.form(exc.status, next_target, error=exc.detail)
        response.headers.update(exc.headers)
        return response


def _options_response(options: str) -> Response:
    return Response(options, media_type="application/json", headers=HEADERS)
