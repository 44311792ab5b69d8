"""Sign-in methods: turn what a user presents into a SignedIn identity, or a precise refusal.

A method asks one identity source (`gateway.sources`) and says how the user proved who they
are in `amr` (RFC 8176: "pwd", later "otp", "hwk"); the session and its tokens carry that list.
Methods know nothing of HTTP: the endpoints read the request and map the refusals to responses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.auth.limits import Busy, LoginLimiter
from gateway.sources.base import (
    MAX_USER_ID,
    SERVICE_PREFIX,
    UserBackend,
    WrongPassword,
    canonical_username,
)
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.signin")


@dataclass(frozen=True)
class SignedIn:
    """Who signed in, their roles, the source that vouched for them and how (`amr`)."""

    user_id: str
    roles: tuple[str, ...]
    source: str
    amr: tuple[str, ...]
    # what the source finds the user by again at refresh, when that is not user_id
    username: str = ""
    # the login-limit counters this sign-in counts under: the canonical name typed, and the
    # entry's id when another (PasswordSignIn.completed forgets their failures)
    limit_name: str = field(default="", compare=False)
    limit_account: str = field(default="", compare=False)


class SignInRefused(Exception):
    """No identity: `user` is the canonical name that was tried (for logs and counters)."""

    def __init__(self, user: str, detail: str) -> None:
        super().__init__(detail)
        self.user = user


class LockedOut(SignInRefused):
    """Too many failures for this user or address; not even the right password is checked."""

    def __init__(self, user: str, retry_after: int) -> None:
        super().__init__(user, f"locked out for {retry_after}s")
        self.retry_after = retry_after


class InvalidCredentials(SignInRefused):
    """An unknown user or a wrong password: one error for both, so neither is revealed."""

    def __init__(self, user: str) -> None:
        super().__init__(user, "invalid credentials")


class SourceUnavailable(SignInRefused):
    """The identity source could not answer; the message is the source's own reason."""


class PasswordSignIn:
    """A username and password, checked by the configured password source within the limits."""

    amr = ("pwd",)

    def __init__(
        self,
        source: UserBackend,
        source_name: str,
        limiter: LoginLimiter,
        provider_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.source = source
        self.source_name = source_name
        self.limiter = limiter
        # ids a password-source user may not have: a service's, a provider's (the id rule)
        self.reserved = (SERVICE_PREFIX, *provider_prefixes)

    async def sign_in(self, username: str, password: str, address: str) -> SignedIn:
        """The identity for these credentials from `address`, or a SignInRefused subclass."""
        # one spelling for the counters: "ALICE" and a fullwidth "alice" share one failure budget
        name = canonical_username(username)
        try:
            # one attempt per user at a time: each sees the failures of those before it
            async with self.limiter.turn(name, address):
                return await self._judge(name, password, address)
        except Busy:
            raise LockedOut(name, 1) from None

    async def _judge(self, name: str, password: str, address: str) -> SignedIn:
        wait = await self.limiter.retry_after(name, address)
        if wait is not None:
            raise LockedOut(name, wait)
        try:
            # every source is asked with the canonical name; an SQL collation or a directory's
            # matching rule may still find one entry by several names, hence `account` below
            user = await self.source.authenticate(name, password)
        except StoreUnavailable as exc:
            raise SourceUnavailable(name, str(exc)) from exc
        if user is None:
            await self.limiter.failed(name, address)
            raise InvalidCredentials(name)
        # the entry's own id, when another than the name: one failure budget for all its names
        account = user.user_id if isinstance(user, WrongPassword) else user.id
        account = "" if account == name else account
        if account:
            wait = await self.limiter.retry_after(name, address, account)
            if wait is not None:
                # locked by failures under another spelling: the right password waits, and a
                # wrong one gets the same answer (a 401 beside it would tell the two apart)
                raise LockedOut(name, wait)
        if isinstance(user, WrongPassword):
            await self.limiter.failed(name, address, account)
            raise InvalidCredentials(name)
        if user.id.startswith(self.reserved):
            # a service account's or a provider's id from a directory or a database: never
            # taken for theirs (README "Identities from several sources")
            log.warning("sign-in refused: source id %r has a reserved prefix", user.id[:80])
            raise InvalidCredentials(name)
        if len(user.id) > MAX_USER_ID or not user.id.isprintable():
            # a line break in an id from a database or a directory would split the X-User-Id
            # header the upstream receives into headers of the source's choosing
            log.warning("sign-in refused: source id %r is not one line of text", user.id[:80])
            raise InvalidCredentials(name)
        # the failures are forgotten by the caller once the sign-in is whole: a password right
        # while a second factor is due must not reset the count of wrong codes (a thief who
        # holds the password could otherwise guess codes forever, two at a time)
        return SignedIn(
            user.id, tuple(user.roles), self.source_name, self.amr, user.name, name, account
        )

    async def completed(self, signed: SignedIn) -> None:
        """The sign-in is whole (no second factor due): its earlier failures are forgotten."""
        await self.limiter.succeeded(signed.limit_name, signed.limit_account)
