"""`users = "sql"`: check credentials against an app's existing user table, read-only.

The operator's query takes `:username` and returns id, password hash and roles (a
comma-separated string, an array, or nothing when `roles_query` supplies them one
row per role). Every connection is put in read-only mode where the database has
one, and every transaction is rolled back, so no write can reach that database.
Queries run on SQLAlchemy's connection pool in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event

from gateway.store.base import StoreUnavailable
from gateway.users.base import User
from gateway.users.hashes import UnknownHashFormat, burn_time, hash_format, verify_password

log = logging.getLogger("gateway.users")

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}
_READ_ONLY = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
}


def engine_url(dsn: str, base_dir: Path | None = None) -> sqlalchemy.URL:
    """The SQLAlchemy URL for a DSN: our drivers by default, sqlite paths relative to the config."""
    url = sqlalchemy.make_url(dsn)
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    if url.get_backend_name() == "sqlite" and url.database and base_dir is not None:
        path = Path(url.database)
        if not url.database.startswith("file:") and not path.is_absolute():
            url = url.set(database=str(base_dir / path))
    return url


def parse_roles(value: object) -> tuple[str, ...]:
    """Roles from a column: "a, b", ["a", "b"], or NULL."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: Sequence[object] = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        items = str(value).split(",")
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


class SqlUsers:
    """Credentials from an existing database, never written to."""

    def __init__(
        self,
        dsn: str,
        query: str,
        roles_query: str | None = None,
        *,
        allow_weak_hashes: bool = False,
        base_dir: Path | None = None,
    ) -> None:
        self.query = sqlalchemy.text(query)
        self.roles_query = sqlalchemy.text(roles_query) if roles_query else None
        self.allow_weak = allow_weak_hashes
        url = engine_url(dsn, base_dir)
        self.engine = sqlalchemy.create_engine(
            url, pool_pre_ping=True, pool_recycle=1800, future=True
        )
        self.backend = url.get_backend_name()
        statement = _READ_ONLY.get(self.backend)
        if statement is not None:
            event.listen(self.engine, "connect", _run_on_connect(statement))
        if allow_weak_hashes:
            log.warning(
                "auth.sql.allow_weak_hashes is on: salted SHA-1/MD5 password hashes are "
                "accepted; move those users to a strong hash"
            )

    def _lookup(self, username: str) -> tuple[str, str, tuple[str, ...]] | None:
        with self.engine.connect() as conn:
            try:
                rows = conn.execute(self.query, {"username": username}).fetchmany(2)
                if len(rows) != 1:
                    if rows:
                        log.warning("sql users: the query returned several rows for one user")
                    return None
                row = rows[0]
                if len(row) < 2:
                    log.error("sql users: the query must return id and password hash")
                    return None
                roles = parse_roles(row[2]) if len(row) > 2 else ()
                if self.roles_query is not None:
                    found = conn.execute(self.roles_query, {"username": username, "id": row[0]})
                    roles = parse_roles([r[0] for r in found])
                return str(row[0]), "" if row[1] is None else str(row[1]), roles
            finally:
                conn.rollback()

    def _check(self, username: str, password: str) -> User | None:
        try:
            found = self._lookup(username)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.error("sql users: database error: %s", exc.__class__.__name__)
            raise StoreUnavailable("users database unavailable") from exc
        if found is None:
            burn_time(password)
            return None
        user_id, stored, roles = found
        try:
            ok = verify_password(stored, password, allow_weak=self.allow_weak)
        except UnknownHashFormat as exc:
            log.warning(
                "sql users: login refused for %r: %s (format: %s)",
                user_id,
                exc,
                hash_format(stored),
            )
            return None
        return User(user_id, roles) if ok else None

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right, else None; StoreUnavailable if the db is down."""
        return await asyncio.to_thread(self._check, username, password)

    async def close(self) -> None:
        """Close the pool's connections."""
        await asyncio.to_thread(self.engine.dispose)


def _run_on_connect(statement: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if hasattr(dbapi_connection, "commit"):
            dbapi_connection.commit()

    return on_connect
