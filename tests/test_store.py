"""The store contract, run against every backend: memory, a real SQLite file, the real Redis,
Redis behind a Sentinel of the tests' own, and PostgreSQL (a schema per test, dropped after)."""

from __future__ import annotations

import asyncio
import multiprocessing
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import redis

from gateway.store import (
    SentinelURL,
    Session,
    Store,
    StoreUnavailable,
    check_url,
    open_store,
    parse_sentinel_url,
    postgres_url,
    sqlite_path,
)
from tests.redis_servers import (
    SERVICE,
    RedisProcess,
    need_sentinel,
    start_redis,
    start_sentinel,
    wait_for,
)
from tests.services import need, need_port, port_open

REDIS_DB = 13  # a database of the tests' own, flushed before each test
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
# characters a URL must escape, so the parsing of both passwords is put to the test
DATA_PASSWORD = "d@ta:pw/1?#"
SENTINEL_PASSWORD = "s&nt=pw 2"
T0 = 1_800_000_000.0


def flush_redis() -> None:
    need("redis", port_open("127.0.0.1", 6379), "nothing listens on 127.0.0.1:6379")
    redis.Redis.from_url(REDIS_URL).flushdb()


@dataclass
class SentinelSet:
    """A primary, its replica and one Sentinel (quorum 1), all with a password."""

    primary: RedisProcess
    replica: RedisProcess
    sentinel: RedisProcess


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory) -> Iterator[SentinelSet]:
    need_sentinel()
    base = tmp_path_factory.mktemp("sentinel")
    started: list[RedisProcess] = []
    try:
        primary = start_redis(base / "primary", password=DATA_PASSWORD)
        started.append(primary)
        replica = start_redis(base / "replica", replica_of=primary.port, password=DATA_PASSWORD)
        started.append(replica)
        sentinel = start_sentinel(
            base / "sentinel", primary.port, 1, auth_pass=DATA_PASSWORD, password=SENTINEL_PASSWORD
        )
        started.append(sentinel)
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            10,
            "the replica in sync",
        )
        yield SentinelSet(primary, replica, sentinel)
    finally:
        for process in reversed(started):
            process.kill()


def sentinel_url(sentinel: RedisProcess, sentinel_password: str = SENTINEL_PASSWORD) -> str:
    return (
        f"redis+sentinel://:{quote(DATA_PASSWORD, safe='')}@127.0.0.1:{sentinel.port}/{SERVICE}/2"
        f"?sentinel_password={quote(sentinel_password, safe='')}"
    )


def drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name no other test uses; dropped (with the gateway's tables) afterwards."""
    need_port("postgres", 5432)
    schema = f"gateway_test_{secrets.token_hex(6)}"
    yield schema
    drop_schema(schema)


Opener = Callable[[str], Store]


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opener]:
    """open_store for one test; every store it opened is closed at the end, failed or not.

    (A PostgreSQL store left open keeps its pool's tasks alive, and they outlast the end of the
    event loop: pytest would wait for them for ever.)
    """
    backends: list[Store] = []

    def open_(url: str) -> Store:
        backends.append(open_store(url, tmp_path))
        return backends[-1]

    yield open_
    for backend in backends:
        await backend.close()


@pytest.fixture(params=["memory", "sqlite", "redis", "sentinel", "postgres"])
async def store(request, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "redis":
        flush_redis()
        url = REDIS_URL
    elif request.param == "sentinel":
        servers = request.getfixturevalue("sentinel_set")
        servers.primary.client(db=2).flushdb()
        url = sentinel_url(servers.sentinel)
    elif request.param == "postgres":
        url = f"{POSTGRES}?schema={request.getfixturevalue('pg_schema')}"
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


# -- records -------------------------------------------------------------------------------


async def test_a_put_record_reads_back_and_a_second_put_replaces_it(store: Store):
    assert await store.get_record("svc:a", T0) is None
    assert await store.put_record("svc:a", "first", T0, None) is True
    assert await store.get_record("svc:a", T0) == "first"
    assert await store.put_record("svc:a", "second ü ✓", T0, T0 + 60) is True
    assert await store.get_record("svc:a", T0) == "second ü ✓"
    assert await store.get_record("svc:b", T0) is None
    # a replacement takes the new end time as well as the new value
    assert await store.put_record("svc:a", "third", T0, None) is True
    assert await store.get_record("svc:a", T0 + 3600) == "third"


async def test_a_record_ends_at_its_expires_judged_by_the_callers_now(store: Store):
    # times far in the past of the wall clock: only the passed `now` counts
    assert await store.put_record("code:1", "v", 90, 100) is True
    assert await store.get_record("code:1", 99) == "v"
    assert await store.list_records("code:", 99) == {"code:1": "v"}
    assert await store.put_record("code:1", "other", 99, 200, only_new=True) is False
    assert await store.get_record("code:1", 99) == "v"
    assert await store.get_record("code:1", 100) is None
    assert await store.list_records("code:", 100) == {}
    assert await store.put_record("code:1", "again", 100, 200, only_new=True) is True
    assert await store.get_record("code:1", 199) == "again"
    # and at the unix times of now, with an end a minute ahead of the caller's clock
    assert await store.put_record("code:2", "w", T0, T0 + 60) is True
    assert await store.get_record("code:2", T0 + 59.5) == "w"
    assert await store.list_records("code:2", T0 + 60) == {}
    assert await store.get_record("code:2", T0 + 60) is None


async def test_a_record_without_an_end_never_ends(store: Store):
    assert await store.put_record("keep", "v", T0, None) is True
    assert await store.get_record("keep", T0 * 100) == "v"
    assert await store.list_records("", T0 * 100) == {"keep": "v"}
    assert await store.put_record("keep", "w", T0 * 100, None, only_new=True) is False
    assert await store.get_record("keep", T0) == "v"


async def test_only_new_is_refused_while_a_live_record_is_there(store: Store):
    assert await store.put_record("used:jti", "1", T0, T0 + 300, only_new=True) is True
    assert await store.put_record("used:jti", "2", T0 + 1, T0 + 300, only_new=True) is False
    assert await store.put_record("used:jti", "3", T0 + 299, T0 + 900, only_new=True) is False
    assert await store.get_record("used:jti", T0 + 299) == "1"  # nothing changed
    # once it has ended the key is free again, and the new record has its own end
    assert await store.put_record("used:jti", "4", T0 + 300, T0 + 900, only_new=True) is True
    assert await store.get_record("used:jti", T0 + 899) == "4"
    assert await store.get_record("used:jti", T0 + 900) is None
    # a plain put replaces regardless
    assert await store.put_record("used:jti", "5", T0 + 400, None) is True
    assert await store.get_record("used:jti", T0 + 400) == "5"


async def test_delete_record_is_true_once_then_false(store: Store):
    await store.put_record("svc:a", "v", T0, T0 + 60)
    await store.put_record("svc:b", "w", T0, None)
    assert await store.delete_record("svc:a") is True
    assert await store.delete_record("svc:a") is False
    assert await store.delete_record("never") is False
    assert await store.get_record("svc:a", T0) is None
    assert await store.get_record("svc:b", T0) == "w"
    assert await store.put_record("svc:a", "new", T0, None, only_new=True) is True


async def test_list_records_by_prefix(store: Store):
    await store.put_record("svc-name:a", "1", T0, None)
    await store.put_record("svc-name:b", "2", T0, T0 + 60)
    await store.put_record("svc-name:gone", "3", T0, T0 + 10)
    await store.put_record("svc-used:a", "4", T0, None)
    await store.put_record("svc", "5", T0, None)
    assert await store.list_records("svc-name:", T0 + 30) == {"svc-name:a": "1", "svc-name:b": "2"}
    assert await store.list_records("svc-used:", T0 + 30) == {"svc-used:a": "4"}
    assert await store.list_records("svc-name:a", T0 + 30) == {"svc-name:a": "1"}
    assert await store.list_records("svc-", T0 + 30) == {
        "svc-name:a": "1",
        "svc-name:b": "2",
        "svc-used:a": "4",
    }
    assert await store.list_records("", T0 + 30) == {
        "svc-name:a": "1",
        "svc-name:b": "2",
        "svc-used:a": "4",
        "svc": "5",
    }
    assert await store.list_records("SVC", T0 + 30) == {}  # case counts
    assert await store.list_records("nothing:", T0 + 30) == {}


async def test_no_character_of_a_prefix_is_a_wildcard(store: Store):
    keys = ["a_b:1", "axb:1", "a%b:1", "a*b:1", "a?b:1", "a[b]:1", "ab]:1", "a\\b:1", "a^b:1"]
    for i, key in enumerate(keys):
        assert await store.put_record(key, str(i), T0, None) is True
    assert await store.list_records("a_b", T0) == {"a_b:1": "0"}  # SQL LIKE's one character
    assert await store.list_records("a%", T0) == {"a%b:1": "2"}  # LIKE's any characters
    assert await store.list_records("a*", T0) == {"a*b:1": "3"}  # glob's any characters
    assert await store.list_records("a?", T0) == {"a?b:1": "4"}  # glob's one character
    assert await store.list_records("a[b", T0) == {"a[b]:1": "5"}
    assert await store.list_records("a[x]b", T0) == {}  # not a glob class matching axb
    assert await store.list_records("a[^x]", T0) == {}
    assert await store.list_records("a\\", T0) == {"a\\b:1": "7"}
    assert await store.list_records("a\\b", T0) == {"a\\b:1": "7"}  # not an escaped b
    assert await store.list_records("a^", T0) == {"a^b:1": "8"}
    assert len(await store.list_records("a", T0)) == len(keys)


async def test_concurrent_only_new_puts_have_exactly_one_winner(store: Store):
    results = await asyncio.gather(
        *(store.put_record("once", f"w{i}", T0, T0 + 60, only_new=True) for i in range(20))
    )
    assert results.count(True) == 1
    assert await store.get_record("once", T0) == f"w{results.index(True)}"
    # the same once the first record has ended, with every caller's clock past its end
    results = await asyncio.gather(
        *(store.put_record("once", f"x{i}", T0 + 60, T0 + 120, only_new=True) for i in range(20))
    )
    assert results.count(True) == 1
    assert await store.get_record("once", T0 + 60) == f"x{results.index(True)}"


@pytest.mark.parametrize(
    "key",
    ["", "k" * 201, "has space", "tab\tkey", "new\nline", "nul\x00", "caf\u00e9", "\x7f", None, 1],
)
async def test_bad_record_keys_raise_value_error(store: Store, key):
    with pytest.raises(ValueError, match="record key"):
        await store.put_record(key, "v", T0, None)
    with pytest.raises(ValueError, match="record key"):
        await store.put_record(key, "v", T0, None, only_new=True)
    with pytest.raises(ValueError, match="record key"):
        await store.get_record(key, T0)
    with pytest.raises(ValueError, match="record key"):
        await store.delete_record(key)
    if key != "":  # an empty prefix lists every record
        with pytest.raises(ValueError, match="record key"):
            await store.list_records(key, T0)


@pytest.mark.parametrize(
    ("value", "expires"),
    [
        ("x" * (64 * 1024 + 1), None),
        ("\u00e9" * (32 * 1024 + 1), None),  # fewer characters than 64 Ki, more bytes
        ("lone \udc80 surrogate", None),
        ("nul \x00 inside", None),
        (b"bytes", None),
        (None, None),
        ("v", float("nan")),
        ("v", float("inf")),
        ("v", "100"),
    ],
)
async def test_bad_record_values_raise_value_error(store: Store, value, expires):
    for only_new in (False, True):
        with pytest.raises(ValueError, match="record"):
            await store.put_record("k", value, T0, expires, only_new=only_new)
    assert await store.get_record("k", T0) is None


async def test_records_at_the_limits_are_stored(store: Store):
    longest_key = "~" + "k" * 198 + "!"
    biggest = "\u00e9" * (32 * 1024)  # 64 KiB exactly as UTF-8
    assert await store.put_record(longest_key, biggest, T0, None) is True
    assert await store.get_record(longest_key, T0) == biggest
    assert await store.put_record("empty", "", T0, None) is True
    assert await store.get_record("empty", T0) == ""
    assert await store.list_records("", T0) == {longest_key: biggest, "empty": ""}
    assert await store.delete_record(longest_key) is True


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


async def test_a_redis_record_is_a_hash_with_a_ttl_just_past_its_end(opened: Opener):
    flush_redis()
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    backend = opened(REDIS_URL)
    # an end 60 s after the caller's now: a TTL of about a minute, whatever the wall clock
    assert await backend.put_record("code:1", "v", 1000.0, 1060.0, only_new=True) is True
    assert raw.hgetall("gateway:record:code:1") == {"v": "v", "e": "1060.0"}
    assert 60 < raw.ttl("gateway:record:code:1") <= 62
    # a replacement without an end keeps no TTL of the record before it
    assert await backend.put_record("code:1", "w", 1000.0, None) is True
    assert raw.hgetall("gateway:record:code:1") == {"v": "w", "e": ""}
    assert raw.ttl("gateway:record:code:1") == -1
    # the stored end decides, not the TTL: a record ended by the caller's clock is not there
    await backend.put_record("code:2", "x", 1000.0, 1060.0)
    assert raw.exists("gateway:record:code:2") == 1
    assert await backend.get_record("code:2", 1060.0) is None
    assert await backend.put_record("code:2", "y", 1060.0, 1120.0, only_new=True) is True
    # keys that only look like the prefix glob are not listed
    raw.hset("gateway:record:codeX", mapping={"v": "no", "e": ""})
    raw.hset("gateway:record:code:3", mapping={"v": "damaged", "e": "soon"})
    assert await backend.list_records("code:", 1060.0) == {"code:1": "w", "code:2": "y"}
    assert await backend.get_record("code:3", 1060.0) is None
    assert await backend.put_record("code:3", "z", 1060.0, None, only_new=True) is True
    assert await backend.get_record("code:3", 1060.0) == "z"
    raw.close()


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


def _claim(path: str, worker: int, keys: int, start, won: str) -> None:
    async def run() -> list[int]:
        backend = open_store(f"sqlite:///{path}", Path("/"))
        await backend.ping()  # connected and the schema made before the race starts
        start.wait(60)
        claimed = [
            i
            for i in range(keys)
            if await backend.put_record(f"code:{i}", f"w{worker}", T0, T0 + 60, only_new=True)
        ]
        await backend.close()
        return claimed

    Path(won).write_text(" ".join(map(str, asyncio.run(run()))))


def test_sqlite_only_new_across_processes_has_exactly_one_winner(tmp_path: Path):
    db, workers, keys = tmp_path / "shared.db", 4, 200
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(workers)
    procs = [
        ctx.Process(target=_claim, args=(str(db), w, keys, start, str(tmp_path / f"won-{w}")))
        for w in range(workers)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    won = {w: (tmp_path / f"won-{w}").read_text().split() for w in range(workers)}
    claims = sorted(int(i) for ids in won.values() for i in ids)
    assert claims == list(range(keys))  # every code claimed by exactly one process

    async def stored() -> dict[str, str]:
        backend = open_store(f"sqlite:///{db}", Path("/"))
        found = await backend.list_records("code:", T0)
        await backend.close()
        return found

    assert asyncio.run(stored()) == {
        f"code:{i}": f"w{w}" for w, ids in won.items() for i in map(int, ids)
    }


async def test_sqlite_adds_the_records_table_to_an_existing_file(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file made by a gateway from before records
        conn.executescript(
            "CREATE TABLE sessions (sid TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT"
            " NULL, last_seen REAL NOT NULL, expires REAL NOT NULL, revoked INTEGER NOT NULL"
            " DEFAULT 0);"
            "INSERT INTO sessions VALUES ('s1', 'alice', 1, 1, 1e12, 0);"
        )
    backend = open_store(f"sqlite:///{path}", Path("/"))
    assert await backend.put_record("k", "v", T0, None) is True
    assert await backend.get_record("k", T0) == "v"
    assert (await backend.get_session("s1")) is not None
    await backend.close()


async def test_sqlite_forgets_ended_records(tmp_path: Path):
    import sqlite3

    path = tmp_path / "sweep.db"
    backend = open_store(f"sqlite:///{path}", Path("/"))
    await backend.put_record("old", "1", T0, T0 + 60)
    await backend.put_record("kept", "2", T0, None)
    await backend.put_record("later", "3", T0, T0 + 86400)
    # a write an hour later deletes the records that have ended, and nothing else
    await backend.put_record("new", "4", T0 + 3600, T0 + 7200)
    await backend.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key FROM records ORDER BY key").fetchall()
    assert [row[0] for row in rows] == ["kept", "later", "new"]


# -- Sentinel URLs and failures ----------------------------------------------------------


def test_sentinel_urls_name_sentinels_service_db_and_both_passwords():
    assert parse_sentinel_url("redis+sentinel://s1,s2:26380/mymaster") == SentinelURL(
        sentinels=(("s1", 26379), ("s2", 26380)), service="mymaster"
    )
    parsed = parse_sentinel_url(
        "redis+sentinel://app:p%40ss%3Aw%2Fd@10.0.0.1:5000,[::1]:5001,[fe80::2]/cache%2Dmain/3"
        "?sentinel_username=watch&sentinel_password=s%26p"
    )
    assert parsed == SentinelURL(
        sentinels=(("10.0.0.1", 5000), ("::1", 5001), ("fe80::2", 26379)),
        service="cache-main",
        db=3,
        username="app",
        password="p@ss:w/d",
        sentinel_username="watch",
        sentinel_password="s&p",
    )
    assert parse_sentinel_url("redis+sentinel://:secret@h/svc/").password == "secret"
    assert parse_sentinel_url("redis+sentinel://:secret@h/svc/").username is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://:hunter2@/svc", "names no Sentinel"),
        ("redis+sentinel://:hunter2@h:26379", "names no service"),
        ("redis+sentinel://:hunter2@h:26379/", "names no service"),
        ("redis+sentinel://:hunter2@h:port/svc", "port that is not a number"),
        ("redis+sentinel://:hunter2@h:70000/svc", "port that is not a number"),
        ("redis+sentinel://:hunter2@[::1/svc", "unclosed [IPv6]"),
        ("redis+sentinel://:hunter2@h/svc/zero", "database that is not a number"),
        ("redis+sentinel://:hunter2@h/svc/0/x", "more than /service/db"),
        ("redis+sentinel://:hunter2@h/svc?password=x", "unknown option 'password'"),
    ],
)
def test_bad_sentinel_urls_say_why_without_the_password(url: str, why: str):
    with pytest.raises(ValueError, match=r".") as caught:
        check_url(url)
    assert why in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_store_urls_the_config_accepts():
    for url in (
        "memory://",
        "sqlite:///data/g.db",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@redis.internal:6380/1",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "postgresql://gw:pw@db1,db2/gateway?target_session_attrs=read-write",
        "postgres://gw@db/gateway?schema=gw_sessions",
    ):
        check_url(url)
    for url in ("mysql://db/x", "redis-sentinel://s/m", "nothing", "postgresql://db/x?schema=A-b"):
        with pytest.raises(ValueError):
            check_url(url)


def test_the_config_checks_store_urls():
    from gateway.config.values import store_url

    assert store_url("redis+sentinel://s1,s2/mymaster") == "redis+sentinel://s1,s2/mymaster"
    with pytest.raises(ValueError, match="names no service"):
        store_url("redis+sentinel://s1,s2")
    with pytest.raises(ValueError, match="schema"):
        store_url("postgresql://db/x?schema=Bad")


async def test_sentinels_down_raise_store_unavailable(opened: Opener):
    from tests.conftest import closed_port

    url = f"redis+sentinel://127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}/svc/0"
    backend = opened(url)
    with pytest.raises(StoreUnavailable, match=r"no Sentinel at 127\.0\.0\.1:\d+, 127"):
        await backend.get_session("s1")
    with pytest.raises(StoreUnavailable):
        await backend.ping()
    await backend.close()


async def test_a_wrong_sentinel_password_raises_store_unavailable(
    sentinel_set: SentinelSet, opened: Opener
):
    backend = opened(sentinel_url(sentinel_set.sentinel, sentinel_password="no"))
    with pytest.raises(StoreUnavailable):
        await backend.ping()
    await backend.close()


async def test_a_sentinel_revocation_is_on_the_replica_when_acknowledged(
    sentinel_set: SentinelSet, opened: Opener
):
    primary, replica = sentinel_set.primary.client(db=2), sentinel_set.replica.client(db=2)
    primary.flushdb()
    backend = opened(sentinel_url(sentinel_set.sentinel))
    for sid in ("s1", "s2", "s3"):
        await backend.create_session(session(sid))
    await backend.set_lockout("k", T0 + 900, T0)
    assert replica.get("gateway:lockout:k") == repr(T0 + 900)  # WAIT saw the replica have it
    assert await backend.revoke_session("s1") is True
    assert replica.hget("gateway:session:s1", "revoked") == "1"
    assert await backend.revoke_user_sessions("alice") == 2
    assert [replica.hget(f"gateway:session:{sid}", "revoked") for sid in ("s2", "s3")] == [
        "1",
        "1",
    ]
    await backend.close()
    # the key layout is the plain Redis store's, in the URL's database
    assert primary.hget("gateway:session:s1", "user") == "alice"


async def test_a_sentinel_record_used_once_or_deleted_is_on_the_replica_when_acknowledged(
    sentinel_set: SentinelSet, opened: Opener
):
    primary, replica = sentinel_set.primary.client(db=2), sentinel_set.replica.client(db=2)
    primary.flushdb()
    backend = opened(sentinel_url(sentinel_set.sentinel))

    def waits() -> int:  # a local replica is quick: count the WAITs, not only their effect
        return primary.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)

    before = waits()
    for i in range(20):  # WAIT saw the replica have each, so every read of it finds it there
        assert await backend.put_record(f"used:{i}", "1", T0, T0 + 60, only_new=True) is True
        assert replica.hget(f"gateway:record:used:{i}", "v") == "1"
    assert waits() == before + 20
    assert await backend.put_record("used:0", "2", T0, T0 + 60, only_new=True) is False
    assert await backend.delete_record("never") is False
    assert waits() == before + 20  # nothing written, nothing to wait for
    for i in range(20):
        assert await backend.delete_record(f"used:{i}") is True
        assert replica.exists(f"gateway:record:used:{i}") == 0
    assert waits() == before + 40
    await backend.close()


# -- PostgreSQL ----------------------------------------------------------------------------


def test_postgres_urls_keep_libpq_options_and_take_out_the_schema():
    assert postgres_url("postgresql://u@h/db") == ("postgresql://u@h/db", "gateway")
    assert postgres_url("postgres://u:p%40w@h1:5432,h2/db?schema=gw_1&sslmode=require") == (
        "postgres://u:p%40w@h1:5432,h2/db?sslmode=require",
        "gw_1",
    )
    for bad in ("Upper", "has-dash", "1digit", "x" * 64, ""):
        with pytest.raises(ValueError, match="schema"):
            postgres_url(f"postgresql://h/db?schema={bad}")
    for bad in ("postgresql://u:hunter%zz@h/db", "postgresql://u:hunter2@h/db?nosuch=1"):
        with pytest.raises(ValueError, match="not a URL libpq can read") as caught:
            postgres_url(bad)
        assert "hunter" not in str(caught.value)


async def test_postgres_down_raises_store_unavailable(opened: Opener):
    from tests.conftest import closed_port

    backend = opened(f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    with pytest.raises(StoreUnavailable, match="postgresql"):
        await backend.get_session("s1")
    await backend.close()


def pg_rows(schema: str, table: str) -> list[tuple]:
    with psycopg.connect(POSTGRES) as conn:
        return conn.execute(f'SELECT * FROM "{schema}".{table} ORDER BY 1').fetchall()


async def test_postgres_makes_its_schema_once_for_workers_starting_together(
    pg_schema: str, opened: Opener
):
    url = f"{POSTGRES}?schema={pg_schema}"
    backends = [opened(url) for _ in range(6)]
    await asyncio.gather(*(backend.ping() for backend in backends))
    await asyncio.gather(*(b.create_session(session(f"s{i}")) for i, b in enumerate(backends)))
    for backend in backends:
        await backend.close()
    assert len(pg_rows(pg_schema, "sessions")) == 6


async def test_postgres_forgets_expired_rows(pg_schema: str, opened: Opener):
    backend = opened(f"{POSTGRES}?schema={pg_schema}")
    await backend.create_session(session("old", at=T0, life=60))
    await backend.add_failure("login:user:alice", T0, 60)
    await backend.set_lockout("login:user:alice", T0 + 120, T0)
    await backend.set_lockout("login:user:bob", T0 + 86400, T0)
    # a write an hour later deletes what nobody can use any more, and nothing else
    await backend.create_session(session("new", at=T0 + 3600))
    await backend.close()
    assert [row[0] for row in pg_rows(pg_schema, "sessions")] == ["new"]
    assert pg_rows(pg_schema, "failures") == []
    assert [row[0] for row in pg_rows(pg_schema, "lockouts")] == ["login:user:bob"]


async def test_postgres_forgets_ended_records(pg_schema: str, opened: Opener):
    backend = opened(f"{POSTGRES}?schema={pg_schema}")
    await backend.put_record("old", "1", T0, T0 + 60)
    await backend.put_record("kept", "2", T0, None)
    await backend.put_record("later", "3", T0, T0 + 86400)
    # a write an hour later deletes the records that have ended, and nothing else
    await backend.put_record("new", "4", T0 + 3600, T0 + 7200)
    await backend.close()
    assert [row[0] for row in pg_rows(pg_schema, "records")] == ["kept", "later", "new"]
    assert pg_rows(pg_schema, "records")[0] == ("kept", "2", None)


async def test_postgres_adds_the_records_table_to_an_existing_schema(
    pg_schema: str, opened: Opener
):
    url = f"{POSTGRES}?schema={pg_schema}"
    first = opened(url)
    await first.create_session(session("s1"))
    await first.close()
    with psycopg.connect(POSTGRES, autocommit=True) as conn:  # as a gateway from before records
        conn.execute(f'DROP TABLE "{pg_schema}".records')
    backend = opened(url)
    assert await backend.put_record("k", "v", T0, None) is True
    assert await backend.get_record("k", T0) == "v"
    assert await backend.get_session("s1") == session("s1")
    await backend.close()


async def test_postgres_only_new_across_stores_has_exactly_one_winner(
    pg_schema: str, opened: Opener
):
    url = f"{POSTGRES}?schema={pg_schema}"
    backends = [opened(url) for _ in range(4)]  # as four workers, each with its pool
    await asyncio.gather(*(backend.ping() for backend in backends))
    for round_ in range(10):
        results = await asyncio.gather(
            *(
                backends[i % 4].put_record(f"code:{round_}", f"w{i}", T0, T0 + 60, only_new=True)
                for i in range(20)
            )
        )
        assert results.count(True) == 1
    for backend in backends:
        await backend.close()


async def test_postgres_replaces_connections_the_server_dropped(pg_schema: str, opened: Opener):
    name = f"gw_{pg_schema}"  # this test's connections, and no one else's
    backend = opened(f"{POSTGRES}?schema={pg_schema}&application_name={name}")
    await backend.create_session(session("s1"))
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (name,),
        ).fetchone()
    assert ended is not None and ended[0] >= 1
    # as after a restart or a failover of the server: the pool checks and reconnects
    assert await backend.get_session("s1") == session("s1")
    await backend.close()
