"""The one small interface every store backend implements."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

RECORD_KEY_MAX = 200  # characters, each printable ASCII (0x21-0x7e)
RECORD_VALUE_MAX = 64 * 1024  # bytes of the value encoded as UTF-8
_RECORD_KEY = re.compile(r"[\x21-\x7e]*")


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error; callers fail closed."""


def check_record_key(key: object, *, prefix: bool = False) -> None:
    """ValueError unless `key` is 1-200 printable ASCII characters (a `prefix` may be empty)."""
    if not isinstance(key, str):
        raise ValueError("a record key is text")
    if not (0 if prefix else 1) <= len(key) <= RECORD_KEY_MAX:
        raise ValueError(f"a record key has 1 to {RECORD_KEY_MAX} characters")
    if not _RECORD_KEY.fullmatch(key):
        raise ValueError("a record key is printable ASCII (no spaces or control characters)")


def check_record(key: object, value: object, expires: object = None) -> None:
    """ValueError unless `key` is a record key, `value` text of at most 64 KiB as UTF-8 (no
    NUL: PostgreSQL's text cannot hold one) and `expires` None or a finite number."""
    check_record_key(key)
    if not isinstance(value, str):
        raise ValueError("a record value is text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("a record value is text that UTF-8 can encode") from None
    if size > RECORD_VALUE_MAX:
        raise ValueError(f"a record value has at most {RECORD_VALUE_MAX} bytes as UTF-8")
    if "\x00" in value:
        raise ValueError("a record value has no NUL character")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, (int, float))
        or not math.isfinite(expires)
    ):
        raise ValueError("a record's end time is None or a finite number of unix seconds")


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
    """Sessions, revocations, login-failure counters and small records.

    Every method may raise StoreUnavailable. Times are passed in (never read from
    the wall clock inside a backend) so tests can drive them.

    Records are short text values under a key, each with an optional end time: what the
    features beside sessions keep (service tokens, one-time codes used once, a big
    identity's roles). Keys are printable ASCII of at most 200 characters; values are text
    of at most 64 KiB. A record whose `expires` has passed (`expires <= now`) is gone for
    every method, whether or not the backend has deleted it yet; `expires = None` never ends.
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

    async def put_record(
        self, key: str, value: str, now: float, expires: float | None, *, only_new: bool = False
    ) -> bool:
        """Store `value` under `key` (replacing any); True when stored.

        With `only_new`, store it only when no live record has this key, atomically across
        workers and replicas: exactly one of several concurrent callers gets True (the rest
        False, nothing changed). This is how a one-time code is used once.
        """
        ...

    async def get_record(self, key: str, now: float) -> str | None: ...

    async def delete_record(self, key: str) -> bool:
        """Delete the record; True when one was there (possibly past its end, not yet cleaned
        up: a caller that cares about the end judges it from what it read)."""
        ...

    async def list_records(self, prefix: str, now: float) -> dict[str, str]:
        """Every live record whose key starts with `prefix` (for operator commands, not the
        hot path), key -> value."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
