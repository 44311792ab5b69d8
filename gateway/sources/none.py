"""`users = "none"`: no password source; people sign in with an OpenID Connect provider."""

from __future__ import annotations

from gateway.config import Config
from gateway.sources.base import User


class NoUsers:
    """Knows nobody: the sign-in form is not shown and a password is never checked."""

    async def authenticate(self, username: str, password: str) -> User | None:
        return None

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        return None

    async def close(self) -> None:
        return None


def from_config(config: Config) -> NoUsers:
    return NoUsers()
