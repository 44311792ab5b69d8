"""The long-lived parts of one running gateway, built once by app.py and shared by the steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.cookies import CookieJar
from gateway.core.nexthop import NextHop
from gateway.limits import LoginLimiter
from gateway.sessions import Sessions
from gateway.store.base import Store
from gateway.tokens import Keyring, Tokens
from gateway.users.base import UserBackend


@dataclass
class Runtime:
    """Config plus the objects built from it: keys, tokens, store, sessions, users, limits and
    the next-hop headers."""

    config: Config
    clock: Callable[[], float]
    keyring: Keyring
    tokens: Tokens
    store: Store
    sessions: Sessions
    users: UserBackend
    cookies: CookieJar
    limiter: LoginLimiter
    nexthop: NextHop
