"""`memory://`: sessions, counters and records in this process only (tests, one process).

Records are a dictionary key -> (value, end time or None); an ended one is dropped when met.
"""

from __future__ import annotations

import dataclasses

from gateway.store.base import Session, check_record, check_record_key


class MemoryStore:
    """Plain dictionaries; nothing survives a restart and nothing is shared between workers."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}
        self._lockouts: dict[str, float] = {}
        self._records: dict[str, tuple[str, float | None]] = {}

    async def create_session(self, session: Session) -> None:
        self._sessions[session.sid] = session

    async def get_session(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    async def touch_session(self, sid: str, now: float) -> None:
        session = self._sessions.get(sid)
        if session is not None:
            self._sessions[sid] = dataclasses.replace(session, last_seen=now)

    async def revoke_session(self, sid: str) -> bool:
        session = self._sessions.get(sid)
        if session is None or session.revoked:
            return False
        self._sessions[sid] = dataclasses.replace(session, revoked=True)
        return True

    async def revoke_user_sessions(self, user: str) -> int:
        count = 0
        for sid, session in list(self._sessions.items()):
            if session.user == user and not session.revoked:
                self._sessions[sid] = dataclasses.replace(session, revoked=True)
                count += 1
        return count

    async def list_sessions(self, user: str, now: float) -> list[Session]:
        self._forget_expired(now)
        found = [s for s in self._sessions.values() if s.user == user and s.expires > now]
        return sorted(found, key=lambda s: s.created)

    async def add_failure(self, key: str, now: float, window: float) -> int:
        recent = [t for t in self._failures.get(key, []) if t > now - window]
        recent.append(now)
        self._failures[key] = recent
        return len(recent)

    async def clear_failures(self, key: str) -> None:
        self._failures.pop(key, None)

    async def set_lockout(self, key: str, until: float, now: float) -> None:
        self._lockouts[key] = max(until, self._lockouts.get(key, until))

    async def lockout_until(self, key: str, now: float) -> float | None:
        until = self._lockouts.get(key)
        if until is None or until <= now:
            self._lockouts.pop(key, None)
            return None
        return until

    async def put_record(
        self, key: str, value: str, now: float, expires: float | None, *, only_new: bool = False
    ) -> bool:
        check_record(key, value, expires)
        # no await before the write: one event loop, so the check and the write are atomic
        if only_new and self._live_record(key, now) is not None:
            return False
        self._records[key] = (value, expires)
        return True

    async def get_record(self, key: str, now: float) -> str | None:
        check_record_key(key)
        return self._live_record(key, now)

    async def delete_record(self, key: str) -> bool:
        check_record_key(key)
        # no `now` here: a record past its end that nothing has dropped yet still counts
        return self._records.pop(key, None) is not None

    async def list_records(self, prefix: str, now: float) -> dict[str, str]:
        check_record_key(prefix, prefix=True)
        for key in [k for k, (_, end) in self._records.items() if end is not None and end <= now]:
            del self._records[key]
        return {k: v for k, (v, _) in self._records.items() if k.startswith(prefix)}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _forget_expired(self, now: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[sid]

    def _live_record(self, key: str, now: float) -> str | None:
        found = self._records.get(key)
        if found is None:
            return None
        value, end = found
        if end is not None and end <= now:
            del self._records[key]
            return None
        return value
