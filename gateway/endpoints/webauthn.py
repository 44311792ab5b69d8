"""{prefix}/mfa/webauthn/...: security keys and passkeys (py_webauthn), and the script the
pages load for the browser's WebAuthn calls."""

from __future__ import annotations

from starlette.routing import Route

from gateway.endpoints.mfa import MfaStep
from gateway.runtime import Runtime


class WebAuthnSteps:
    """Registration and authentication ceremonies, as a second factor and passkey-only."""

    def __init__(self, rt: Runtime, mfa: MfaStep) -> None:
        self.rt = rt
        self.mfa = mfa

    def routes(self, prefix: str) -> list[Route]:
        """The Starlette routes these endpoints add under the prefix."""
        return []
