"""Session lifecycle: create, decide re-issue, check against the store, revoke."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from gateway.config import SessionConfig
from gateway.store.base import Session, Store

# strict mode remembers a session's good standing this long in each process, so a
# revocation made elsewhere takes effect within this many seconds (stated in the README)
STRICT_CACHE_SECONDS = 1.0
_CACHE_LIMIT = 10_000


class Sessions:
    """Sessions in the store, judged with the configured lifetimes and an injectable clock."""

    def __init__(self, store: Store, config: SessionConfig, clock: Callable[[], float]) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._good_until: dict[str, float] = {}

    async def create(self, user: str) -> Session:
        """Start a session for a user who just logged in."""
        now = self.clock()
        session = Session(
            sid=secrets.token_urlsafe(24),
            user=user,
            created=now,
            last_seen=now,
            expires=now + self.config.max_age,
        )
        await self.store.create_session(session)
        return session

    def reissue_due(self, iat: float, exp: float) -> bool:
        """True once a token is past half its life (or expired)."""
        return self.clock() >= iat + (exp - iat) / 2

    def alive(self, session: Session | None) -> bool:
        """Not revoked, within max_age and within idle_timeout of its last use."""
        if session is None or session.revoked:
            return False
        now = self.clock()
        return now < session.expires and now - session.last_seen < self.config.idle_timeout

    async def check(self, sid: str, user: str) -> Session | None:
        """The live session with this id for this user, or None (revoked, expired, idle, gone)."""
        session = await self.store.get_session(sid)
        if session is None or session.user != user or not self.alive(session):
            self._good_until.pop(sid, None)
            return None
        return session

    async def check_strict(self, sid: str, user: str) -> bool:
        """Per-request check for `revocation = "strict"`, with a short in-process cache."""
        now = self.clock()
        if self._good_until.get(sid, 0.0) > now:
            return True
        if await self.check(sid, user) is None:
            return False
        if len(self._good_until) >= _CACHE_LIMIT:
            self._good_until.clear()
        self._good_until[sid] = now + STRICT_CACHE_SECONDS
        return True

    async def touch(self, sid: str) -> None:
        """Record use at re-issue: this is what idle_timeout measures."""
        await self.store.touch_session(sid, self.clock())

    async def revoke(self, sid: str) -> bool:
        """Revoke one session (logout)."""
        self._good_until.pop(sid, None)
        return await self.store.revoke_session(sid)

    async def revoke_user(self, user: str) -> int:
        """Revoke every session of a user (log out everywhere)."""
        self._good_until.clear()
        return await self.store.revoke_user_sessions(user)
