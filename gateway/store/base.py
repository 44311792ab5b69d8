"""The one small interface every store backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error; callers fail closed."""


@dataclass(frozen=True)
class Session:
    """A login session: the token's `sid` points at one of these."""

    sid: str
    user: str
    created: float  # unix seconds
    last_seen: float  # unix seconds, updated at token re-issue
    expires: float  # unix seconds: created + max_age; the store may forget it after this
    revoked: bool = False


class Store(Protocol):
    """Sessions, revocations and login-failure counters.

    Every method may raise StoreUnavailable. Times are passed in (never read from
    the wall clock inside a backend) so tests can drive them.
    """

    async def create_session(self, session: Session) -> None: ...

    async def get_session(self, sid: str) -> Session | None: ...

    async def touch_session(self, sid: str, now: float) -> None: ...

    async def revoke_session(self, sid: str) -> bool: ...

    async def revoke_user_sessions(self, user: str) -> int: ...

    async def list_sessions(self, user: str, now: float) -> list[Session]: ...

    async def add_failure(self, key: str, now: float, window: float) -> int: ...

    async def clear_failures(self, key: str) -> None: ...

    async def set_lockout(self, key: str, until: float, now: float) -> None: ...

    async def lockout_until(self, key: str, now: float) -> float | None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
