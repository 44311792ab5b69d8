"""A big identity's roles, kept server-side when they would not fit in the session cookie.

Browsers keep at most 4,096 bytes of a cookie: a user with hundreds of roles would get a token
the browser drops (or the gateway refuses), and sign in again forever. Roles whose compact JSON
is at most ROLES_BUDGET bytes stay in the token as ever; larger sets go into the store as one
record per session and roles set, and the token carries only a short reference (`rref`):

    roles:<sid>:<ref>  ->  ["group-0000-team", ...]   (compact JSON, until the session ends)

`ref` is 22 characters of the base64url SHA-256 of that JSON, so a changed set of roles (a
refresh) gets a new record and a record never changes under a token that names it. Each process
remembers the roles it read or wrote per (sid, ref), so a big identity costs one store read per
process and roles set, not one per request; a token without `rref` never asks the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable

from gateway.store.base import RECORD_VALUE_MAX, Store

# compact JSON of the roles a token may carry itself: with every other claim (long issuer and
# user id included), base64url and an RS256 signature, the Set-Cookie stays near 3.4 KB
ROLES_BUDGET = 1536
REF_LENGTH = 22
RECORD_PREFIX = "roles:"
CACHE_ENTRIES = 10_000


class RolesTooLarge(ValueError):
    """More roles than one store record holds (64 KiB of JSON); the message says how many."""


def roles_json(roles: tuple[str, ...]) -> str:
    """The roles as the token and the record write them: a compact JSON array."""
    return json.dumps(list(roles), separators=(",", ":"), ensure_ascii=False)


def roles_ref(encoded: str) -> str:
    """The short reference of a roles JSON: 22 characters of its base64url SHA-256."""
    digest = hashlib.sha256(encoded.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:REF_LENGTH]


def record_key(sid: str, ref: str) -> str:
    """The store key of one session's roles set."""
    return f"{RECORD_PREFIX}{sid}:{ref}"


TOO_MANY_ROLES = (
    "Your account has more roles than the gateway can carry (about 3,000 at most); "
    "ask an administrator to remove some."
)


def fits_store(roles: tuple[str, ...]) -> bool:
    """False for a set of roles that no store record holds (pack would raise RolesTooLarge)."""
    return len(roles_json(roles).encode("utf-8")) <= RECORD_VALUE_MAX


class SessionRoles:
    """Packs roles into a token (or the store) at minting, and unpacks them at verification."""

    def __init__(
        self, store: Store, clock: Callable[[], float], max_entries: int = CACHE_ENTRIES
    ) -> None:
        self.store = store
        self.clock = clock
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    async def pack(
        self, sid: str, roles: tuple[str, ...], expires: float
    ) -> tuple[tuple[str, ...], str]:
        """(roles for the token, "") when they fit; else ((), ref) with the roles in the store.

        Raises StoreUnavailable when the store cannot take the record, RolesTooLarge when one
        record cannot hold them.
        """
        encoded = roles_json(roles)
        if len(encoded.encode("utf-8")) <= ROLES_BUDGET:
            return tuple(roles), ""
        if len(encoded.encode("utf-8")) > RECORD_VALUE_MAX:
            raise RolesTooLarge(
                f"{len(roles)} roles are {len(encoded.encode('utf-8'))} bytes of JSON; "
                f"at most {RECORD_VALUE_MAX} fit in the store"
            )
        ref = roles_ref(encoded)
        if (sid, ref) not in self._cache:
            # written once per process and roles set: a refresh with the same roles writes nothing
            await self.store.put_record(record_key(sid, ref), encoded, self.clock(), expires)
            self._remember(sid, ref, tuple(roles))
        return (), ref

    async def unpack(self, sid: str, roles: tuple[str, ...], ref: str) -> tuple[str, ...] | None:
        """The token's full roles: its own without `ref`, else the stored set; None when gone.

        Raises StoreUnavailable when the store must be asked and cannot answer.
        """
        if not ref:
            return roles
        cached = self._cache.get((sid, ref))
        if cached is not None:
            return cached
        encoded = await self.store.get_record(record_key(sid, ref), self.clock())
        found = _decode(encoded, ref)
        if found is not None:
            self._remember(sid, ref, found)
        return found

    def _remember(self, sid: str, ref: str, roles: tuple[str, ...]) -> None:
        if len(self._cache) >= self.max_entries:
            # oldest first: dicts keep insertion order
            del self._cache[next(iter(self._cache))]
        # sessions share role names: one copy of each string, whatever the number of sessions
        self._cache[(sid, ref)] = tuple(sys.intern(role) for role in roles)


def _decode(encoded: str | None, ref: str) -> tuple[str, ...] | None:
    """The roles of a record that is the set `ref` names; None for a missing or other one."""
    # a record that does not hash to its ref is not the set the signed token names
    if encoded is None or roles_ref(encoded) != ref:
        return None
    try:
        value = json.loads(encoded)
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
        return None
    return tuple(value)
