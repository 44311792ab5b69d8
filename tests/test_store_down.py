"""The store is down: what needs it fails closed with 503 JSON, /health stays up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.tokens import Keyring, Tokens
from gateway.config import load_config
from tests.conftest import USERS, Gateway, closed_port, make_gateway, standard_routes
from tests.upstream import RecordingUpstream

JSON = {"accept": "application/json"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def start_without_store(directory: Path, upstream: RecordingUpstream, revocation: str) -> Gateway:
    dead_store = f"redis://127.0.0.1:{closed_port()}/0"
    extra = f'[session]\nrevocation = "{revocation}"\naccess_ttl = "10m"'
    routes = standard_routes(upstream.url, upstream.url)
    return make_gateway(directory, routes, extra, store=dead_store)


def session_token(gw: Gateway, issued_ago: float = 0.0) -> str:
    """A token signed with the gateway's own key, as a login would have issued it."""
    config = load_config(gw.config)
    tokens = Tokens(
        Keyring(config.keys),
        config.server.public_url,
        config.session.access_ttl,
        lambda: time.time() - issued_ago,
    )
    token, _ = tokens.mint_session("alice", ("staff",), "sid-from-before-the-outage")
    return token


@pytest.fixture(scope="module")
def lazy(tmp_path_factory, upstream) -> Iterator[Gateway]:
    gw = start_without_store(tmp_path_factory.mktemp("lazy"), upstream, "lazy")
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory, upstream) -> Iterator[Gateway]:
    gw = start_without_store(tmp_path_factory.mktemp("strict"), upstream, "strict")
    yield gw
    gw.stop()


def test_health_stays_up_and_ready_says_not_ready(lazy: Gateway):
    client = lazy.client()
    assert client.get("/.auth/health").status_code == 200
    ready = client.get("/.auth/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "store": "unavailable"}


def test_login_fails_closed_with_503_json(lazy: Gateway):
    response = lazy.client().post(
        "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
    )
    assert response.status_code == 503
    assert response.json()["error"] == "store_unavailable"
    assert "set-cookie" not in response.headers


def test_strict_mode_refuses_every_authenticated_request(
    strict: Gateway, upstream: RecordingUpstream
):
    upstream.clear()
    client = strict.client(cookies={"gw_session": session_token(strict)})
    response = client.get("/app/page", headers=JSON)
    assert response.status_code == 503 and response.json()["error"] == "store_unavailable"
    assert upstream.requests == []
    assert strict.client().get("/").status_code == 200  # public traffic needs no store


def test_lazy_mode_serves_a_valid_token_but_not_a_reissue(
    lazy: Gateway, upstream: RecordingUpstream
):
    fresh = lazy.client(cookies={"gw_session": session_token(lazy)})
    assert fresh.get("/app/page").status_code == 200
    due = lazy.client(cookies={"gw_session": session_token(lazy, issued_ago=400)})
    assert due.get("/app/page").status_code == 200  # past half-life: served, not re-issued
    expired = lazy.client(cookies={"gw_session": session_token(lazy, issued_ago=900)})
    refused = expired.get("/app/page", headers=JSON)
    assert refused.status_code == 503
    upstream.clear()
    assert expired.get("/app/page", headers=JSON).status_code == 503
    assert upstream.requests == []


def test_logout_without_a_store_does_not_pretend(lazy: Gateway):
    client = lazy.client(cookies={"gw_session": session_token(lazy)})
    response = client.post("/.auth/logout", json={})
    assert response.status_code == 503
