"""Users from OpenID Connect providers: who a provider's claims make, and their standing.

- **Identity.** `user_claim` (after `id_prefix`) is the user id: `sub` as the provider gives
  it (an opaque, case-sensitive id), any other claim (an email, a username) in the one
  canonical spelling every source uses (NFKC, trimmed, lower case), and only a value that is
  that spelling already but for ASCII upper case: `Alice` is `alice` (ASCII case variants are
  one user, as at every other source), while a fullwidth `alice`, `alice` with a no-break
  space or a line separator, or `\u00c9lise`, are refused (oidc_bad_user) rather than made the
  account of whoever holds `alice` or `\u00e9lise`. `roles_claim` (a list, or a string
  of space-separated names) gives roles, renamed by `role_map`; names that cannot be a role
  are dropped. `allowed_domains` needs a verified email (`email_verified` true) in one of them;
  `allowed_roles` needs one of those roles. A refusal says which rule, for the 403 page.
- **The grant.** What the provider gave at sign-in (refresh token, access token and its end,
  ID token, the provider's `sub` and `sid`) is kept in the store per session, sealed
  (gateway.auth.sealed, AES-GCM with a key in keys.dir) under `oidc-grant:<sid>`; never in the
  cookie. Index records `oidc-bcl:<provider>:sid|sub:<hash>:<sid>` let a back-channel logout
  find the sessions of a provider session or user.
- **Standing.** At every `refresh` the provider is asked again with the refresh token: a
  refusal (the user disabled there, the grant revoked) ends the session; new claims give the
  new roles, and the rules above are applied again. Without a refresh token the provider cannot
  be asked: the session keeps its sign-in roles until `max_age` (the README says so).
  One refresh per session at a time, everywhere: a page's parallel requests (in one process, or
  spread over workers and replicas by a load balancer) share it, in-process by one task and
  across processes by a lease record `oidc-refresh:<sid>` in the store; so a provider that
  rotates refresh tokens and refuses a used one (revoking the whole grant, as reuse detection
  does) never sees the same token twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.auth.oidc import Grant, Provider, ProviderUnavailable, TokenRefused
from gateway.auth.roles import TOO_MANY_ROLES, fits_store
from gateway.auth.sealed import Sealer, SealError
from gateway.config import Config, OidcConfig
from gateway.sources.base import MAX_USER_ID, SERVICE_PREFIX, User, canonical_username
from gateway.store.base import Store, StoreUnavailable

log = logging.getLogger("gateway.oidc")

_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# an access token passed upstream is refreshed when less than this many seconds remain
ACCESS_MARGIN = 30.0
_ACCESS_CACHE = 10_000
LEASE_POLL = 0.05  # seconds between looks at a refresh another process holds


class NotAllowed(Exception):
    """The provider vouched for the person, but a rule here refuses them; says which."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class StoredGrant:
    """A session's grant as sealed in the store."""

    provider: str
    user_id: str
    roles: tuple[str, ...]
    sub: str  # the provider's
    op_sid: str  # the provider's session id ("" when its ID token had none)
    refresh_token: str
    access_token: str
    access_expires: float
    id_token: str
    refreshed: float = 0.0  # when the provider was last asked (sign-in, refresh); unix seconds

    def to_json(self) -> str:
        return json.dumps(self.__dict__ | {"roles": list(self.roles)}, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> StoredGrant:
        data = json.loads(text)
        return StoredGrant(**(data | {"roles": tuple(data["roles"])}))


def user_from_claims(config: OidcConfig, claims: dict[str, Any]) -> User:
    """The user a provider's claims make, or NotAllowed naming the rule that refuses them."""
    value = claims.get(config.user_claim)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise NotAllowed(
            "oidc_no_user_claim",
            f"The sign-in service did not say who you are (no {config.user_claim!r}).",
        )
    if config.user_claim != "sub":
        canonical = canonical_username(value)
        if canonical != value.translate(_ASCII_LOWER):
            # NFKC, trimming or non-ASCII lower-casing would change it: another provider
            # account (a fullwidth `alice`, `alice\u00a0`) must not become the user `alice` is
            raise NotAllowed("oidc_bad_user", "This account's name cannot be used here.")
        value = canonical
    user_id = config.id_prefix + value
    if (
        len(user_id) > MAX_USER_ID
        or not user_id.isprintable()
        or user_id.startswith(SERVICE_PREFIX)
    ):
        raise NotAllowed("oidc_bad_user", "This account's name cannot be used here.")
    if config.allowed_domains:
        email = claims.get("email")
        if claims.get("email_verified") is not True or not isinstance(email, str):
            raise NotAllowed(
                "oidc_email_unverified", "Your email address is not verified at the provider."
            )
        domain = email.rpartition("@")[2].lower()
        if domain not in config.allowed_domains:
            raise NotAllowed(
                "oidc_domain", f"Accounts of {domain or 'that domain'} cannot sign in here."
            )
    roles = _roles(config, claims)
    if not fits_store(roles):
        raise NotAllowed("too_many_roles", TOO_MANY_ROLES)
    if config.allowed_roles and not set(roles) & set(config.allowed_roles):
        raise NotAllowed("oidc_role", "Your account has none of the roles this site admits.")
    return User(user_id, roles)


def _roles(config: OidcConfig, claims: dict[str, Any]) -> tuple[str, ...]:
    if not config.roles_claim:
        return ()
    raw = claims.get(config.roles_claim)
    if isinstance(raw, str):
        names = raw.split()
    elif isinstance(raw, list):
        names = [r for r in raw if isinstance(r, str)]
    else:
        names = []
    mapping = dict(config.role_map)
    out = []
    for name in names:
        role = mapping.get(name, name)
        if _ROLE.fullmatch(role):
            out.append(role)
    return tuple(dict.fromkeys(out))


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:40]


class OidcUsers:
    """Every configured provider, their users' grants in the store, and their standing."""

    def __init__(
        self, config: Config, store: Store, sealer: Sealer, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.clock = clock
        base = config.server.public_url + config.auth.prefix
        self.providers: dict[str, Provider] = {
            p.name: Provider(p, f"{base}/oidc/{p.name}/callback", clock) for p in config.auth.oidc
        }
        self.sealer = sealer
        self.refresh_every = config.auth.refresh
        self._access: dict[str, tuple[str, float]] = {}
        # the refresh under way per (session, user) in this process, shared by its requests
        self._lookups: dict[tuple[str, str], asyncio.Task[User | None]] = {}

    def __bool__(self) -> bool:
        return bool(self.providers)

    def provider_for(self, user_id: str) -> Provider | None:
        """The provider whose ids look like this one (the id rule makes it unique)."""
        for provider in self.providers.values():
            prefix = provider.config.id_prefix
            if prefix and user_id.startswith(prefix):
                return provider
        for provider in self.providers.values():
            if not provider.config.id_prefix:
                return provider  # the only source there is (gateway check saw to that)
        return None

    def reserved_prefixes(self) -> tuple[str, ...]:
        """Prefixes no password-source id may start with."""
        return tuple(p.config.id_prefix for p in self.providers.values() if p.config.id_prefix)

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()

    # -- grants ---------------------------------------------------------------------------

    async def remember(
        self, sid: str, provider: Provider, user: User, grant: Grant, expires: float
    ) -> None:
        """Keep the grant of a new session (sealed), and index it for back-channel logout."""
        await self.keep(sid, self.stored_grant(provider, user, grant), expires)

    def stored_grant(self, provider: Provider, user: User, grant: Grant) -> StoredGrant:
        """The grant as the store keeps it (a pending sign-in carries it to its session)."""
        return StoredGrant(
            provider=provider.name,
            user_id=user.id,
            roles=user.roles,
            sub=str(grant.claims.get("sub", "")),
            op_sid=str(grant.claims.get("sid") or ""),
            refresh_token=grant.refresh_token,
            access_token=grant.access_token,
            access_expires=grant.access_expires,
            id_token=grant.id_token,
            refreshed=self.clock(),
        )

    async def keep(self, sid: str, stored: StoredGrant, expires: float) -> None:
        """Keep a stored grant for session `sid`, indexed for back-channel logout."""
        await self._save(sid, stored, expires)
        now = self.clock()
        index = f"oidc-bcl:{stored.provider}"
        await self.store.put_record(f"{index}:sub:{_hash(stored.sub)}:{sid}", "1", now, expires)
        if stored.op_sid:
            await self.store.put_record(
                f"{index}:sid:{_hash(stored.op_sid)}:{sid}", "1", now, expires
            )

    async def _save(self, sid: str, stored: StoredGrant, expires: float | None) -> None:
        sealed = self.sealer.seal(stored.to_json(), "oidc-grant", sid)
        await self.store.put_record(f"oidc-grant:{sid}", sealed, self.clock(), expires)

    async def grant(self, sid: str) -> StoredGrant | None:
        value = await self.store.get_record(f"oidc-grant:{sid}", self.clock())
        if value is None:
            return None
        try:
            return StoredGrant.from_json(self.sealer.open(value, "oidc-grant", sid))
        except (SealError, ValueError, KeyError, TypeError):
            log.warning("oidc grant of session %s does not open: treated as none", sid[:8])
            return None

    async def forget(self, sid: str) -> None:
        """Drop a session's grant (its sign-out)."""
        self._access.pop(sid, None)
        await self.store.delete_record(f"oidc-grant:{sid}")

    # -- standing -------------------------------------------------------------------------

    async def lookup(self, user_id: str, sid: str) -> User | None:
        """The user now, asked of the provider with the session's refresh token; None when the
        provider refuses or a rule here does. StoreUnavailable when the provider is down."""
        key = (sid, user_id)
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup(user_id, sid))
            self._lookups[key] = task
            task.add_done_callback(lambda done: self._lookup_done(key, done))
        # shielded: a request that goes away does not cancel the refresh the others wait for
        return await asyncio.shield(task)

    def _lookup_done(self, key: tuple[str, str], task: asyncio.Task[User | None]) -> None:
        self._lookups.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter went away

    async def _lookup(self, user_id: str, sid: str) -> User | None:
        stored = await self.grant(sid)
        if stored is None or stored.user_id != user_id:
            return None
        provider = self.providers.get(stored.provider)
        if provider is None:
            return None  # the provider was taken out of the config
        if not stored.refresh_token or self._fresh(stored):
            return User(stored.user_id, stored.roles)
        lease = f"oidc-refresh:{sid}"
        hold = 2 * provider.config.timeout + 5  # the token call and userinfo, and some
        now = self.clock()
        if not await self.store.put_record(lease, "1", now, now + hold, only_new=True):
            return await self._refreshed_elsewhere(user_id, sid, stored, lease, hold)
        try:
            # read again under the lease: a refresh that ended just before it was taken has
            # used the refresh token read above (a rotating provider refuses it now)
            current = await self.grant(sid)
            if current is None or current.user_id != user_id:
                return None
            if current != stored or self._fresh(current):
                # refreshed by another request, worker or replica just now: its answer stands
                self._access.pop(sid, None)
                return User(current.user_id, current.roles)
            return await self._refresh(provider, current, user_id, sid)
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self.store.delete_record(lease)  # else it ends by itself after `hold`

    def _fresh(self, stored: StoredGrant) -> bool:
        """Asked of the provider less than `refresh` ago, its access token not about to end:
        the provider is asked once per `refresh` per session, however many replicas."""
        now = self.clock()
        ending = stored.access_expires and stored.access_expires - ACCESS_MARGIN <= now
        return now - stored.refreshed < self.refresh_every and not ending

    async def _refresh(
        self, provider: Provider, stored: StoredGrant, user_id: str, sid: str
    ) -> User | None:
        try:
            fresh = await provider.refresh(stored.refresh_token, stored.sub)
            user = user_from_claims(provider.config, fresh.claims)
        except TokenRefused as exc:
            log.info("oidc %s: refresh refused for %r: %s", provider.name, user_id, exc.reason)
            await self.forget(sid)  # so a request waiting on this refresh elsewhere learns it
            return None
        except NotAllowed as exc:
            log.info("oidc %s: %r no longer allowed: %s", provider.name, user_id, exc.code)
            await self.forget(sid)
            return None
        except ProviderUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        if user.id != user_id:
            await self.forget(sid)
            return None  # the claim that names them changed: another user now
        stored = replace(
            stored,
            roles=user.roles,
            refresh_token=fresh.refresh_token,
            access_token=fresh.access_token,
            access_expires=fresh.access_expires,
            id_token=fresh.id_token or stored.id_token,
            refreshed=self.clock(),
        )
        await self._save(sid, stored, await self._session_end(sid))
        self._access.pop(sid, None)
        return user

    async def _refreshed_elsewhere(
        self, user_id: str, sid: str, before: StoredGrant, lease: str, hold: float
    ) -> User | None:
        """Another worker or replica holds this session's refresh: wait for it, take its
        answer from the store (a new grant, none when refused; unchanged: it failed)."""
        deadline = time.monotonic() + hold
        while await self.store.get_record(lease, self.clock()) is not None:
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"oidc: the refresh of session {sid[:8]} is stuck")
            await asyncio.sleep(LEASE_POLL)
        after = await self.grant(sid)
        if after is None or after.user_id != user_id:
            return None
        if after == before and not self._fresh(after):
            # it did not go through, and did not end the grant: the provider was down
            raise StoreUnavailable(f"oidc: the refresh of session {sid[:8]} failed elsewhere")
        self._access.pop(sid, None)
        return User(after.user_id, after.roles)

    async def _session_end(self, sid: str) -> float | None:
        session = await self.store.get_session(sid)
        return session.expires if session is not None else None

    async def access_token(self, sid: str) -> str | None:
        """The provider's access token of this session for an upstream, refreshed shortly
        before it ends; None when the session has none (not from a provider) or it ended."""
        now = self.clock()
        cached = self._access.get(sid)
        if cached is not None and (cached[1] == 0 or cached[1] - ACCESS_MARGIN > now):
            return cached[0]
        stored = await self.grant(sid)
        if stored is None:
            return None
        if stored.access_expires and stored.access_expires - ACCESS_MARGIN <= now:
            if not stored.refresh_token or await self.lookup(stored.user_id, sid) is None:
                return None
            stored = await self.grant(sid)
            if stored is None:
                return None
        if len(self._access) >= _ACCESS_CACHE:
            self._access.clear()
        self._access[sid] = (stored.access_token, stored.access_expires)
        return stored.access_token

    # -- logout ---------------------------------------------------------------------------

    async def end_session_url(self, sid: str, post_logout_redirect_uri: str) -> str:
        """Where a sign-out continues at the provider (end_session = true), or ""."""
        stored = await self.grant(sid)
        if stored is None:
            return ""
        provider = self.providers.get(stored.provider)
        if provider is None or not provider.config.end_session:
            return ""
        try:
            return await provider.end_session_url(stored.id_token, post_logout_redirect_uri)
        except ProviderUnavailable:
            return ""

    async def sessions_of(self, provider: Provider, claims: dict[str, Any]) -> list[str]:
        """Our session ids a verified logout token names (by the provider's sid, else sub)."""
        now = self.clock()
        index = f"oidc-bcl:{provider.name}"
        op_sid, sub = claims.get("sid"), claims.get("sub")
        if isinstance(op_sid, str) and op_sid:
            prefix = f"{index}:sid:{_hash(op_sid)}:"
        else:
            prefix = f"{index}:sub:{_hash(str(sub))}:"
        found = await self.store.list_records(prefix, now)
        return [key[len(prefix) :] for key in found]
