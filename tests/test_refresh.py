"""A refresh asks the users source once per session per `[auth] refresh`, not once per request.

A client that never stores the re-issued cookie (a script with a fixed Cookie header, a burst of
parallel requests carrying the same old token) is answered from that one answer until the next
refresh is due, and is still refused at the first request after a refresh once the source has
removed the user. In-process gateway, FakeClock, real users file, real SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.sources.file import remove_user, set_user
from tests.conftest import USERS, add_users, free_port, standard_routes, write_config
from tests.inproc import FakeClock, InProcessGateway
from tests.upstream import RecordingUpstream

REFRESH = 30
COOKIE = "gw_session"
API = {"accept": "application/json"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def start(tmp_path: Path, upstream: RecordingUpstream, revocation: str):
    extra = f"""
        [auth]
        refresh = "{REFRESH}s"

        [session]
        access_ttl = "600s"
        revocation = "{revocation}"
        """
    path = write_config(tmp_path, free_port(), standard_routes(upstream.url, upstream.url), extra)
    add_users(tmp_path / "users.toml")
    clock = FakeClock(time.time())
    return InProcessGateway(load_config(path), clock), clock


def old_token(gw: InProcessGateway) -> str:
    with gw.client() as client:
        response = client.post(
            "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
        )
        assert response.status_code == 200, response.text
        return client.cookies[COOKIE]


def with_cookie(gw: InProcessGateway, token: str, path: str = "/app/x"):
    # a fresh client each time: the re-issued cookie is never kept, as wrk or curl would do
    with gw.client() as client:
        return client.get(path, headers={"cookie": f"{COOKIE}={token}", **API})


@pytest.mark.parametrize("revocation", ["lazy", "strict"])
def test_a_client_that_keeps_its_old_cookie_is_refreshed_once_per_interval(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock = start(tmp_path, upstream, revocation)
    users_file = tmp_path / "users.toml"
    with gw:
        token = old_token(gw)
        clock.advance(REFRESH + 1)
        first = with_cookie(gw, token)
        assert first.status_code == 200
        assert COOKIE in first.headers.get("set-cookie", "")  # asked, re-issued
        # a role given at the source: the answer from the refresh above still stands
        set_user(users_file, "alice", USERS["alice"][0], ("staff", "ops"))
        for _ in range(5):
            clock.advance(REFRESH / 10)
            again = with_cookie(gw, token)
            assert again.status_code == 200
            assert "set-cookie" not in again.headers  # not asked again, nothing re-issued
            assert upstream.last().header("x-user-roles") == ["staff"]
        # the next refresh asks again: the new role arrives, on the same old cookie
        clock.advance(REFRESH / 2 + 1)
        later = with_cookie(gw, token)
        assert later.status_code == 200
        assert COOKIE in later.headers.get("set-cookie", "")
        assert upstream.last().header("x-user-roles") == ["staff,ops"]
        # removed at the source: refused at the first request after the next refresh
        remove_user(users_file, "alice")
        clock.advance(REFRESH + 1)
        refused = with_cookie(gw, token)
        assert refused.status_code == 401
        assert "Max-Age=0" in refused.headers.get("set-cookie", "")
        assert with_cookie(gw, token).status_code == 401


def test_a_user_restored_at_the_source_is_not_let_back_in_on_an_old_cookie(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock = start(tmp_path, upstream, "lazy")
    users_file = tmp_path / "users.toml"
    with gw:
        token = old_token(gw)
        remove_user(users_file, "alice")
        clock.advance(REFRESH + 1)
        assert with_cookie(gw, token).status_code == 401
        # the removal ended the session in the store: putting the user back opens nothing
        set_user(users_file, "alice", USERS["alice"][0], ("staff",))
        clock.advance(1)
        assert with_cookie(gw, token).status_code == 401
