"""`postgresql://user@host/db`: for teams that run PostgreSQL and no Redis.

psycopg 3's asyncio connection pool (psycopg-pool), so the hot path never leaves the event
loop. The tables live in their own schema (`?schema=name`, default `gateway`), made on first
use when missing, under an advisory lock so that workers starting together take turns:

    sessions (sid text PRIMARY KEY, username text, created, last_seen, expires float8,
              revoked boolean)  + indexes on username and expires
    failures (key text, at float8, forget_after float8)  + indexes on (key, at), forget_after
    lockouts (key text PRIMARY KEY, until float8)
    records (key text PRIMARY KEY, value text, expires float8 NULL = never ends)
             + an index on expires

Times are unix seconds from the caller, as in every store. Failures of one key are counted
under a transaction-scoped advisory lock on that key, so concurrent failures each get their
own count. A record past its end counts as absent at once; `put_record(..., only_new=True)`
is one `INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE` the row there has ended, so of
concurrent callers exactly one stores. Every few minutes (of the callers' clock) a write also
deletes the sessions, failures, lockouts and records nobody can use any more.

libpq's URL form applies: `?sslmode=verify-full`, several hosts with
`target_session_attrs=read-write` for a primary that moves, `connect_timeout`, and so on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from gateway.store import postgres_url
from gateway.store.base import Session, StoreUnavailable, check_record, check_record_key

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]

_TIMEOUT = 2.0  # seconds to get a connection or to answer a statement; then it counts as down
_DEADLINE = 2 * _TIMEOUT + 1.0  # the most one call may take, connection included
_SWEEP_EVERY = 300.0  # seconds of the callers' clock between deletions of expired rows
_POOL_MAX = 10  # connections per process
_LOCK_CLASS = 0x67617465  # "gate": the first key of the gateway's advisory locks
_LOCK_SCHEMA, _LOCK_FAILURES = 1, 2  # the second key's kinds (hashed with the name)

_TABLES = ("sessions", "failures", "lockouts", "records")
_DDL = (
    """CREATE TABLE IF NOT EXISTS {schema}.sessions (
        sid text PRIMARY KEY,
        username text NOT NULL,
        created double precision NOT NULL,
        last_seen double precision NOT NULL,
        expires double precision NOT NULL,
        revoked boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_username ON {schema}.sessions (username)",
    "CREATE INDEX IF NOT EXISTS sessions_expires ON {schema}.sessions (expires)",
    """CREATE TABLE IF NOT EXISTS {schema}.failures (
        key text NOT NULL,
        at double precision NOT NULL,
        forget_after double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS failures_key ON {schema}.failures (key, at)",
    "CREATE INDEX IF NOT EXISTS failures_forget ON {schema}.failures (forget_after)",
    """CREATE TABLE IF NOT EXISTS {schema}.lockouts (
        key text PRIMARY KEY,
        until double precision NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.records (
        key text PRIMARY KEY,
        value text NOT NULL,
        expires double precision NULL
    )""",
    "CREATE INDEX IF NOT EXISTS records_expires ON {schema}.records (expires)",
)
_COLUMNS = "sid, username, created, last_seen, expires, revoked"


def _session(row: tuple) -> Session:
    sid, user, created, last_seen, expires, revoked = row
    return Session(sid, user, created, last_seen, expires, bool(revoked))


class PostgresStore:
    """Sessions and counters in PostgreSQL tables of the gateway's own schema."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conninfo, self.schema = postgres_url(url)
        given = conninfo_to_dict(self._conninfo)
        # the URL's own settings win; these only fill in what it leaves open
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in given:
            self._connect_kwargs["connect_timeout"] = max(2, round(_TIMEOUT))
        if "application_name" not in given:
            self._connect_kwargs["application_name"] = "gateway"
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._ready = False  # the schema is known to exist
        self._opening = asyncio.Lock()
        self._swept_at: float | None = None
        self._q: dict[str, sql.Composed] = {}

    # -- plumbing -----------------------------------------------------------------------

    def q(self, text: str) -> sql.Composed:
        """A statement with `{schema}` (quoted) and `{columns}` (of sessions) filled in, once."""
        statement = self._q.get(text)
        if statement is None:
            # `text` is always one of this module's constants, never a value from outside
            statement = sql.SQL(text).format(
                schema=sql.Identifier(self.schema), columns=sql.SQL(_COLUMNS)
            )
            self._q[text] = statement
        return statement

    @staticmethod
    async def _configure(conn: Conn) -> None:
        # a statement stuck on a lock or a slow server must not hold a request for long
        await conn.execute(f"SET statement_timeout = {int(_TIMEOUT * 1000)}")

    async def _open(self) -> AsyncConnectionPool[Conn]:
        if self._pool is not None and self._ready:
            return self._pool
        async with self._opening:
            if self._pool is None:
                pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                    self._conninfo,
                    kwargs=self._connect_kwargs,
                    min_size=1,
                    max_size=_POOL_MAX,
                    open=False,
                    configure=self._configure,
                    # a connection that died with its server is replaced, not handed out
                    check=AsyncConnectionPool.check_connection,
                    timeout=_TIMEOUT,
                    name="gateway-store",
                )
                await pool.open(wait=False)
                self._pool = pool
            if not self._ready:
                async with self._pool.connection() as conn:
                    await self._create_schema(conn)
                self._ready = True
        return self._pool

    async def _create_schema(self, conn: Conn) -> None:
        """The schema and tables, if missing; needs CREATE rights only when something is."""
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s) # %s)",
                (_LOCK_CLASS, self.schema, _LOCK_SCHEMA),
            )
            names = [f"{self.schema}.{table}" for table in _TABLES]
            cursor = await conn.execute(
                "SELECT count(to_regclass(name)) FROM unnest(%s::text[]) AS name", (names,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == len(_TABLES):
                return
            cursor = await conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            )
            if await cursor.fetchone() is None:
                await conn.execute(self.q("CREATE SCHEMA {schema}"))
            for statement in _DDL:
                await conn.execute(self.q(statement))

    async def _run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(_DEADLINE):
                pool = await self._open()
                async with pool.connection() as conn:
                    return await work(conn)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"postgresql: {exc or type(exc).__name__}") from exc

    async def _sweep_if_due(self, conn: Conn, now: float) -> None:
        """Delete what nobody can use any more, at most once per _SWEEP_EVERY of `now`."""
        if self._swept_at is not None and abs(now - self._swept_at) < _SWEEP_EVERY:
            return
        self._swept_at = now
        await conn.execute(self.q("DELETE FROM {schema}.sessions WHERE expires <= %s"), (now,))
        await conn.execute(self.q("DELETE FROM {schema}.failures WHERE forget_after <= %s"), (now,))
        await conn.execute(self.q("DELETE FROM {schema}.lockouts WHERE until <= %s"), (now,))
        await conn.execute(self.q("DELETE FROM {schema}.records WHERE expires <= %s"), (now,))

    # -- sessions -----------------------------------------------------------------------

    async def create_session(self, session: Session) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                self.q("INSERT INTO {schema}.sessions ({columns}) VALUES (%s, %s, %s, %s, %s, %s)"),
                (
                    session.sid,
                    session.user,
                    session.created,
                    session.last_seen,
                    session.expires,
                    session.revoked,
                ),
            )
            await self._sweep_if_due(conn, session.created)

        await self._run(work)

    async def get_session(self, sid: str) -> Session | None:
        async def work(conn: Conn) -> Session | None:
            cursor = await conn.execute(
                self.q("SELECT {columns} FROM {schema}.sessions WHERE sid = %s"), (sid,)
            )
            row = await cursor.fetchone()
            return _session(row) if row else None

        return await self._run(work)

    async def touch_session(self, sid: str, now: float) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                self.q(
                    "UPDATE {schema}.sessions SET last_seen = greatest(last_seen, %s) "
                    "WHERE sid = %s"
                ),
                (now, sid),
            )

        await self._run(work)

    async def revoke_session(self, sid: str) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                self.q(
                    "UPDATE {schema}.sessions SET revoked = true WHERE sid = %s AND NOT revoked"
                ),
                (sid,),
            )
            return cursor.rowcount > 0

        return await self._run(work)

    async def revoke_user_sessions(self, user: str) -> int:
        async def work(conn: Conn) -> int:
            cursor = await conn.execute(
                self.q(
                    "UPDATE {schema}.sessions SET revoked = true "
                    "WHERE username = %s AND NOT revoked"
                ),
                (user,),
            )
            return cursor.rowcount

        return await self._run(work)

    async def list_sessions(self, user: str, now: float) -> list[Session]:
        async def work(conn: Conn) -> list[Session]:
            await conn.execute(
                self.q("DELETE FROM {schema}.sessions WHERE username = %s AND expires <= %s"),
                (user, now),
            )
            cursor = await conn.execute(
                self.q(
                    "SELECT {columns} FROM {schema}.sessions "
                    "WHERE username = %s AND expires > %s ORDER BY created, sid"
                ),
                (user, now),
            )
            return [_session(row) for row in await cursor.fetchall()]

        return await self._run(work)

    # -- login failures and lockouts ----------------------------------------------------

    async def add_failure(self, key: str, now: float, window: float) -> int:
        async def work(conn: Conn) -> int:
            async with conn.transaction():
                # one transaction per key at a time: each failure sees all earlier ones
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s) # %s)",
                    (_LOCK_CLASS, f"{self.schema}:{key}", _LOCK_FAILURES),
                )
                await conn.execute(
                    self.q("DELETE FROM {schema}.failures WHERE key = %s AND at <= %s"),
                    (key, now - window),
                )
                await conn.execute(
                    self.q(
                        "INSERT INTO {schema}.failures (key, at, forget_after) VALUES (%s, %s, %s)"
                    ),
                    (key, now, now + window),
                )
                cursor = await conn.execute(
                    self.q("SELECT count(*) FROM {schema}.failures WHERE key = %s"), (key,)
                )
                row = await cursor.fetchone()
            await self._sweep_if_due(conn, now)
            return int(row[0]) if row else 0

        return await self._run(work)

    async def clear_failures(self, key: str) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(self.q("DELETE FROM {schema}.failures WHERE key = %s"), (key,))

        await self._run(work)

    async def set_lockout(self, key: str, until: float, now: float) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                self.q(
                    "INSERT INTO {schema}.lockouts AS l (key, until) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET until = greatest(l.until, excluded.until)"
                ),
                (key, until),
            )

        await self._run(work)

    async def lockout_until(self, key: str, now: float) -> float | None:
        async def work(conn: Conn) -> float | None:
            cursor = await conn.execute(
                self.q("SELECT until FROM {schema}.lockouts WHERE key = %s"), (key,)
            )
            row = await cursor.fetchone()
            return float(row[0]) if row and row[0] > now else None

        return await self._run(work)

    # -- records ------------------------------------------------------------------------

    async def put_record(
        self, key: str, value: str, now: float, expires: float | None, *, only_new: bool = False
    ) -> bool:
        check_record(key, value, expires)
        # with only_new a row there is replaced only when it has ended: the conflicting row is
        # locked and its newest version judged, so concurrent callers cannot both store
        statement = (
            "INSERT INTO {schema}.records AS r (key, value, expires) VALUES (%s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
        )
        params: tuple[Any, ...] = (key, value, expires)
        if only_new:
            statement += " WHERE r.expires IS NOT NULL AND r.expires <= %s"
            params = (*params, now)

        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(self.q(statement), params)
            stored = cursor.rowcount > 0
            await self._sweep_if_due(conn, now)
            return stored

        return await self._run(work)

    async def get_record(self, key: str, now: float) -> str | None:
        check_record_key(key)

        async def work(conn: Conn) -> str | None:
            cursor = await conn.execute(
                self.q(
                    "SELECT value FROM {schema}.records "
                    "WHERE key = %s AND (expires IS NULL OR expires > %s)"
                ),
                (key, now),
            )
            row = await cursor.fetchone()
            return row[0] if row else None

        return await self._run(work)

    async def delete_record(self, key: str) -> bool:
        check_record_key(key)

        async def work(conn: Conn) -> bool:
            # no `now` here: a row past its end that no sweep has deleted yet still counts
            cursor = await conn.execute(
                self.q("DELETE FROM {schema}.records WHERE key = %s"), (key,)
            )
            return cursor.rowcount > 0

        return await self._run(work)

    async def list_records(self, prefix: str, now: float) -> dict[str, str]:
        check_record_key(prefix, prefix=True)

        async def work(conn: Conn) -> dict[str, str]:
            # left(), not LIKE: no character of the prefix is a wildcard
            cursor = await conn.execute(
                self.q(
                    "SELECT key, value FROM {schema}.records "
                    "WHERE left(key, %s) = %s AND (expires IS NULL OR expires > %s) ORDER BY key"
                ),
                (len(prefix), prefix, now),
            )
            return dict(await cursor.fetchall())

        return await self._run(work)

    # -- health -------------------------------------------------------------------------

    async def ping(self) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        await self._run(work)

    async def close(self) -> None:
        pool, self._pool, self._ready = self._pool, None, False
        if pool is not None:
            try:
                await pool.close()
            except (psycopg.Error, OSError):
                pass
