"""Two gateway processes behind one imaginary load balancer: one Redis, one key directory.

Each pair shares the users file, the key directory and a Redis database of the
tests' own; both are configured with the same public_url, as replicas are.
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
import redis

from gateway.auth.sessions import STRICT_CACHE_SECONDS
from tests.conftest import USERS, Gateway, add_users, make_gateway, standard_routes
from tests.services import need, port_open
from tests.upstream import RecordingUpstream

REDIS_URL = "redis://127.0.0.1:6379/14"
COOKIE = "gw_session"
JSON = {"accept": "application/json"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def start_pair(
    base: Path, upstream: RecordingUpstream, session: str, limits: str = ""
) -> tuple[Gateway, Gateway]:
    need("redis", port_open("127.0.0.1", 6379), "nothing listens on 127.0.0.1:6379")
    redis.Redis.from_url(REDIS_URL).flushdb()
    shared = base / "shared"
    shared.mkdir()
    add_users(shared / "users.toml")
    routes = standard_routes(upstream.url, upstream.url)
    replicas = []
    for name in ("a", "b"):
        extra = "\n".join(
            [
                "[server]",
                'public_url = "http://localhost:8080"',
                "[auth]",
                f'users_file = "{shared / "users.toml"}"',
                "[keys]",
                f'dir = "{shared / "keys"}"',
                session,
                limits,
            ]
        )
        # the users file is the shared one named in [auth], added above
        replicas.append(make_gateway(base / name, routes, extra, users=None, store=REDIS_URL))
    return replicas[0], replicas[1]


@pytest.fixture
def strict_pair(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[tuple[Gateway, Gateway]]:
    pair = start_pair(tmp_path, upstream, '[session]\nrevocation = "strict"')
    yield pair
    for gw in pair:
        gw.stop()


@pytest.fixture
def lazy_pair(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[tuple[Gateway, Gateway]]:
    pair = start_pair(tmp_path, upstream, '[session]\nrevocation = "lazy"\naccess_ttl = "4s"')
    yield pair
    for gw in pair:
        gw.stop()


def with_cookie(gw: Gateway, token: str) -> httpx.Client:
    return gw.client(cookies={COOKIE: token})


def test_a_login_on_one_replica_works_on_the_other(strict_pair):
    a, b = strict_pair
    token = a.login("alice").cookies[COOKIE]
    me = with_cookie(b, token).get("/.auth/me")
    assert me.status_code == 200 and me.json()["sub"] == "alice"
    assert with_cookie(b, token).get("/app/page").status_code == 200


def test_strict_logout_on_one_replica_is_refused_on_the_other(strict_pair):
    a, b = strict_pair
    on_a = a.login("alice")
    token = on_a.cookies[COOKIE]
    assert on_a.get("/app/page").status_code == 200  # A now holds the session as good
    on_b = with_cookie(b, token)
    assert on_b.post("/.auth/logout", json={}).status_code in (200, 204)
    # A trusts what it checked for at most STRICT_CACHE_SECONDS (stated in the README)
    time.sleep(STRICT_CACHE_SECONDS + 0.2)
    assert with_cookie(a, token).get("/app/page", headers=JSON).status_code == 401


def test_strict_logout_is_refused_at_once_where_nothing_was_cached(strict_pair):
    a, b = strict_pair
    token = a.login("alice").cookies[COOKIE]
    assert with_cookie(b, token).post("/.auth/logout", json={}).status_code in (200, 204)
    assert with_cookie(a, token).get("/app/page", headers=JSON).status_code == 401


def test_lazy_logout_is_refused_by_the_next_reissue(lazy_pair):
    a, b = lazy_pair
    token = a.login("alice").cookies[COOKIE]
    assert with_cookie(b, token).post("/.auth/logout", json={}).status_code in (200, 204)
    # lazy: until the token is half through its 4 s life, A does not ask the store
    time.sleep(2.2)
    refused = with_cookie(a, token).get("/app/page", headers=JSON)
    assert refused.status_code == 401
    assert f"{COOKIE}=;" in refused.headers.get("set-cookie", "")


def test_a_key_rotated_on_one_replica_is_accepted_on_the_other(strict_pair):
    a, b = strict_pair
    first = jwt.get_unverified_header(a.login("alice").cookies[COOKIE])["kid"]
    rotate = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "rotate", "-c", str(a.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 0, rotate.stderr
    deadline = time.monotonic() + 30
    while True:  # the new key signs once every replica has had time to read it
        token = a.login("alice").cookies[COOKIE]
        if jwt.get_unverified_header(token)["kid"] != first:
            break
        assert time.monotonic() < deadline, "replica A never started signing with the new key"
        time.sleep(0.5)
    assert with_cookie(b, token).get("/.auth/me").status_code == 200
    jwks = b.client().get("/.auth/jwks.json").json()
    assert {k["kid"] for k in jwks["keys"]} >= {first, jwt.get_unverified_header(token)["kid"]}


def test_login_failures_are_counted_across_replicas(tmp_path: Path, upstream: RecordingUpstream):
    a, b = start_pair(
        tmp_path,
        upstream,
        "",
        '[login_limits]\nmax_failures = 3\nwindow = "5m"\nlockout = "15m"',
    )
    try:
        wrong = {"username": "alice", "password": "wrong-password"}
        for gw in (a, b, a):
            assert gw.client().post("/.auth/login", json=wrong).status_code == 401
        right = {"username": "alice", "password": USERS["alice"][0]}
        locked = b.client().post("/.auth/login", json=right)
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 800
    finally:
        a.stop()
        b.stop()
