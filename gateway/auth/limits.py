"""Login limits: failure counters per user and per client address, lockout, kept in the store."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from gateway.config import LoginLimitsConfig
from gateway.store.base import Store, StoreUnavailable

log = logging.getLogger("gateway.limits")

# one address may try several accounts (an office behind NAT), so it gets a wider budget
ADDRESS_FACTOR = 4
# attempts of one address judged at once (an office behind NAT signs in together): the address
# budget can be overrun by fewer than this many
ADDRESS_TURNS = 16
# seconds a turn is held at most: the turn of a worker that died mid-attempt, or one the store
# lost in a failover before it was given back, is free again after this (an attempt slower
# than this shares its user's turn with the next)
TURN_TTL = 5.0
# seconds an attempt waits for its turn before it is refused as busy (429)
TURN_WAIT = 20.0


class Busy(Exception):
    """Another attempt for this user (or too many for this address) is being judged now."""


def _digest(text: str) -> str:
    # record keys are printable ASCII: a name or an address stands in them as a digest
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginLimiter:
    """Counts failed logins in the store, so every worker and replica shares the same counts."""

    def __init__(self, store: Store, config: LoginLimitsConfig, clock: Callable[[], float]) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        return f"login:user:{username}", f"login:addr:{address}"

    @staticmethod
    def _account_key(account: str) -> str:
        return f"login:account:{account}"

    async def retry_after(self, username: str, address: str, account: str = "") -> int | None:
        """Seconds until this user, address or account may try again; None when not locked.

        `account` is the id of the entry a source found for the name, when that differs; no
        `username` (a passkey no user owns): the address alone.
        """
        now = self.clock()
        until = 0.0
        user_key, addr_key = self._keys(username, address)
        keys = ([user_key] if username else []) + [addr_key]
        if account:
            keys.append(self._account_key(account))
        for key in keys:
            locked = await self.store.lockout_until(key, now)
            if locked is not None:
                until = max(until, locked)
        return max(1, math.ceil(until - now)) if until > now else None

    async def failed(self, username: str, address: str, account: str = "") -> None:
        """Record a failure for the user, the address and the account; lock out past the limit.

        `account` (the id of the entry the source found, when not the name) shares one budget
        among every spelling of a name that a source matches to the same entry. No `username`
        (a passkey no user owns): the address alone.
        """
        now = self.clock()
        user_key, addr_key = self._keys(username, address)
        window = self.config.window
        user_keys = ([user_key] if username else []) + (
            [self._account_key(account)] if account else []
        )
        for key in user_keys:
            if await self.store.add_failure(key, now, window) >= self.config.max_failures:
                await self.store.set_lockout(key, now + self.config.lockout, now)
        limit = self.config.max_failures * ADDRESS_FACTOR
        if await self.store.add_failure(addr_key, now, window) >= limit:
            await self.store.set_lockout(addr_key, now + self.config.lockout, now)

    @asynccontextmanager
    async def turn(self, username: str, address: str) -> AsyncIterator[None]:
        """Judge one attempt at a time per user, and at most ADDRESS_TURNS at once per address.

        The limits are checked before an attempt and its failure counted after it: requests
        sent in parallel would all pass the check before the first failure is counted (300
        codes against a limit of 3). Inside a turn, each attempt sees every earlier one's
        failure. Raises Busy when the turn does not come within TURN_WAIT. No `username` (a
        passkey no user owns yet): the address alone.
        """
        held: list[str] = []
        try:
            if username:
                held.append(await self._take([f"login:turn:user:{_digest(username)}"]))
            slots = [f"login:turn:addr:{_digest(address)}:{i}" for i in range(ADDRESS_TURNS)]
            held.append(await self._take(slots))
            yield
        finally:
            for key in held:
                try:
                    await self.store.delete_record(key)
                except StoreUnavailable:
                    # the attempt's own outcome stands; the turn frees itself after TURN_TTL
                    log.warning("login limits: a turn could not be given back (store down)")

    async def _take(self, keys: list[str]) -> str:
        """The first of `keys` free (atomically, across workers and replicas), waiting for one."""
        deadline = time.monotonic() + TURN_WAIT
        pause = 0.005
        while True:
            now = self.clock()
            for key in keys:
                if await self.store.put_record(key, "1", now, now + TURN_TTL, only_new=True):
                    return key
            if time.monotonic() >= deadline:
                raise Busy
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def succeeded(self, username: str, account: str = "") -> None:
        """A good login forgets the user's and account's earlier failures (not the address's)."""
        await self.store.clear_failures(self._keys(username, "")[0])
        if account:
            await self.store.clear_failures(self._account_key(account))
