"""Where sessions, revocations and login-failure counters live: pick a backend by URL."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import Session, Store, StoreUnavailable

__all__ = ["Session", "Store", "StoreUnavailable", "open_store", "sqlite_path"]


def sqlite_path(url: str, base_dir: Path) -> Path:
    """The file of a `sqlite:///path` URL; a relative path is relative to the config file."""
    raw = url.removeprefix("sqlite://")
    if raw.startswith("/"):
        raw = raw[1:]  # sqlite:///data/x.db → data/x.db (relative); sqlite:////abs → /abs
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


def open_store(url: str, base_dir: Path) -> Store:
    """The backend for `url`; connections are made lazily on first use."""
    if url.startswith("memory://"):
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite://"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url, base_dir))
    if url.startswith(("redis://", "rediss://")):
        from gateway.store.redis import RedisStore

        return RedisStore(url)
    raise ValueError(f"unknown store URL {url!r}")
