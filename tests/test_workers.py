"""Several workers: one SQLite file shared by two loses no session, and each worker listens on
a socket of its own (SO_REUSEPORT), among which the kernel spreads the connections."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.conftest import USERS, free_port, standard_routes, write_config
from tests.services import need

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


def _sockets(port: int, state: str) -> list[set[int]]:
    """The pids holding each TCP socket on `port` in `state` (ss -p)."""
    listing = subprocess.run(
        ["ss", "-Htanp", "state", state, f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [{int(pid) for pid in re.findall(r"pid=(\d+)", line)} for line in listing.splitlines()]


def test_each_worker_listens_on_its_own_socket_and_gets_its_share(tmp_path: Path, gateway_factory):
    need("ss", subprocess.run(["which", "ss"], capture_output=True).returncode == 0, "iproute2")
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway_factory(tmp_path, routes=standard_routes(dead, dead), args=("--workers", "2"))
    deadline = time.monotonic() + 30

    def settled(listening: list[set[int]]) -> bool:
        # ss maps sockets to processes before it lists them: a socket made in between (a
        # worker just starting) is listed with no process, so wait for both to have theirs
        return len(listening) >= 2 and all(listening)

    while not settled(listening := _sockets(gw.port, "listening")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    # two listening sockets, one per worker process, and none held by the supervisor
    assert len(listening) == 2, listening
    owners = [next(iter(pids)) for pids in listening if len(pids) == 1]
    assert len(set(owners)) == 2 and gw.proc.pid not in owners, listening

    # 64 keep-alive connections, each answered once: the kernel hashes them over both sockets
    clients = []
    try:
        for _ in range(64):
            client = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            client.sendall(b"GET /.auth/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            clients.append(client)
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        held = Counter(pid for pids in _sockets(gw.port, "established") for pid in pids)
        # a fair split is 32/32; 12 or fewer on either side has a chance of about 5 in 10^7
        assert set(held) == set(owners) and min(held.values()) > 12, held
    finally:
        for client in clients:
            client.close()


def test_a_second_gateway_on_the_same_port_fails_instead_of_sharing_it(
    tmp_path: Path, gateway_factory
):
    dead = f"http://127.0.0.1:{free_port()}"
    first = gateway_factory(
        tmp_path / "a", routes=standard_routes(dead, dead), args=("--workers", "2")
    )
    # SO_REUSEPORT would let a second one bind the same port and take half the connections
    (tmp_path / "b").mkdir()
    config = write_config(tmp_path / "b", first.port, standard_routes(dead, dead))
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(config), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )
    assert second.returncode != 0
    assert "address already in use" in (second.stdout + second.stderr).lower()
    assert first.client().get("/.auth/health").status_code == 200
