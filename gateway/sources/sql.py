"""`users = "sql"`: check credentials against an app's existing user table, read-only.

The operator's query takes `:username` and returns id, password hash and roles (a
comma-separated string, an array, a JSON array, or nothing when `roles_query` supplies
them one row per role; `roles_query` may use `:username` and `:id`). Every connection is
opened read-only where the database can say so (SQLite `mode=ro` plus `query_only`,
PostgreSQL `BEGIN READ ONLY` for every transaction, MySQL/MariaDB a read-only session),
and every transaction is rolled back, so no write can reach that database. Queries run
on SQLAlchemy's connection pool in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event

from gateway.config import Config
from gateway.sources.base import User, WrongPassword, encodable
from gateway.sources.hashes import UnknownHashFormat, burn_time, hash_format, verify_password
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.users")

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}
_ON_CONNECT = {
    "sqlite": ("PRAGMA query_only = ON",),
    "postgresql": (
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        # a slow query must not hold a login thread for ever
        "SET statement_timeout = '10s'",
    ),
    "mysql": ("SET SESSION TRANSACTION READ ONLY",),
}
# the driver's own timeouts, unless the DSN sets them: a dead host must not hang a login
_TIMEOUTS = {
    "postgresql": {"connect_timeout": 10},
    "mysql": {"connect_timeout": 10, "read_timeout": 10, "write_timeout": 10},
}


def engine_url(dsn: str, base_dir: Path | None = None) -> sqlalchemy.URL:
    """The SQLAlchemy URL for a DSN: our drivers by default, SQLite files opened read-only.

    A relative SQLite path is relative to `base_dir` (the config file's folder).
    """
    url = sqlalchemy.make_url(dsn)
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername])
    database = url.database
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        if not database.startswith("file:"):
            path = Path(database)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            # mode=ro: never create a missing file, never write an existing one
            query = {**url.query, "uri": "true"}
            url = url.set(database=path.absolute().as_uri() + "?mode=ro", query=query)
    return url


def parse_roles(value: object) -> tuple[str, ...]:
    """Roles from a column: "a, b", ["a", "b"], '["a", "b"]' (JSON), or NULL."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "replace")
    if value is None:
        return ()
    items: Sequence[object]
    if isinstance(value, str):
        items = value.split(",")
        if value.lstrip().startswith("["):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = None
            if isinstance(decoded, list):
                items = decoded
    elif isinstance(value, list | tuple):
        items = value
    else:
        items = str(value).split(",")
    roles = (_text(item).strip() for item in items if item is not None)
    # a role ends up in an upstream header: a control character there would split it
    return tuple(dict.fromkeys(r for r in roles if r and r.isprintable() and len(r) <= 256))


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


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
        self.backend = url.get_backend_name()
        connect_args = {
            key: value
            for key, value in _TIMEOUTS.get(self.backend, {}).items()
            if key not in url.query
        }
        self.engine = sqlalchemy.create_engine(
            url, pool_pre_ping=True, pool_recycle=1800, connect_args=connect_args
        )
        event.listen(
            self.engine,
            "connect",
            _read_only_on_connect(
                _ON_CONNECT.get(self.backend, ()), per_transaction=self.backend == "postgresql"
            ),
        )
        if self.backend not in _ON_CONNECT:
            log.warning(
                "auth.sql.dsn: the gateway cannot make a %s connection read-only; give it a "
                "database account that may only read",
                self.backend,
            )
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
                if len(row) < 2 or row[0] is None:
                    log.error("sql users: the query must return an id and a password hash")
                    return None
                roles = parse_roles(row[2]) if len(row) > 2 else ()
                if self.roles_query is not None:
                    found = conn.execute(self.roles_query, {"username": username, "id": row[0]})
                    roles = parse_roles([r[0] for r in found])
                return _text(row[0]), _text(row[1]).strip(), roles
            finally:
                conn.rollback()

    def _check(self, username: str, password: str) -> User | WrongPassword | None:
        # no database stores a NUL or a lone surrogate in a name; PostgreSQL would error on it
        if "\x00" in username or not encodable(username):
            burn_time(password)
            return None
        try:
            found = self._lookup(username)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.error("sql users: database error: %s", _reason(exc))
            raise StoreUnavailable("users database unavailable") from exc
        if found is None:
            burn_time(password)
            return None
        user_id, stored, roles = found
        if not stored:
            log.warning("sql users: login refused for %r: no password hash stored", user_id)
            burn_time(password)
            return None
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
        return User(user_id, roles, username) if ok else WrongPassword(user_id)

    def _current(self, user_id: str, username: str) -> User | None:
        if "\x00" in username or not encodable(username):
            return None
        try:
            found = self._lookup(username)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.error("sql users: database error: %s", _reason(exc))
            raise StoreUnavailable("users database unavailable") from exc
        # the name now belongs to another row (renamed, re-created): not this session's user
        if found is None or found[0] != user_id:
            return None
        return User(user_id, found[2], username)

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        """The row the query finds now for the name signed in with, if it still has this id."""
        return await asyncio.to_thread(self._current, user_id, name or user_id)

    async def authenticate(self, username: str, password: str) -> User | WrongPassword | None:
        """The user if the password is right, WrongPassword or None (unknown) if not.

        StoreUnavailable if the database is down.
        """
        return await asyncio.to_thread(self._check, username, password)

    async def close(self) -> None:
        """Close the pool's connections."""
        await asyncio.to_thread(self.engine.dispose)


def _reason(exc: sqlalchemy.exc.SQLAlchemyError) -> str:
    """The driver's message, first line only (never the DSN, so never its password)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{cause.__class__.__name__}: {lines[0] if lines else ''}"


def _read_only_on_connect(statements: Sequence[str], *, per_transaction: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        if per_transaction:
            # psycopg then opens every transaction with BEGIN READ ONLY, whatever the session says
            dbapi_connection.read_only = True
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()
        dbapi_connection.commit()

    return on_connect


def from_config(config: Config) -> SqlUsers:
    """The `users = "sql"` source: the `[auth.sql]` query against an existing database."""
    sql = config.auth.sql
    return SqlUsers(
        sql.dsn,
        sql.query,
        sql.roles_query or None,
        allow_weak_hashes=sql.allow_weak_hashes,
        base_dir=config.base_dir,
    )
