"""Between the first factor and the second: who signed in, how, and where they were going.

A pending sign-in is a store record (sealed: it names the user and their roles) under a
random handle that the browser holds in a cookie of its own (`<cookie>_mfa`, HttpOnly,
host-only, five minutes) and an API client may send back as `pending`. It is not a session:
no route, no /verify and no /me takes it; only the factor endpoints read it. It is used once:
the second factor deletes it as the session begins.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass

from gateway.auth.sealed import Sealer, SealError
from gateway.config import Config
from gateway.store.base import Store

PENDING_TTL = 300.0
_HANDLE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_PURPOSE = "mfa-pending"


def pending_cookie(config: Config) -> tuple[str, str]:
    """The pending sign-in cookie's name and attributes (host-only, HttpOnly, Lax)."""
    secure = "; Secure" if config.cookie_secure else ""
    return config.cookie_name + "_mfa", "Path=/; HttpOnly; SameSite=Lax" + secure


@dataclass(frozen=True)
class Pending:
    """A first factor done: the identity the session will have, and how to count failures."""

    user_id: str
    roles: tuple[str, ...]
    amr: tuple[str, ...]
    source: str  # the users source's name, or the provider's
    next_target: str
    username: str = ""  # what the source finds the user by at refresh, when not user_id
    typed: str = ""  # what was typed at sign-in (audit)
    limit_name: str = ""  # the login-limit counters' name and account for this user
    limit_account: str = ""
    started: float = 0.0
    # a provider's sign-in: its grant (StoredGrant JSON), kept for the session once it begins
    grant: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Pending:
        doc = json.loads(text)
        doc["roles"] = tuple(doc["roles"])
        doc["amr"] = tuple(doc["amr"])
        return cls(**doc)


class PendingSignIns:
    """Pending sign-ins in the store; every method may raise StoreUnavailable."""

    def __init__(self, store: Store, sealer: Sealer, clock: Callable[[], float]) -> None:
        self.store = store
        self.sealer = sealer
        self.clock = clock

    async def start(self, pending: Pending) -> str:
        """Keep it for PENDING_TTL; the handle for the cookie."""
        handle = secrets.token_urlsafe(32)
        key = f"mfa-pending:{handle}"
        now = self.clock()
        sealed = self.sealer.seal(pending.to_json(), _PURPOSE, key)
        await self.store.put_record(key, sealed, now, now + PENDING_TTL)
        return handle

    async def get(self, handle: str | None) -> Pending | None:
        if not handle or not _HANDLE.match(handle):
            return None
        key = f"mfa-pending:{handle}"
        value = await self.store.get_record(key, self.clock())
        if value is None:
            return None
        try:
            return Pending.from_json(self.sealer.open(value, _PURPOSE, key))
        except (SealError, ValueError, KeyError, TypeError):
            return None

    async def finish(self, handle: str) -> bool:
        """Used up: True for exactly one caller (the one whose session begins)."""
        if not _HANDLE.match(handle):
            return False
        return await self.store.delete_record(f"mfa-pending:{handle}")
