"""A user's second factors in the gateway's store, sealed at rest.

Every factor is one store record under the user's key, `mfa:<user hash>:...`:

    mfa:<u>:f:<id>    a TOTP secret or a WebAuthn credential (kind, name, created, last use)
    mfa:<u>:r:<hash>  one unused recovery code (SHA-256 of an 80-bit code): deleted when used
    mfa:<u>:h         the user's WebAuthn user handle, and mfa-handle:<handle> back to the user

The user part is a hash of the user id, so any id (spaces, any script) makes a record key and
no id shows in the store's keys. Each value is sealed (gateway.auth.sealed) for its own record
key: a secret is unreadable without `keys.dir`, and a record copied or written under another
user's key does not open (someone with write access to Redis cannot plant a factor).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.sealed import Sealer, SealError
from gateway.store.base import Store

RECOVERY_CODES = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper
_RECOVERY_LENGTH = 16  # 16 of 31 symbols: 79 bits, so an unsalted SHA-256 is enough
MAX_FACTORS = 20  # per user: the store's list stays small, a page shows them all
_PURPOSE = "mfa-factor"


@dataclass
class Factor:
    """One enrolled factor: `kind` "totp" or "webauthn", and what checking it needs (`data`)."""

    kind: str
    id: str
    name: str
    created: float
    last_used: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "id": self.id,
                "name": self.name,
                "created": self.created,
                "last_used": self.last_used,
                "data": self.data,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Factor:
        doc = json.loads(text)
        return cls(
            kind=doc["kind"],
            id=doc["id"],
            name=doc["name"],
            created=doc["created"],
            last_used=doc.get("last_used"),
            data=doc.get("data", {}),
        )


def user_key(user_id: str) -> str:
    """The record-key part that stands for this user (never the id itself)."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def normalize_recovery(code: str) -> str:
    """A recovery code as typed (any case, spaces, dashes) in the one form that is hashed."""
    return "".join(c for c in code.lower() if c not in " -\t")


class Factors:
    """Read and change the factors of users; every method may raise StoreUnavailable."""

    def __init__(self, store: Store, sealer: Sealer, clock: Callable[[], float]) -> None:
        self.store = store
        self.sealer = sealer
        self.clock = clock

    # -- factors ---------------------------------------------------------------------------

    def _key(self, user_id: str, factor_id: str) -> str:
        return f"mfa:{user_key(user_id)}:f:{factor_id}"

    async def list(self, user_id: str) -> list[Factor]:
        """Every enrolled factor, oldest first (a record that does not open is left out)."""
        prefix = f"mfa:{user_key(user_id)}:f:"
        records = await self.store.list_records(prefix, self.clock())
        out = []
        for key, value in records.items():
            try:
                out.append(Factor.from_json(self.sealer.open(value, _PURPOSE, key)))
            except (SealError, ValueError, KeyError):
                continue  # another key, another owner or damaged: not this user's factor
        return sorted(out, key=lambda f: (f.created, f.id))

    async def get(self, user_id: str, factor_id: str) -> Factor | None:
        key = self._key(user_id, factor_id)
        value = await self.store.get_record(key, self.clock())
        if value is None:
            return None
        try:
            return Factor.from_json(self.sealer.open(value, _PURPOSE, key))
        except (SealError, ValueError, KeyError):
            return None

    async def save(self, user_id: str, factor: Factor) -> None:
        """Add or update a factor."""
        key = self._key(user_id, factor.id)
        sealed = self.sealer.seal(factor.to_json(), _PURPOSE, key)
        await self.store.put_record(key, sealed, self.clock(), None)

    async def add(self, user_id: str, kind: str, name: str, data: dict[str, Any]) -> Factor:
        """Enroll a new factor, used just now (its first code or answer completed the step);
        ValueError past MAX_FACTORS."""
        if len(await self.list(user_id)) >= MAX_FACTORS:
            raise ValueError(f"at most {MAX_FACTORS} second factors per user")
        now = self.clock()
        factor = Factor(kind, secrets.token_urlsafe(9), name, now, now, data)
        await self.save(user_id, factor)
        return factor

    async def remove(self, user_id: str, factor_id: str) -> bool:
        return await self.store.delete_record(self._key(user_id, factor_id))

    async def methods(self, user_id: str) -> tuple[str, ...]:
        """The kinds this user can sign in with, "recovery" included while codes are left."""
        kinds = {f.kind for f in await self.list(user_id)}
        if kinds and await self.recovery_left(user_id):
            kinds.add("recovery")
        return tuple(k for k in ("totp", "webauthn", "recovery") if k in kinds)

    async def used_once(self, user_id: str, what: str, ttl: float) -> bool:
        """True the first time `what` is presented for this user within `ttl` (a TOTP step):
        exactly one of several concurrent callers, on any worker or replica."""
        now = self.clock()
        key = f"mfa-used:{user_key(user_id)}:{what}"
        return await self.store.put_record(key, "1", now, now + ttl, only_new=True)

    # -- recovery codes --------------------------------------------------------------------

    async def new_recovery_codes(self, user_id: str) -> list[str]:
        """Ten fresh codes, replacing any left; only their hashes are stored."""
        await self._drop_prefix(f"mfa:{user_key(user_id)}:r:")
        codes = []
        now = self.clock()
        for _ in range(RECOVERY_CODES):
            raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
            codes.append("-".join(raw[i : i + 4] for i in range(0, _RECOVERY_LENGTH, 4)))
            await self.store.put_record(self._recovery_key(user_id, raw), "1", now, None)
        return codes

    def _recovery_key(self, user_id: str, code: str) -> str:
        digest = hashlib.sha256(normalize_recovery(code).encode("utf-8")).hexdigest()
        return f"mfa:{user_key(user_id)}:r:{digest}"

    async def use_recovery(self, user_id: str, code: str) -> bool:
        """True when `code` is one of the user's unused codes; it is used up by this call."""
        normal = normalize_recovery(code)
        if len(normal) != _RECOVERY_LENGTH or not all(c in _RECOVERY_ALPHABET for c in normal):
            return False
        # a delete has exactly one winner: two requests with one code cannot both pass
        return await self.store.delete_record(self._recovery_key(user_id, normal))

    async def recovery_left(self, user_id: str) -> int:
        prefix = f"mfa:{user_key(user_id)}:r:"
        return len(await self.store.list_records(prefix, self.clock()))

    # -- WebAuthn user handles -------------------------------------------------------------

    async def user_handle(self, user_id: str, username: str = "", create: bool = True) -> str:
        """The user's WebAuthn user handle (random, 32 bytes base64url), made on first use."""
        key = f"mfa:{user_key(user_id)}:h"
        value = await self.store.get_record(key, self.clock())
        if value is not None:
            try:
                return json.loads(self.sealer.open(value, _PURPOSE, key))["handle"]
            except (SealError, ValueError, KeyError):
                pass
        if not create:
            return ""
        handle = secrets.token_urlsafe(32)
        doc = json.dumps({"handle": handle, "user": user_id, "username": username})
        now = self.clock()
        back = f"mfa-handle:{handle}"
        await self.store.put_record(back, self.sealer.seal(doc, _PURPOSE, back), now, None)
        await self.store.put_record(key, self.sealer.seal(doc, _PURPOSE, key), now, None)
        return handle

    async def user_of_handle(self, handle: str) -> tuple[str, str] | None:
        """(user id, username) of a WebAuthn user handle, or None."""
        if not handle or len(handle) > 100 or not handle.isascii():
            return None
        key = f"mfa-handle:{handle}"
        value = await self.store.get_record(key, self.clock())
        if value is None:
            return None
        try:
            doc = json.loads(self.sealer.open(value, _PURPOSE, key))
        except (SealError, ValueError):
            return None
        if not hmac.compare_digest(doc.get("handle", ""), handle):
            return None
        return doc["user"], doc.get("username", "")

    # -- operators -------------------------------------------------------------------------

    async def reset(self, user_id: str) -> int:
        """Remove every factor, recovery code and the user handle; how many factors went."""
        count = len(await self.list(user_id))
        handle = await self.user_handle(user_id, create=False)
        if handle:
            await self.store.delete_record(f"mfa-handle:{handle}")
        await self._drop_prefix(f"mfa:{user_key(user_id)}:")
        return count

    async def _drop_prefix(self, prefix: str) -> None:
        for key in await self.store.list_records(prefix, self.clock()):
            await self.store.delete_record(key)
