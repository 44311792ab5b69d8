"""The store contract, run against every backend: memory, a real SQLite file, the real Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway.store import Session, Store, StoreUnavailable, open_store, sqlite_path
from tests.services import need, port_open

REDIS_DB = 13  # a database of the tests' own, flushed before each test
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
T0 = 1_800_000_000.0


def flush_redis() -> None:
    need("redis", port_open("127.0.0.1", 6379), "nothing listens on 127.0.0.1:6379")
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        flush_redis()
        url = REDIS_URL
    elif request.param == "sqlite":
        url = "sqlite:///store.db"
    else:
        url = "memory://"
    backend = open_store(url, tmp_path)
    yield backend
    await backend.close()


def session(sid: str, user: str = "alice", at: float = T0, life: float = 3600) -> Session:
    return Session(sid, user, at, at, at + life)


async def test_a_created_session_reads_back(store: Store):
    await store.create_session(session("s1"))
    assert await store.get_session("s1") == session("s1")
    assert await store.get_session("nope") is None


async def test_touch_moves_last_seen_only_of_an_existing_session(store: Store):
    await store.create_session(session("s1"))
    await store.touch_session("s1", T0 + 60)
    found = await store.get_session("s1")
    assert found is not None and found.last_seen == T0 + 60 and found.created == T0
    await store.touch_session("gone", T0 + 60)
    assert await store.get_session("gone") is None


async def test_revoke_one_session(store: Store):
    await store.create_session(session("s1"))
    await store.create_session(session("s2"))
    assert await store.revoke_session("s1") is True
    assert await store.revoke_session("s1") is False  # already revoked
    assert await store.revoke_session("missing") is False
    first, second = await store.get_session("s1"), await store.get_session("s2")
    assert first is not None and first.revoked
    assert second is not None and not second.revoked


async def test_revoke_every_session_of_a_user(store: Store):
    for sid in ("a1", "a2", "a3"):
        await store.create_session(session(sid))
    await store.create_session(session("b1", user="bob"))
    await store.revoke_session("a3")
    assert await store.revoke_user_sessions("alice") == 2
    for sid in ("a1", "a2", "a3"):
        found = await store.get_session(sid)
        assert found is not None and found.revoked
    bob = await store.get_session("b1")
    assert bob is not None and not bob.revoked


async def test_list_sessions_is_per_user_oldest_first_and_drops_expired(store: Store):
    await store.create_session(session("late", at=T0 + 10))
    await store.create_session(session("early", at=T0))
    await store.create_session(session("short", at=T0, life=5))
    await store.create_session(session("b1", user="bob"))
    listed = await store.list_sessions("alice", T0 + 20)
    assert [s.sid for s in listed] == ["early", "late"]


async def test_failures_count_within_the_window_only(store: Store):
    assert await store.add_failure("login:user:alice", T0, 60) == 1
    assert await store.add_failure("login:user:alice", T0 + 10, 60) == 2
    assert await store.add_failure("login:user:bob", T0 + 10, 60) == 1
    # the first failure has left the window by T0 + 61
    assert await store.add_failure("login:user:alice", T0 + 61, 60) == 2
    await store.clear_failures("login:user:alice")
    assert await store.add_failure("login:user:alice", T0 + 62, 60) == 1


async def test_lockout_holds_until_its_end(store: Store):
    assert await store.lockout_until("login:user:alice", T0) is None
    await store.set_lockout("login:user:alice", T0 + 900, T0)
    assert await store.lockout_until("login:user:alice", T0 + 899) == T0 + 900
    assert await store.lockout_until("login:user:alice", T0 + 900) is None
    assert await store.lockout_until("login:user:bob", T0) is None


async def test_a_shorter_lockout_does_not_shorten_a_longer_one(store: Store):
    await store.set_lockout("k", T0 + 900, T0)
    await store.set_lockout("k", T0 + 100, T0)
    assert await store.lockout_until("k", T0 + 500) == T0 + 900


async def test_ping(store: Store):
    await store.ping()


async def test_concurrent_failures_are_all_counted(store: Store):
    counts = await asyncio.gather(*(store.add_failure("k", T0 + i, 600) for i in range(20)))
    assert sorted(counts) == list(range(1, 21))


def test_sqlite_paths_are_relative_to_the_config(tmp_path: Path):
    assert sqlite_path("sqlite:///data/g.db", tmp_path) == tmp_path / "data" / "g.db"
    assert sqlite_path("sqlite:////var/lib/g.db", tmp_path) == Path("/var/lib/g.db")


async def test_redis_down_raises_store_unavailable(tmp_path: Path):
    from tests.conftest import closed_port

    backend = open_store(f"redis://127.0.0.1:{closed_port()}/0", tmp_path)
    with pytest.raises(StoreUnavailable):
        await backend.get_session("s1")
    with pytest.raises(StoreUnavailable):
        await backend.ping()
    await backend.close()


async def test_sqlite_unwritable_raises_store_unavailable(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    backend = open_store("sqlite:///file/store.db", tmp_path)
    with pytest.raises(StoreUnavailable):
        await backend.create_session(session("s1"))
    await backend.close()


def _hammer(path: str, worker: int, count: int) -> None:
    async def run() -> None:
        backend = open_store(f"sqlite:///{path}", Path("/"))
        for i in range(count):
            await backend.create_session(session(f"w{worker}-{i}"))
            await backend.add_failure("shared", T0 + i, 3600)
        await backend.close()

    asyncio.run(run())


def test_sqlite_shared_by_processes_loses_nothing(tmp_path: Path):
    db = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(db), w, 100)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0

    async def count() -> tuple[int, int]:
        backend = open_store(f"sqlite:///{db}", Path("/"))
        users = await backend.list_sessions("alice", T0)
        failures = await backend.add_failure("shared", T0 + 1000, 3600)
        await backend.close()
        return len(users), failures

    sessions, failures = asyncio.run(count())
    assert sessions == 400
    assert failures == 401
