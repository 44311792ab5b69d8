"""A real Redis Sentinel failover under load: the gateway follows the new primary.

A primary, its replica and three Sentinels (quorum 2, so a failover needs a real majority, as in
production; one Sentinel would need quorum 1 and skip the agreement this is about) run on free
127.0.0.1 ports in temporary folders. A gateway in strict revocation mode uses them through a
`redis+sentinel://` URL. While a thread keeps signing in and making requests, the primary is
killed with SIGKILL. Shown: requests fail closed (503) while there is no primary, never served
with a revoked session; sign-ins succeed again within 10 s of the kill; the session made before
the failover still works; sessions revoked just before the kill (CLI), after it by sign-out and
after it by the CLI are refused; what is written afterwards is on the promoted replica.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import USERS, Gateway, GatewayFactory, closed_port, standard_routes
from tests.redis_servers import (
    SERVICE,
    RedisProcess,
    need_sentinel,
    primary_port,
    start_redis,
    start_sentinel,
    wait_for,
)
from tests.upstream import RecordingUpstream

JSON = {"accept": "application/json"}
COOKIE = "gw_session"
FOLLOW_WITHIN = 10.0  # seconds from the kill to the first successful sign-in again
PEOPLE = {
    **USERS,
    "carol": ("carol-password-1", ("staff",)),
    "dave": ("dave-password-1", ("staff",)),
    "erin": ("erin-password-1", ("staff",)),
}


@dataclass
class Topology:
    """Two data nodes and three Sentinels."""

    nodes: list[RedisProcess]
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary(self) -> RedisProcess:
        """The data node the Sentinels name as primary now (on a busy machine, not
        necessarily the one started as primary)."""
        port = primary_port(self.sentinels[0])
        return next(node for node in self.nodes if node.port == port)

    def replica(self) -> RedisProcess:
        primary = self.primary()
        return next(node for node in self.nodes if node is not primary)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    need_sentinel()
    started: list[RedisProcess] = []
    try:
        primary = start_redis(tmp_path / "primary")
        started.append(primary)
        replica = start_redis(tmp_path / "replica", replica_of=primary.port)
        started.append(replica)
        sentinels = []
        for n in range(3):
            # down after 1 s without an answer; a failover that stalls is retried after 2 x 3 s
            sentinel = start_sentinel(tmp_path / f"sentinel{n}", primary.port, quorum=2)
            started.append(sentinel)
            sentinels.append(sentinel)

        def ready() -> bool:
            if replica.client().info("replication")["master_link_status"] != "up":
                return False
            for sentinel in sentinels:
                state = sentinel.client().sentinel_master(SERVICE)
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                    return False
            return True

        # the Sentinels find each other through the primary (a hello every 2 s)
        wait_for(ready, 15, "three Sentinels that know each other and the replica")
        yield Topology([primary, replica], sentinels)
    finally:
        for process in reversed(started):
            process.kill()


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def sign_in(gw: Gateway, user: str) -> httpx.Response:
    with gw.client(timeout=10) as client:
        return client.post("/.auth/login", json={"username": user, "password": PEOPLE[user][0]})


def token_of(gw: Gateway, user: str) -> str:
    response = sign_in(gw, user)
    assert response.status_code == 200, response.text
    return response.cookies[COOKIE]


def sid_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def get_page(gw: Gateway, token: str) -> httpx.Response:
    with gw.client(cookies={COOKIE: token}, timeout=10) as client:
        return client.get("/app/page", headers=JSON)


def revoke_with_cli(gw: Gateway, user: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "sessions", "revoke", user, "-c", str(gw.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"revoked 1 session(s) of {user}" in done.stdout


def user_seen(response: httpx.Response) -> list[str]:
    """The X-User-Id the upstream got, from its echo of the request."""
    return [value for name, value in response.json()["headers"] if name.lower() == "x-user-id"]


@dataclass
class Load:
    """Sign-ins and requests from a thread; each event is (seconds since start, kind, status)."""

    gw: Gateway
    tokens: dict[str, str]
    events: list[tuple[float, str, int]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic() - self.started
            try:
                status = sign_in(self.gw, "alice").status_code
            except httpx.HTTPError as exc:
                self.wrong.append(f"sign-in at {at:.2f}s: {exc!r}")
                status = 0
            self.events.append((at, "signin", status))
            for kind, token in self.tokens.items():
                at = time.monotonic() - self.started
                try:
                    response = get_page(self.gw, token)
                except httpx.HTTPError as exc:
                    self.wrong.append(f"{kind} at {at:.2f}s: {exc!r}")
                    continue
                self.events.append((at, kind, response.status_code))
                if response.status_code == 200 and user_seen(response) != ["alice"]:
                    self.wrong.append(f"{kind} at {at:.2f}s served as {user_seen(response)}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def of(self, kind: str, after: float = 0.0) -> list[tuple[float, int]]:
        return [(at, status) for at, k, status in self.events if k == kind and at >= after]


def test_the_gateway_follows_a_sentinel_failover(
    topology: Topology, gateway_factory: GatewayFactory, upstream: RecordingUpstream
):
    routes = standard_routes(upstream.url, f"http://127.0.0.1:{closed_port()}")
    gw = gateway_factory(
        routes=routes,
        extra='[session]\nrevocation = "strict"',
        users=PEOPLE,
        store=topology.url,
    )
    kept, bob, carol, dave, erin = (token_of(gw, user) for user in PEOPLE)
    for token in (kept, bob, carol, dave, erin):
        assert get_page(gw, token).status_code == 200
    revoke_with_cli(gw, "bob")  # long before the failover
    time.sleep(1.1)  # past the strict mode's 1 s memory of bob's good standing
    assert get_page(gw, bob).status_code == 401

    load = Load(gw, {"kept": kept, "revoked": bob})
    try:
        time.sleep(1.0)
        primary, replica = topology.primary(), topology.replica()
        revoke_with_cli(gw, "carol")  # and at once, before a replica could lag behind: the kill
        primary.kill()
        killed = time.monotonic() - load.started
        wait_for(
            lambda: any(status == 200 for _, status in load.of("signin", after=killed)),
            FOLLOW_WITHIN + 5,
            "a sign-in after the kill",
        )
        time.sleep(1.5)  # requests and sign-ins go on against the new primary
    finally:
        load.stop()

    assert load.wrong == []
    assert topology.primary() is replica
    signins = load.of("signin", after=killed)
    first_ok = min(at for at, status in signins if status == 200)
    print(f"first sign-in after the kill: {first_ok - killed:.2f}s")
    assert first_ok - killed <= FOLLOW_WITHIN
    # without a primary the gateway fails closed; with the new one it signs in and serves again
    assert {status for _, status in load.of("signin")} <= {200, 503}
    assert {status for _, status in load.of("kept")} <= {200, 503}
    settled = first_ok + 0.5
    assert {status for _, status in load.of("signin", after=settled)} == {200}
    assert {status for _, status in load.of("kept", after=settled)} == {200}
    # bob's revoked session was never served: refused before, during and after the failover
    assert load.of("revoked") and {status for _, status in load.of("revoked")} <= {401, 503}
    assert {status for _, status in load.of("revoked", after=settled)} == {401}

    # revoked just before the kill: the revocation was acknowledged once the replica had it
    assert get_page(gw, carol).status_code == 401
    # signed out after the failover
    with gw.client(cookies={COOKIE: dave}) as client:
        assert client.post("/.auth/logout", json={}).status_code in (200, 204)
    # revoked by the CLI after the failover: the CLI finds the new primary too
    revoke_with_cli(gw, "erin")
    time.sleep(1.1)
    for token in (bob, carol, dave, erin):
        assert get_page(gw, token).status_code == 401
    # the session made before the failover still works, as alice
    response = get_page(gw, kept)
    assert response.status_code == 200 and user_seen(response) == ["alice"]
    # a session made after the failover lives on the promoted replica
    fresh = sid_of(token_of(gw, "alice"))
    assert replica.client().exists(f"gateway:session:{fresh}") == 1
