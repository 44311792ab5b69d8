"""Which source a signed-in user's standing is asked of: the password source or a provider.

The id rule (README "Identities from several sources") makes the answer unique: every
provider's ids start with its own `id_prefix` (or it is the only source), and no
password-source id may start with one (sign-in refuses it). So the id alone says where the
user came from, at every refresh and hand-off, without a claim that could go stale.
"""

from __future__ import annotations

from gateway.auth.oidc_users import OidcUsers
from gateway.sources.base import User, UserBackend


class Identities:
    """`lookup` for any signed-in user, whichever source signed them in."""

    def __init__(self, users: UserBackend, oidc: OidcUsers) -> None:
        self.users = users
        self.oidc = oidc

    def source_of(self, user_id: str) -> str:
        """The name of the source this id comes from: a provider's, or "" for passwords."""
        provider = self.oidc.provider_for(user_id) if self.oidc else None
        return provider.name if provider is not None else ""

    async def lookup(self, user_id: str, name: str = "", sid: str = "") -> User | None:
        """The user as their source has them now; None when gone, disabled or refused.

        Raises StoreUnavailable when that source cannot answer.
        """
        if self.oidc and self.oidc.provider_for(user_id) is not None:
            return await self.oidc.lookup(user_id, sid)
        return await self.users.lookup(user_id, name)

    async def close(self) -> None:
        await self.users.close()
        await self.oidc.close()
