"""`sqlite:///path`: the embedded default, shared by every worker on one machine.

One connection per process in WAL mode; calls run in a worker thread so a busy
database never stalls the event loop, and a busy timeout lets workers take turns.

Tables: sessions (sid PRIMARY KEY, user, created, last_seen, expires, revoked) + an index
on user; failures (key, at) + an index on both; lockouts (key PRIMARY KEY, until); records
(key PRIMARY KEY, value, expires NULL = never ends) + an index on expires. A record past its
end counts as absent at once; a write deletes such rows every few minutes (of the callers'
clock), listing them at once. `put_record(..., only_new=True)` runs in a BEGIN IMMEDIATE
transaction (one writer at a time across processes): it deletes the ended row of that key,
then inserts unless a row is there.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gateway.store.base import Session, StoreUnavailable, check_record, check_record_key

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user);
CREATE TABLE IF NOT EXISTS failures (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS failures_key ON failures (key, at);
CREATE TABLE IF NOT EXISTS lockouts (key TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NULL);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires);
"""
_SWEEP_EVERY = 300.0  # seconds of the callers' clock between deletions of ended records

_COLUMNS = "sid, user, created, last_seen, expires, revoked"


def _prepare(conn: sqlite3.Connection) -> None:
    """WAL mode and the schema; safe when several workers open a new file at the same moment."""
    conn.execute("PRAGMA busy_timeout = 10000")
    # switching to WAL needs the file to itself: a worker opening it at the same instant can
    # get "database is locked" at once, without the busy timeout, so try again for a while
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.02 + random.random() * 0.03)  # jitter only
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _session(row: tuple) -> Session:
    sid, user, created, last_seen, expires, revoked = row
    return Session(sid, user, created, last_seen, expires, bool(revoked))


class SqliteStore:
    """Sessions and counters in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._swept_at: float | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            try:
                _prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return work(self._connect())
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._call, work)

    async def create_session(self, session: Session) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    session.sid,
                    session.user,
                    session.created,
                    session.last_seen,
                    session.expires,
                    int(session.revoked),
                ),
            )

        await self._run(work)

    async def get_session(self, sid: str) -> Session | None:
        def work(db: sqlite3.Connection) -> Session | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE sid = ?",  # noqa: S608
                (sid,),
            ).fetchone()
            return _session(row) if row else None

        return await self._run(work)

    async def touch_session(self, sid: str, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE sessions SET last_seen = max(last_seen, ?) WHERE sid = ?", (now, sid)
            )
        )

    async def revoke_session(self, sid: str) -> bool:
        cursor = await self._run(
            lambda db: db.execute(
                "UPDATE sessions SET revoked = 1 WHERE sid = ? AND revoked = 0", (sid,)
            )
        )
        return cursor.rowcount > 0

    async def revoke_user_sessions(self, user: str) -> int:
        cursor = await self._run(
            lambda db: db.execute(
                "UPDATE sessions SET revoked = 1 WHERE user = ? AND revoked = 0", (user,)
            )
        )
        return cursor.rowcount

    async def list_sessions(self, user: str, now: float) -> list[Session]:
        def work(db: sqlite3.Connection) -> list[Session]:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM sessions WHERE user = ? ORDER BY created",  # noqa: S608
                (user,),
            ).fetchall()
            return [_session(row) for row in rows]

        return await self._run(work)

    async def add_failure(self, key: str, now: float, window: float) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM failures WHERE key = ? AND at <= ?", (key, now - window))
                db.execute("INSERT INTO failures (key, at) VALUES (?, ?)", (key, now))
                (count,) = db.execute(
                    "SELECT count(*) FROM failures WHERE key = ?", (key,)
                ).fetchone()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(count)

        return await self._run(work)

    async def clear_failures(self, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM failures WHERE key = ?", (key,)))

    async def set_lockout(self, key: str, until: float, now: float) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO lockouts (key, until) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET until = max(until, excluded.until)",
                (key, until),
            )
        )

    async def lockout_until(self, key: str, now: float) -> float | None:
        def work(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT until FROM lockouts WHERE key = ?", (key,)).fetchone()
            return row[0] if row and row[0] > now else None

        return await self._run(work)

    async def put_record(
        self, key: str, value: str, now: float, expires: float | None, *, only_new: bool = False
    ) -> bool:
        check_record(key, value, expires)

        def work(db: sqlite3.Connection) -> bool:
            sweep = self._swept_at is None or abs(now - self._swept_at) >= _SWEEP_EVERY
            db.execute("BEGIN IMMEDIATE")  # the write lock, held by one process at a time
            try:
                if sweep:
                    db.execute("DELETE FROM records WHERE expires <= ?", (now,))
                if only_new:
                    db.execute("DELETE FROM records WHERE key = ? AND expires <= ?", (key, now))
                    cursor = db.execute(
                        "INSERT INTO records (key, value, expires) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO NOTHING",
                        (key, value, expires),
                    )
                else:
                    cursor = db.execute(
                        "INSERT INTO records (key, value, expires) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET "
                        "value = excluded.value, expires = excluded.expires",
                        (key, value, expires),
                    )
                stored = cursor.rowcount > 0
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if sweep:
                self._swept_at = now
            return stored

        return await self._run(work)

    async def get_record(self, key: str, now: float) -> str | None:
        check_record_key(key)

        def work(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT value FROM records WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
            return row[0] if row else None

        return await self._run(work)

    async def delete_record(self, key: str) -> bool:
        check_record_key(key)
        # no `now` here: a row past its end that no sweep has deleted yet still counts
        cursor = await self._run(lambda db: db.execute("DELETE FROM records WHERE key = ?", (key,)))
        return cursor.rowcount > 0

    async def list_records(self, prefix: str, now: float) -> dict[str, str]:
        check_record_key(prefix, prefix=True)

        def work(db: sqlite3.Connection) -> dict[str, str]:
            db.execute("DELETE FROM records WHERE expires <= ?", (now,))
            # substr, not LIKE or GLOB: no character of the prefix is a wildcard
            rows = db.execute(
                "SELECT key, value FROM records WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
            return dict(rows)

        return await self._run(work)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(work)
