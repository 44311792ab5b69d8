"""What every credential backend returns and offers."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Protocol

# one bound for every source: a password `gateway users add` takes can always sign in
MAX_PASSWORD_BYTES = 1024
# the ids of service accounts (gateway.auth.servicetokens): no source's user may have one
SERVICE_PREFIX = "service:"
# the longest user id any source may give (it travels in every token and X-User-Id)
MAX_USER_ID = 256


@dataclass(frozen=True)
class User:
    """An authenticated user: the id goes in `sub`, the roles in `roles`.

    `name` is what the source finds the user by again (`lookup`) when that is not the id.
    """

    id: str
    roles: tuple[str, ...] = field(default_factory=tuple)
    name: str = ""


@dataclass(frozen=True)
class WrongPassword:
    """A wrong password for the entry the name found, whose id is `user_id`.

    A source whose entries may be found by more than one spelling (an SQL collation, a
    directory's matching rules) returns this, so failures count against the entry whatever
    spelling was typed; a source whose ids are the canonical names may return None instead.
    """

    user_id: str


class UserBackend(Protocol):
    """Checks a username and password: the User, WrongPassword, or None (unknown user).

    `username` arrives canonical (canonical_username). A caller answers WrongPassword and
    None alike, so neither is revealed. A source that cannot be reached raises
    StoreUnavailable (gateway.store.base).
    """

    async def authenticate(self, username: str, password: str) -> User | WrongPassword | None: ...

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        """The user as the source has them now (current roles); None if removed or disabled.

        `name` is the User.name the source gave at sign-in ("" when it gave none).
        """
        ...

    async def close(self) -> None: ...


def encodable(text: str) -> bool:
    """False for text no store, driver or hash can take (JSON may carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_username(name: str) -> str:
    """The one spelling of a username for every source and limit: NFKC, trimmed, lower case."""
    return unicodedata.normalize("NFKC", name).strip().lower()
