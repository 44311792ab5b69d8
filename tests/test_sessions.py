"""Session lifetimes driven by an injectable clock: re-issue, idle and absolute timeouts, revocation.

The gateway runs in this process (uvicorn on a thread) with a FakeClock, against a
real SQLite file and a real upstream; time only moves when a test moves it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.auth.sessions import STRICT_CACHE_SECONDS
from gateway.config import load_config
from tests.conftest import USERS, add_users, free_port, standard_routes, write_config
from tests.inproc import FakeClock, InProcessGateway
from tests.upstream import RecordingUpstream

ACCESS_TTL = 600  # 10 minutes: re-issue after 5
IDLE = 3600
MAX_AGE = 4 * 3600
COOKIE = "gw_session"


def session_config(revocation: str) -> str:
    # refresh (which re-issues too) longer than half of access_ttl: these tests time the half-life
    return f"""
        [auth]
        refresh = "1h"

        [session]
        access_ttl = "{ACCESS_TTL}s"
        idle_timeout = "{IDLE}s"
        max_age = "{MAX_AGE}s"
        revocation = "{revocation}"
        """


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def start(tmp_path: Path, upstream: RecordingUpstream, revocation: str = "lazy"):
    port = free_port()
    routes = standard_routes(upstream.url, upstream.url)
    path = write_config(tmp_path, port, routes, session_config(revocation))
    add_users(tmp_path / "users.toml")
    clock = FakeClock(time.time())
    return InProcessGateway(load_config(path), clock), clock, path


def login(gw: InProcessGateway, user: str = "alice") -> httpx.Client:
    client = gw.client()
    response = client.post("/.auth/login", json={"username": user, "password": USERS[user][0]})
    assert response.status_code == 200, response.text
    return client


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_cookie_is_reissued_only_past_half_life(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start(tmp_path, upstream)
    with gw:
        client = login(gw)
        first = client.cookies[COOKIE]
        clock.advance(ACCESS_TTL / 2 - 5)
        early = client.get("/app/x")
        assert early.status_code == 200 and "set-cookie" not in early.headers
        clock.advance(10)
        late = client.get("/app/x")
        assert late.status_code == 200
        assert f"{COOKIE}=" in late.headers["set-cookie"]
        second = client.cookies[COOKIE]
        assert second != first
        assert claims_of(second)["iat"] == int(clock.now)
        assert claims_of(second)["sid"] == claims_of(first)["sid"]


def test_an_expired_token_is_reissued_while_the_session_lives(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, _ = start(tmp_path, upstream)
    with gw:
        client = login(gw)
        clock.advance(ACCESS_TTL + 60)  # token expired, session still inside idle_timeout
        response = client.get("/app/x")
        assert response.status_code == 200
        assert claims_of(client.cookies[COOKIE])["exp"] == int(clock.now) + ACCESS_TTL


def test_idle_timeout_ends_the_session(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start(tmp_path, upstream)
    with gw:
        client = login(gw)
        clock.advance(IDLE + 1)
        response = client.get("/app/x", headers={"accept": "application/json"})
        assert response.status_code == 401
        assert response.json()["error"] == "unauthenticated"
        assert COOKIE not in client.cookies  # the dead cookie is cleared


def test_use_keeps_an_idle_session_alive_until_max_age(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start(tmp_path, upstream)
    with gw:
        client = login(gw)
        used = 0.0
        # a request every 50 minutes: never idle for an hour, re-issued every time
        while used + 3000 < MAX_AGE:
            clock.advance(3000)
            used += 3000
            assert client.get("/app/x").status_code == 200
        clock.advance(MAX_AGE - used + 1)  # past the absolute limit, though recently used
        assert client.get("/app/x", headers={"accept": "application/json"}).status_code == 401


def test_lazy_revocation_takes_effect_at_the_next_reissue(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, _path = start(tmp_path, upstream, "lazy")
    with gw:
        victim = login(gw)
        other = login(gw)
        assert other.post("/.auth/logout", json={"all": True}).status_code in (200, 204)
        # lazy: the unexpired token still passes before its half-life (documented)
        assert victim.get("/app/x").status_code == 200
        clock.advance(ACCESS_TTL / 2 + 1)
        assert victim.get("/app/x", headers={"accept": "application/json"}).status_code == 401


def test_an_expired_token_of_a_revoked_session_is_refused(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, _path = start(tmp_path, upstream, "lazy")
    with gw:
        client = login(gw)
        token = client.cookies[COOKIE]
        assert client.post("/.auth/logout", json={}).status_code in (200, 204)
        clock.advance(ACCESS_TTL + 1)
        replay = gw.client(cookies={COOKIE: token})
        assert replay.get("/app/x", headers={"accept": "application/json"}).status_code == 401


def test_strict_revocation_by_an_operator_applies_within_the_cache_window(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, path = start(tmp_path, upstream, "strict")
    with gw:
        client = login(gw)
        assert client.get("/app/x").status_code == 200  # the good standing is cached now
        revoke = subprocess.run(
            [sys.executable, "-m", "gateway", "sessions", "revoke", "alice", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert revoke.returncode == 0, revoke.stderr
        assert "revoked 1 session(s) of alice" in revoke.stdout
        # another process revoked it: this process may trust its cache for STRICT_CACHE_SECONDS
        clock.advance(STRICT_CACHE_SECONDS / 2)
        assert client.get("/app/x").status_code == 200
        clock.advance(STRICT_CACHE_SECONDS)
        refused = client.get("/app/x", headers={"accept": "application/json"})
        assert refused.status_code == 401


def test_strict_logout_in_this_process_applies_at_once(tmp_path: Path, upstream: RecordingUpstream):
    gw, _clock, _ = start(tmp_path, upstream, "strict")
    with gw:
        client = login(gw)
        token = client.cookies[COOKIE]
        assert client.get("/app/x").status_code == 200
        assert client.post("/.auth/logout", json={}).status_code in (200, 204)
        replay = gw.client(cookies={COOKIE: token})
        assert replay.get("/app/x", headers={"accept": "application/json"}).status_code == 401


def test_strict_mode_refuses_a_revoked_bearer_token(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start(tmp_path, upstream, "strict")
    with gw:
        client = login(gw)
        token = client.cookies[COOKIE]
        bearer = gw.client(
            headers={"authorization": f"Bearer {token}", "accept": "application/json"}
        )
        assert bearer.get("/app/x").status_code == 200
        assert client.post("/.auth/logout", json={}).status_code in (200, 204)
        clock.advance(STRICT_CACHE_SECONDS + 0.1)
        assert bearer.get("/app/x").status_code == 401


def test_logout_everywhere_ends_every_session_of_the_user_only(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, path = start(tmp_path, upstream, "strict")
    with gw:
        laptop, phone, bob = login(gw), login(gw), login(gw, "bob")
        listed = subprocess.run(
            [sys.executable, "-m", "gateway", "sessions", "list", "alice", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and listed.stdout.count("active") == 2
        assert phone.post("/.auth/logout?all=true").status_code in (200, 204, 303)
        clock.advance(STRICT_CACHE_SECONDS + 0.1)
        assert laptop.get("/app/x", headers={"accept": "application/json"}).status_code == 401
        assert bob.get("/app/x").status_code == 200
