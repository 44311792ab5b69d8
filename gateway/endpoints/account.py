"""{prefix}/account: a signed-in person's own page: who, factors, recovery codes, sessions,
password."""

from __future__ import annotations

from starlette.routing import Route

from gateway.core.decide import Core
from gateway.endpoints.mfa import MfaStep
from gateway.runtime import Runtime


class Account:
    """The account page and its forms."""

    def __init__(self, rt: Runtime, core: Core, mfa: MfaStep) -> None:
        self.rt = rt
        self.core = core
        self.mfa = mfa

    def routes(self, prefix: str) -> list[Route]:
        """The Starlette routes these endpoints add under the prefix."""
        return []
