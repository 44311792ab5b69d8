"""The embedded default under load: one SQLite file shared by two workers loses no session."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import USERS, free_port, standard_routes

LOGINS = 120
CONCURRENCY = 24


async def login_many(url: str) -> list[int]:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False, timeout=60) as c:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> int:
            user = ("alice", "bob")[i % 2]
            async with gate:
                response = await c.post(
                    "/.auth/login", json={"username": user, "password": USERS[user][0]}
                )
                return response.status_code

        return await asyncio.gather(*(one(i) for i in range(LOGINS)))


def test_concurrent_logins_on_two_workers_lose_no_session(tmp_path: Path, gateway_factory):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(tmp_path, routes=standard_routes(dead, dead), args=("--workers", "2"))
    try:
        statuses = asyncio.run(login_many(gw.url))
        assert statuses == [200] * LOGINS
    finally:
        assert gw.stop() == 0
    with sqlite3.connect(tmp_path / "data" / "gateway.db") as db:
        rows = db.execute("SELECT user, count(*) FROM sessions GROUP BY user ORDER BY user")
        assert rows.fetchall() == [("alice", LOGINS // 2), ("bob", LOGINS // 2)]
