"""The gateway's own endpoints under auth.prefix, one module per concern, in one Router."""

from __future__ import annotations

from starlette.routing import Route
from starlette.routing import Router as StarletteRouter

from gateway.core.decide import Core
from gateway.endpoints.account import Account
from gateway.endpoints.handoff import Handoff
from gateway.endpoints.health import Health
from gateway.endpoints.keys import Keys
from gateway.endpoints.login import Login
from gateway.endpoints.mfa import MfaStep
from gateway.endpoints.oidc import OidcSignIn
from gateway.endpoints.session import CurrentSession
from gateway.endpoints.verify import Verify
from gateway.endpoints.webauthn import WebAuthnSteps
from gateway.runtime import Runtime


class Endpoints:
    """A Starlette Router for the endpoints, reading identity from the request context."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        self.core = core
        p = self.prefix = rt.config.auth.prefix
        mfa = MfaStep(rt, core)
        login = Login(rt, core, mfa)
        session = CurrentSession(rt, core)
        self.verify = Verify(rt, core)
        keys = Keys(rt.keyring)
        health = Health(rt.store, rt.keyring)
        oidc = OidcSignIn(rt, mfa)
        self.router = StarletteRouter(
            routes=[
                Route(f"{p}/login", login.page, methods=["GET"]),
                Route(f"{p}/login", login.submit, methods=["POST"]),
                Route(f"{p}/logout", session.logout, methods=["POST"]),
                Route(f"{p}/handoff", Handoff(rt).handoff, methods=["GET"]),
                Route(f"{p}/oidc/{{name}}/start", oidc.start, methods=["GET"]),
                Route(f"{p}/oidc/{{name}}/callback", oidc.callback, methods=["GET"]),
                Route(f"{p}/oidc/{{name}}/backchannel", oidc.backchannel, methods=["POST"]),
                Route(f"{p}/mfa", mfa.page, methods=["GET"]),
                Route(f"{p}/mfa/totp", mfa.totp, methods=["POST"]),
                Route(f"{p}/mfa/recovery", mfa.recovery, methods=["POST"]),
                Route(f"{p}/mfa/totp/enroll", mfa.enroll_totp, methods=["POST"]),
                Route(f"{p}/me", session.me, methods=["GET"]),
                Route(f"{p}/jwks.json", keys.jwks, methods=["GET"]),
                Route(f"{p}/health", health.health, methods=["GET"]),
                Route(f"{p}/ready", health.ready, methods=["GET"]),
                Route(f"{p}/static/gateway.css", health.css, methods=["GET"]),
                *WebAuthnSteps(rt, mfa, login).routes(p),
                *Account(rt, core, mfa).routes(p),
            ],
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        # forward-auth is asked once per request the front proxy serves: straight to it
        if scope["path"] == self.verify.path:
            await self.verify(scope, receive, send)
            return
        await self.router(scope, receive, send)
