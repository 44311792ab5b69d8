"""`redis://host:port/db` or `redis+sentinel://...`: shared by every replica behind a balancer.

Each session is a hash with a TTL just past its `expires`; a set per user lists
its session ids; failures are a sorted set of timestamps (a sliding window) and
a lockout is a key holding its end time. Times come from the caller, TTLs are
only there so Redis forgets what nobody can use any more.

A record is a hash `gateway:record:<key>` with fields `v` (the value) and `e` (its end time,
empty for none), and a TTL just past its end (counted from the caller's `now`) when it has
one; the stored end judged against the caller's `now` decides whether it is live. Each write
of a record is one Lua script, so `only_new` (store unless a live record is there) is atomic.
Listing SCANs the keys under the prefix, its glob characters escaped.

With Sentinel (`redis+sentinel://s1:26379,s2:26379/service/db`) the client is redis-py's
`Sentinel.master_for`: every new connection asks the Sentinels for the current primary, and
connections to a former primary are dropped, so the store follows a failover by itself. Reads
go to the primary too (a replica may not have a revocation yet). A revocation, a lockout, a
record stored with `only_new` (a one-time code used) or a record deleted is acknowledged only
after `WAIT` has seen it reach a replica (or `_WAIT_MS` passed), so a failover right after it
does not bring the revoked session back or make the used code usable again.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store import SENTINEL_SCHEME, parse_sentinel_url
from gateway.store.base import Session, StoreUnavailable, check_record, check_record_key

T = TypeVar("T")

PREFIX = "gateway:"
_TIMEOUT = 2.0  # seconds to connect or answer; past it the store counts as down
_SENTINEL_TIMEOUT = 1.0  # per Sentinel asked; the next one is asked after it
_WAIT_MS = 500  # how long a revocation waits for a replica's acknowledgement (Sentinel only)


_REVOKE = (
    "if redis.call('HGET', KEYS[1], 'revoked') == '0' then "
    "redis.call('HSET', KEYS[1], 'revoked', '1') return 1 end return 0"
)

# KEYS[1] the record; ARGV: value, end ('' none), TTL seconds ('' none), now, only_new (1/0).
# With only_new, a record is there when it has a value and no end or one after `now` (as in
# _live: an end that is no number is a damaged record, no record).
_PUT_RECORD = """
if ARGV[5] == '1' and redis.call('HEXISTS', KEYS[1], 'v') == 1 then
    local e = redis.call('HGET', KEYS[1], 'e')
    if not e or e == '' then return 0 end
    local ends = tonumber(e)
    if ends ~= nil and ends > tonumber(ARGV[4]) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'e', ARGV[2])
if ARGV[3] ~= '' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})
_SCAN_COUNT = 1000


def _live(fields: list[str | None], now: float) -> str | None:
    """The value of a record's [v, e] when it is live at `now`."""
    value, end = fields
    if value is None:
        return None
    if not end:
        return value
    try:
        return value if float(end) > now else None
    except ValueError:
        return None  # a damaged record is no record


def _ttl(seconds: float) -> int:
    return max(1, math.ceil(seconds) + 1)


class RedisStore:
    """Sessions and counters in Redis (redis-py's asyncio client and its connection pool)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sentinel: Sentinel | None = None
        self._no_primary = ""
        options = {
            "socket_timeout": _TIMEOUT,
            "socket_connect_timeout": _TIMEOUT,
            "health_check_interval": 30,
            "decode_responses": True,
        }
        if url.partition("://")[0] != SENTINEL_SCHEME:
            self.redis = aioredis.Redis.from_url(url, **options)
            return
        where = parse_sentinel_url(url)
        self._no_primary = (
            f"redis: no Sentinel at {', '.join(f'{h}:{p}' for h, p in where.sentinels)} "
            f"names a primary for {where.service!r}"
        )
        self.sentinel = Sentinel(
            list(where.sentinels),
            sentinel_kwargs={
                "socket_timeout": _SENTINEL_TIMEOUT,
                "socket_connect_timeout": _SENTINEL_TIMEOUT,
                "username": where.sentinel_username,
                "password": where.sentinel_password,
                # one try per Sentinel (as for the data nodes): the next Sentinel is the retry
                "retry": Retry(NoBackoff(), 0),
            },
        )
        self.redis = self.sentinel.master_for(
            where.service,
            db=where.db,
            username=where.username,
            password=where.password,
            **options,
        )

    async def _do(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, MasterNotFoundError):
            # redis-py's own message lists every Sentinel client's settings: too much for a log
            return StoreUnavailable(self._no_primary)
        return StoreUnavailable(f"redis: {exc}")

    @staticmethod
    def _skey(sid: str) -> str:
        return f"{PREFIX}session:{sid}"

    @staticmethod
    def _ukey(user: str) -> str:
        return f"{PREFIX}user:{user}"

    async def create_session(self, session: Session) -> None:
        ttl = _ttl(session.expires - session.created)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._skey(session.sid),
                mapping={
                    "user": session.user,
                    "created": repr(session.created),
                    "last_seen": repr(session.last_seen),
                    "expires": repr(session.expires),
                    "revoked": int(session.revoked),
                },
            )
            pipe.expire(self._skey(session.sid), ttl)
            pipe.sadd(self._ukey(session.user), session.sid)
            pipe.expire(self._ukey(session.user), ttl, gt=True)
            pipe.expire(self._ukey(session.user), ttl, nx=True)
            await self._do(pipe.execute())

    async def get_session(self, sid: str) -> Session | None:
        data = await self._do(self.redis.hgetall(self._skey(sid)))
        if not data or "user" not in data:
            return None
        try:
            return Session(
                sid=sid,
                user=data["user"],
                created=float(data["created"]),
                last_seen=float(data["last_seen"]),
                expires=float(data["expires"]),
                revoked=data.get("revoked") == "1",
            )
        except (KeyError, ValueError):
            return None  # a damaged record is no session

    async def touch_session(self, sid: str, now: float) -> None:
        # only an existing session is touched: HSET on a gone key would resurrect a stub
        script = (
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "return redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) end return 0"
        )
        await self._do(self.redis.eval(script, 1, self._skey(sid), repr(now)))

    async def revoke_session(self, sid: str) -> bool:
        return await self._revoke([sid]) > 0

    async def revoke_user_sessions(self, user: str) -> int:
        sids = await self._do(self.redis.smembers(self._ukey(user)))
        return await self._revoke(list(sids))

    async def _revoke(self, sids: list[str]) -> int:
        """Revoke each of `sids` not revoked yet; the number revoked now."""
        if self.sentinel is None:
            count = 0
            for sid in sids:
                count += int(await self._do(self.redis.eval(_REVOKE, 1, self._skey(sid))))
            return count
        try:
            # one connection throughout, so that WAIT counts the replicas that have these writes
            async with self.redis.client() as conn:
                count = 0
                for sid in sids:
                    count += int(await conn.eval(_REVOKE, 1, self._skey(sid)))
                if count:
                    await conn.wait(1, _WAIT_MS)
                return count
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def list_sessions(self, user: str, now: float) -> list[Session]:
        sids = await self._do(self.redis.smembers(self._ukey(user)))
        found: list[Session] = []
        gone: list[str] = []
        for sid in sids:
            session = await self.get_session(sid)
            if session is None or session.expires <= now:
                gone.append(sid)
            elif session.user == user:
                found.append(session)
        if gone:
            await self._do(self.redis.srem(self._ukey(user), *gone))
        return sorted(found, key=lambda s: s.created)

    async def add_failure(self, key: str, now: float, window: float) -> int:
        name = f"{PREFIX}failures:{key}"
        member = f"{now!r}:{secrets.token_hex(4)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now - window)
            pipe.zadd(name, {member: now})
            pipe.zcard(name)
            pipe.expire(name, _ttl(window))
            results = await self._do(pipe.execute())
        return int(results[2])

    async def clear_failures(self, key: str) -> None:
        await self._do(self.redis.delete(f"{PREFIX}failures:{key}"))

    async def set_lockout(self, key: str, until: float, now: float) -> None:
        name = f"{PREFIX}lockout:{key}"
        current = await self.lockout_until(key, now)
        if current is not None and current >= until:
            return
        # the stored end time, judged by the caller's clock, decides; the TTL only cleans up
        if self.sentinel is None:
            await self._do(self.redis.set(name, repr(until), ex=_ttl(until - now)))
            return
        try:
            async with self.redis.client() as conn:  # WAIT counts this connection's writes
                await conn.set(name, repr(until), ex=_ttl(until - now))
                await conn.wait(1, _WAIT_MS)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def lockout_until(self, key: str, now: float) -> float | None:
        value = await self._do(self.redis.get(f"{PREFIX}lockout:{key}"))
        try:
            until = float(value) if value is not None else None
        except ValueError:
            return None
        return until if until is not None and until > now else None

    # -- records ------------------------------------------------------------------------

    @staticmethod
    def _rkey(key: str) -> str:
        return f"{PREFIX}record:{key}"

    async def put_record(
        self, key: str, value: str, now: float, expires: float | None, *, only_new: bool = False
    ) -> bool:
        check_record(key, value, expires)
        args = (
            value,
            "" if expires is None else repr(float(expires)),
            "" if expires is None else str(_ttl(expires - now)),
            repr(float(now)),
            "1" if only_new else "0",
        )
        if self.sentinel is None or not only_new:
            return bool(await self._do(self.redis.eval(_PUT_RECORD, 1, self._rkey(key), *args)))
        try:
            async with self.redis.client() as conn:  # WAIT counts this connection's writes
                stored = bool(await conn.eval(_PUT_RECORD, 1, self._rkey(key), *args))
                if stored:
                    await conn.wait(1, _WAIT_MS)
                return stored
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def get_record(self, key: str, now: float) -> str | None:
        check_record_key(key)
        return _live(await self._do(self.redis.hmget(self._rkey(key), "v", "e")), now)

    async def delete_record(self, key: str) -> bool:
        check_record_key(key)
        # no `now` here: a record past its end that Redis has not dropped yet still counts
        if self.sentinel is None:
            return bool(await self._do(self.redis.delete(self._rkey(key))))
        try:
            async with self.redis.client() as conn:  # a deletion may be a revocation: WAIT
                deleted = bool(await conn.delete(self._rkey(key)))
                if deleted:
                    await conn.wait(1, _WAIT_MS)
                return deleted
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def list_records(self, prefix: str, now: float) -> dict[str, str]:
        check_record_key(prefix, prefix=True)
        start = len(self._rkey(""))
        match = self._rkey(prefix).translate(_GLOB) + "*"
        seen: set[str] = set()  # SCAN may name a key twice
        try:
            async for name in self.redis.scan_iter(match=match, count=_SCAN_COUNT):
                if name.startswith(self._rkey(prefix)):
                    seen.add(name)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        names = sorted(seen)
        found: dict[str, str] = {}
        for at in range(0, len(names), _SCAN_COUNT):
            batch = names[at : at + _SCAN_COUNT]
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hmget(name, "v", "e")
                results = await self._do(pipe.execute())
            for name, fields in zip(batch, results, strict=True):
                value = _live(fields, now)
                if value is not None:
                    found[name[start:]] = value
        return found

    # -- health ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._do(self.redis.ping())

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass
        if self.sentinel is not None:
            try:
                await self.sentinel.aclose()
            except (RedisError, OSError):
                pass
