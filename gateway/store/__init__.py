"""Where sessions, revocations and login-failure counters live: pick a backend by URL.

The URL forms (parsed here, without importing a driver, so `gateway check` can judge them):

- `memory://`, `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`
- `redis://[[user]:password@]host[:port][/db]` and `rediss://...` (redis-py's own URL form)
- `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]` with the
  optional `?sentinel_username=...&sentinel_password=...` for the Sentinels themselves; the
  user and password before the `@` are for the data nodes (primary and replicas); a Sentinel
  without a port is on 26379
- `postgresql://...` or `postgres://...` (libpq's URL form, several hosts included) with the
  optional `?schema=name` (default `gateway`) naming the schema of the gateway's tables
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from gateway.store.base import Session, Store, StoreUnavailable

__all__ = [
    "SentinelURL",
    "Session",
    "Store",
    "StoreUnavailable",
    "check_url",
    "open_store",
    "parse_sentinel_url",
    "postgres_url",
    "sqlite_path",
]

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
POSTGRES_SCHEMES = ("postgresql", "postgres")
POSTGRES_SCHEMA = "gateway"
_SENTINEL_OPTIONS = {"sentinel_username", "sentinel_password"}
# a plain lower-case identifier: the same name quoted or not, and nothing to escape
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SCHEMES = ("memory", "sqlite", "redis", "rediss", SENTINEL_SCHEME, *POSTGRES_SCHEMES)


@dataclass(frozen=True)
class SentinelURL:
    """What a `redis+sentinel://` URL says: where the Sentinels are and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None  # for the data nodes
    password: str | None = None
    sentinel_username: str | None = None  # for the Sentinels
    sentinel_password: str | None = None


def _host_port(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to Sentinel's 26379."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("has a Sentinel address with an unclosed [IPv6] bracket")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("has an empty Sentinel host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("has a Sentinel port that is not a number from 1 to 65535")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a `redis+sentinel://` URL; ValueError (never quoting a password) if bad."""
    scheme, sep, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ValueError("is not a redis+sentinel:// URL")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text) or None
        password = (unquote(password_text) if colon else None) or None
    sentinels = tuple(_host_port(part.strip()) for part in hosts.split(",") if part.strip())
    if not sentinels:
        raise ValueError("names no Sentinel: redis+sentinel://host:26379[,host:port]/service")
    parts = [unquote(part) for part in path.split("/")] if path else []
    while parts and not parts[-1]:
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ValueError("names no service: redis+sentinel://host:26379/service[/db]")
    if len(parts) > 2:
        raise ValueError("has more than /service/db in its path")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError("has a database that is not a number (/service/db)")
        db = int(parts[1])
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _SENTINEL_OPTIONS:
            raise ValueError(
                f"has the unknown option {name[:30]!r} (known: sentinel_username, "
                "sentinel_password)"
            )
        options[name] = value
    return SentinelURL(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def postgres_url(url: str) -> tuple[str, str]:
    """The libpq URL (our `schema` option taken out) and the schema for the gateway's tables."""
    scheme, sep, _ = url.partition("://")
    if scheme not in POSTGRES_SCHEMES or not sep:
        raise ValueError("is not a postgresql:// (or postgres://) URL")
    parts = urlsplit(url)
    options = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in options if name == "schema"]
    schema = schemas[-1] if schemas else POSTGRES_SCHEMA
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            "has a schema that is not a lower-case name (letters, digits, _; at most 63)"
        )
    if schemas:
        kept = [(name, value) for name, value in options if name != "schema"]
        url = urlunsplit(parts._replace(query=urlencode(kept)))
    import psycopg.conninfo  # libpq's own parser, as the store uses it

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:  # its message may quote the password
        raise ValueError(
            "is not a URL libpq can read: postgresql://user:password@host:port/db?option=value"
            " (percent-encode special characters)"
        ) from None
    return url, schema


def check_url(url: str) -> None:
    """ValueError saying why `url` names no store this gateway can open (no password quoted)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            "is not memory://, sqlite:///path, redis://host:port/db, "
            "redis+sentinel://host:port[,host:port]/service[/db] or postgresql://..."
        )
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme in POSTGRES_SCHEMES:
        postgres_url(url)


def sqlite_path(url: str, base_dir: Path) -> Path:
    """The file of a `sqlite:///path` URL; a relative path is relative to the config file."""
    raw = url.removeprefix("sqlite://")
    if raw.startswith("/"):
        raw = raw[1:]  # sqlite:///data/x.db → data/x.db (relative); sqlite:////abs → /abs
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


def open_store(url: str, base_dir: Path) -> Store:
    """The backend for `url`; connections are made lazily on first use."""
    scheme = url.partition("://")[0]
    if url.startswith("memory://"):
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url, base_dir))
    if scheme in ("redis", "rediss", SENTINEL_SCHEME):
        from gateway.store.redis import RedisStore

        return RedisStore(url)
    if scheme in POSTGRES_SCHEMES:
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unknown store URL {url!r}")
