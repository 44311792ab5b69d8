"""Service accounts: API tokens for machines, made by `gateway tokens create NAME`.

A token is `gwst_` and 43 URL-safe characters (32 random bytes), printed once. The store
keeps only its SHA-256 (the token is 256 random bits, so there is nothing to guess through a
fast hash), in records:

    service-token:<sha256 hex>  ->  {"name", "roles", "created", "expires"}   (JSON)
    service-name:<name>         ->  <sha256 hex>         (one token per name)
    service-used:<name>         ->  last use, unix seconds (written at most once a minute
                                    per process; the first write is the `first_used` event)

Every request with a token reads its record from the store (no cache), so `gateway tokens
revoke` ends it at once on every replica that shares the store.

A service's identity is `service:<name>` (in `sub`, the user header and the assertion),
with the source `service`. No users source can produce that id: `gateway check` and sign-in
refuse user ids with the `service:` prefix (sources.base.RESERVED_PREFIX), and a token is
only taken as `Authorization: Bearer` on a `bearer = true` route or a gateway endpoint, never
from the cookie. A user named like a service (`deploy`) is `deploy`, not `service:deploy`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from gateway import audit
from gateway.core.context import Identity
from gateway.sources.base import SERVICE_PREFIX
from gateway.store.base import Store

TOKEN_PREFIX = "gwst_"
_TOKEN = re.compile(r"^gwst_[A-Za-z0-9_-]{43}$")
# matched whole (fullmatch): `$` would also take a name or role ending in a line break
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
USED_EVERY = 60.0  # seconds between last-use writes of one token in one process
_USED_LIMIT = 10_000


@dataclass(frozen=True)
class ServiceToken:
    """What the store knows of one service token (never the token itself)."""

    name: str
    roles: tuple[str, ...]
    created: float
    expires: float | None  # None: until revoked
    last_used: float | None = None

    @property
    def identity_id(self) -> str:
        return SERVICE_PREFIX + self.name


class ServiceTokenError(ValueError):
    """A `gateway tokens` call that cannot be done; the message says why."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def looks_like_token(value: str) -> bool:
    """True for a value shaped like one of our service tokens (checked before the store)."""
    return value.startswith(TOKEN_PREFIX)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ServiceTokenError(
            f"service name {name[:70]!r} is not 1-64 of a-z 0-9 . _ - (starting with a letter "
            "or digit)"
        )
    return name


def check_roles(roles: list[str]) -> tuple[str, ...]:
    for role in roles:
        if not ROLE.fullmatch(role):
            raise ServiceTokenError(
                f"role {role[:70]!r} is not 1-64 of A-Z a-z 0-9 . _ : - (starting with a "
                "letter or digit)"
            )
    return tuple(dict.fromkeys(roles))


def _record(token: ServiceToken) -> str:
    return json.dumps(
        {
            "name": token.name,
            "roles": list(token.roles),
            "created": token.created,
            "expires": token.expires,
        },
        separators=(",", ":"),
    )


def _parse(value: str | None) -> ServiceToken | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
        return ServiceToken(
            name=str(data["name"]),
            roles=tuple(str(role) for role in data["roles"]),
            created=float(data["created"]),
            expires=None if data["expires"] is None else float(data["expires"]),
        )
    except (ValueError, KeyError, TypeError):
        return None  # a damaged record is no token


class ServiceTokens:
    """Create, find, list and revoke service tokens in the store."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._used_written: dict[str, float] = {}

    async def create(
        self, name: str, roles: tuple[str, ...], lifetime: float | None, by: str = "cli"
    ) -> tuple[str, ServiceToken]:
        """A new token for `name` (which must not have one): the token, printed once, and its
        record."""
        check_name(name)
        roles = check_roles(list(roles))
        now = self.clock()
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        hashed = digest(token)
        record = ServiceToken(name, roles, now, None if lifetime is None else now + lifetime)
        expires = record.expires
        claimed = await self.store.put_record(
            f"service-name:{name}", hashed, now, expires, only_new=True
        )
        if not claimed:
            raise ServiceTokenError(
                f"service {name!r} has a token already: `gateway tokens revoke {name}` first"
            )
        await self.store.put_record(f"service-token:{hashed}", _record(record), now, expires)
        await self.store.delete_record(f"service-used:{name}")
        audit.event(
            "service_token.created", service=name, roles=list(roles), expires=expires, by=by
        )
        return token, record

    async def revoke(self, name: str, by: str = "cli") -> bool:
        """End `name`'s token everywhere; False when it had none."""
        now = self.clock()
        hashed = await self.store.get_record(f"service-name:{name}", now)
        if hashed is None:
            return False
        # the token record first: from this write on no replica accepts the token
        await self.store.delete_record(f"service-token:{hashed}")
        await self.store.delete_record(f"service-name:{name}")
        await self.store.delete_record(f"service-used:{name}")
        audit.event("service_token.revoked", service=name, by=by)
        return True

    async def list(self) -> list[ServiceToken]:
        """Every live service token, by name, with its last use."""
        now = self.clock()
        names = await self.store.list_records("service-name:", now)
        used = await self.store.list_records("service-used:", now)
        found: list[ServiceToken] = []
        for _, hashed in sorted(names.items()):
            record = _parse(await self.store.get_record(f"service-token:{hashed}", now))
            if record is None:
                continue
            last = used.get(f"service-used:{record.name}")
            try:
                last_used = float(last) if last is not None else None
            except ValueError:
                last_used = None
            found.append(
                ServiceToken(record.name, record.roles, record.created, record.expires, last_used)
            )
        return found

    async def identify(self, token: str) -> Identity | None:
        """The service identity of a presented token, or None (unknown, revoked, expired).

        Raises StoreUnavailable when the store cannot answer: a token is never taken unchecked.
        """
        if not _TOKEN.match(token):
            return None
        now = self.clock()
        record = _parse(await self.store.get_record(f"service-token:{digest(token)}", now))
        if record is None or (record.expires is not None and record.expires <= now):
            return None
        await self._note_use(record, now)
        return Identity(
            sub=record.identity_id,
            roles=record.roles,
            sid="",
            exp=record.expires or 0.0,  # 0: until revoked
            source="service",
        )

    async def _note_use(self, record: ServiceToken, now: float) -> None:
        written = self._used_written.get(record.name)
        if written is not None and now < written + USED_EVERY:
            return
        if len(self._used_written) >= _USED_LIMIT:
            self._used_written.clear()
        self._used_written[record.name] = now
        key = f"service-used:{record.name}"
        if await self.store.put_record(key, repr(now), now, record.expires, only_new=True):
            audit.event("service_token.first_used", service=record.name)
        else:
            await self.store.put_record(key, repr(now), now, record.expires)
