"""The upstream assertion is signed once per session and route and reused while it is fresh.

gateway/auth/assertions.py states the rule: the same assertion is handed out again only for
exactly the same claims (session, user, route, roles, amr, and method and path when the route
binds it to the request), only while `exp - now > ASSERTION_TTL / 2`, and only while the key
that signed it is still the signing key. Attacked here through real gateways: a gateway
process (tests/conftest.py) for what needs no clock, and the in-process gateway with a
FakeClock (tests/inproc.py) for time, refresh and key rotation, in both binding modes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.auth.assertions import AssertionCache
from gateway.auth.keys import ACTIVATE_AFTER, created_at, load_keys
from gateway.auth.tokens import ASSERTION_TTL, Keyring, Tokens
from gateway.config import load_config
from gateway.config.model import KeysConfig
from gateway.sources.file import set_user
from tests.conftest import USERS, Gateway, add_users, free_port, standard_routes, write_config
from tests.inproc import FakeClock, InProcessGateway
from tests.upstream import RecordingUpstream

HALF = ASSERTION_TTL / 2
HEADER = "x-gateway-assertion"
COOKIE = "gw_session"
API = {"accept": "application/json"}
REFRESH = 20  # seconds: a refresh (and re-issue) falls inside one assertion's reuse window
BINDING = pytest.mark.parametrize(
    "binds", [True, False], ids=["bound to method and path", "per session and route"]
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


# -- helpers -------------------------------------------------------------------------------


def jwks_of(client: httpx.Client) -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(client.get("/.auth/jwks.json").json())


def verified(token: str, jwks: jwt.PyJWKSet, route: str, issuer: str, now: float) -> dict:
    """The claims of an assertion that verifies against the gateway's published keys, for
    this route, and has more than half its life left at `now` (the gateway's clock)."""
    key = jwks[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience=route,
        issuer=issuer,
        # times are checked below against the gateway's (possibly fake) clock
        options={
            "require": ["exp", "iat", "sub", "jti"],
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
        },
    )
    assert claims["exp"] - claims["iat"] == ASSERTION_TTL
    assert claims["iat"] <= now, (claims, now)
    assert claims["exp"] - now > HALF, f"handed out with {claims['exp'] - now:.2f}s left"
    return claims


def sent(
    client: httpx.Client,
    upstream: RecordingUpstream,
    path: str,
    method: str = "GET",
    headers: dict | None = None,
) -> str:
    """The assertion the upstream received for this request (which must be allowed)."""
    upstream.clear()
    response = client.request(method, path, headers=headers)
    assert response.status_code == 200, response.text
    (token,) = upstream.last().header(HEADER)
    return token


def login(gw: Gateway | InProcessGateway, user: str = "alice") -> httpx.Client:
    client = gw.client()
    response = client.post("/.auth/login", json={"username": user, "password": USERS[user][0]})
    assert response.status_code == 200, response.text
    return client


# -- who shares an assertion with whom ---------------------------------------------------
#
# Each through a gateway process (the default mode) and in process in both modes; "crm" has
# the same path as "app" on another host, so a bound assertion differs by route, not by path.

CRM = {"host": "crm.example.com"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream: RecordingUpstream) -> Iterator[Gateway]:
    from tests.conftest import make_gateway

    gw = make_gateway(tmp_path_factory.mktemp("gw-assertions"), routes(upstream))
    yield gw
    gw.stop()


def routes(upstream: RecordingUpstream) -> str:
    return standard_routes(upstream.url, upstream.url) + textwrap.dedent(
        f"""
        [[routes]]
        name = "crm"
        path = "/app"
        host = "crm.example.com"
        upstream = "{upstream.url}"
        auth = "required"
        """
    )


@pytest.fixture(params=["process", "in process, bound", "in process, per session and route"])
def any_gateway(
    request, gateway: Gateway, tmp_path: Path, upstream: RecordingUpstream, monkeypatch
) -> Iterator[tuple[Gateway | InProcessGateway, str]]:
    """(a running gateway, its issuer): the process, or one in process in either mode."""
    if request.param == "process":
        yield gateway, f"http://localhost:{gateway.port}"
        return
    gw, _clock, _ = start(tmp_path, upstream, monkeypatch, request.param.endswith("bound"))
    with gw:
        yield gw, issuer_of(gw)


def test_one_session_repeating_a_request_gets_one_signed_assertion(
    any_gateway, upstream: RecordingUpstream
):
    gw, issuer = any_gateway
    client = login(gw)
    first, second, third = (sent(client, upstream, "/app/x") for _ in range(3))
    assert first == second == third
    claims = verified(third, jwks_of(client), "app", issuer, time.time())
    assert (claims["sub"], claims["roles"], claims["amr"]) == ("alice", ["staff"], ["pwd"])


def test_two_users_on_one_route_each_get_their_own(any_gateway, upstream: RecordingUpstream):
    gw, issuer = any_gateway
    alice, bob = login(gw, "alice"), login(gw, "bob")
    for_alice, for_bob = sent(alice, upstream, "/app/x"), sent(bob, upstream, "/app/x")
    assert for_alice != for_bob
    jwks = jwks_of(alice)
    assert verified(for_alice, jwks, "app", issuer, time.time())["sub"] == "alice"
    assert verified(for_bob, jwks, "app", issuer, time.time())["roles"] == ["admin", "staff"]
    # each keeps getting their own, interleaved
    assert sent(alice, upstream, "/app/x") == for_alice
    assert sent(bob, upstream, "/app/x") == for_bob


def test_two_sessions_of_one_user_each_get_their_own(any_gateway, upstream: RecordingUpstream):
    """Same user, same roles, same route: the claims are alike but the sessions are not."""
    gw, _issuer = any_gateway
    laptop, phone = login(gw), login(gw)
    assert laptop.cookies[COOKIE] != phone.cookies[COOKIE]
    from_laptop, from_phone = sent(laptop, upstream, "/app/x"), sent(phone, upstream, "/app/x")
    assert from_laptop != from_phone
    assert sent(laptop, upstream, "/app/x") == from_laptop
    assert sent(phone, upstream, "/app/x") == from_phone


def test_one_user_on_two_routes_gets_one_assertion_per_route(
    any_gateway, upstream: RecordingUpstream
):
    gw, issuer = any_gateway
    client = login(gw)
    on_app = sent(client, upstream, "/app/x")
    on_crm = sent(client, upstream, "/app/x", headers=CRM)  # same method and path
    on_strip = sent(client, upstream, "/strip/x")
    assert len({on_app, on_crm, on_strip}) == 3
    jwks = jwks_of(client)
    for token, route in ((on_app, "app"), (on_crm, "crm"), (on_strip, "strip")):
        assert verified(token, jwks, route, issuer, time.time())["aud"] == route
    with pytest.raises(jwt.InvalidAudienceError):  # never good for another route
        verified(on_app, jwks, "crm", issuer, time.time())
    # back on each route: its own again
    assert sent(client, upstream, "/app/x") == on_app
    assert sent(client, upstream, "/app/x", headers=CRM) == on_crm


def test_a_bearer_client_of_the_same_session_and_route_gets_an_assertion_that_verifies(
    gateway: Gateway, upstream: RecordingUpstream
):
    client = login(gateway, "bob")
    bearer = gateway.client(headers={"authorization": f"Bearer {client.cookies[COOKIE]}"})
    token = sent(bearer, upstream, "/app/x")
    issuer = f"http://localhost:{gateway.port}"
    assert verified(token, jwks_of(client), "app", issuer, time.time())["sub"] == "bob"
    assert sent(bearer, upstream, "/app/x") == token


# -- in process, with a FakeClock, in both modes -------------------------------------------


def start(
    tmp_path: Path,
    upstream: RecordingUpstream,
    monkeypatch: pytest.MonkeyPatch,
    binds: bool,
    revocation: str = "lazy",
) -> tuple[InProcessGateway, FakeClock, Path]:
    extra = f"""
        [identity]
        assertion_binds_request = {"true" if binds else "false"}

        [auth]
        refresh = "{REFRESH}s"

        [session]
        access_ttl = "600s"
        revocation = "{revocation}"
        """
    port = free_port()
    path = write_config(tmp_path, port, routes(upstream), extra)
    add_users(tmp_path / "users.toml")
    clock = FakeClock(time.time())
    return InProcessGateway(load_config(path), clock), clock, path


def issuer_of(gw: InProcessGateway) -> str:
    return gw.config.server.public_url


def cache_of(gw: InProcessGateway) -> AssertionCache:
    return gw.app.runtime.nexthop.assertions


@BINDING
def test_reused_exactly_while_more_than_half_its_life_remains(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, binds: bool
):
    gw, clock, _ = start(tmp_path, upstream, monkeypatch, binds)
    with gw:
        client = login(gw)
        jwks = jwks_of(client)
        first = sent(client, upstream, "/app/x")
        claims = verified(first, jwks, "app", issuer_of(gw), clock.now)
        if binds:
            assert (claims["method"], claims["path"]) == ("GET", "/app/x")
        else:
            assert "method" not in claims and "path" not in claims
        # past the refresh: the cookie is re-issued with the same claims, the assertion stays
        clock.now = claims["iat"] + REFRESH + 1
        upstream.clear()
        refreshed = client.get("/app/x")
        assert "set-cookie" in refreshed.headers
        assert upstream.last().header(HEADER) == [first]
        # the last instant with more than half of its life left
        clock.now = claims["iat"] + HALF - 0.01
        assert sent(client, upstream, "/app/x") == first
        verified(first, jwks, "app", issuer_of(gw), clock.now)
        # half of it gone: a new one, and it too verifies with more than half its life left
        clock.now = claims["iat"] + HALF
        second = sent(client, upstream, "/app/x")
        assert second != first
        again = verified(second, jwks, "app", issuer_of(gw), clock.now)
        assert again["iat"] == claims["iat"] + HALF and again["jti"] != claims["jti"]
        assert sent(client, upstream, "/app/x") == second


@BINDING
def test_method_and_path_are_in_the_key_exactly_when_they_are_in_the_claims(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, binds: bool
):
    gw, clock, _ = start(tmp_path, upstream, monkeypatch, binds)
    with gw:
        client = login(gw)
        jwks = jwks_of(client)
        get_a = sent(client, upstream, "/app/a")
        get_b = sent(client, upstream, "/app/b")
        post_a = sent(client, upstream, "/app/a", "POST")
        if binds:
            assert len({get_a, get_b, post_a}) == 3
            for token, method, path in (
                (get_a, "GET", "/app/a"),
                (get_b, "GET", "/app/b"),
                (post_a, "POST", "/app/a"),
            ):
                claims = verified(token, jwks, "app", issuer_of(gw), clock.now)
                assert (claims["method"], claims["path"]) == (method, path)
        else:
            # what it promises (who, which route, fresh) holds for every request on the route
            assert get_a == get_b == post_a
        assert sent(client, upstream, "/app/a") == get_a


@BINDING
def test_a_role_change_at_refresh_gets_a_new_assertion_at_once(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, binds: bool
):
    gw, clock, _ = start(tmp_path, upstream, monkeypatch, binds)
    with gw:
        client = login(gw)
        jwks = jwks_of(client)
        before = sent(client, upstream, "/app/x")
        minted = verified(before, jwks, "app", issuer_of(gw), clock.now)
        assert minted["roles"] == ["staff"]
        set_user(tmp_path / "users.toml", "alice", USERS["alice"][0], ("staff", "ops"))
        clock.advance(REFRESH + 1)
        assert clock.now < minted["iat"] + HALF  # the old one is still fresh: roles decide
        after = sent(client, upstream, "/app/x")
        assert after != before
        assert verified(after, jwks, "app", issuer_of(gw), clock.now)["roles"] == ["staff", "ops"]
        assert upstream.last().header("x-user-roles") == ["staff,ops"]
        # and a role taken away again is never answered with the assertion that had it
        set_user(tmp_path / "users.toml", "alice", USERS["alice"][0], ("staff",))
        clock.advance(REFRESH + 1)
        latest = sent(client, upstream, "/app/x")
        assert verified(latest, jwks, "app", issuer_of(gw), clock.now)["roles"] == ["staff"]
        assert latest not in (before, after)


@BINDING
def test_after_a_key_rotation_the_assertion_is_signed_by_the_new_key(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, binds: bool
):
    gw, clock, config = start(tmp_path, upstream, monkeypatch, binds)
    with gw:
        client = login(gw)
        before = sent(client, upstream, "/app/x")
        old_kid = jwt.get_unverified_header(before)["kid"]
        minted = verified(before, jwks_of(client), "app", issuer_of(gw), clock.now)
        # the operator's command, in another process, on the same key directory
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "keys", "rotate", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        new_kid = load_keys(tmp_path / "keys")[-1].kid
        assert new_kid != old_kid
        # before the new key signs (every replica must have read it) the old one goes on
        clock.now = max(clock.now, created_at(new_kid)) + 6  # past the keyring's reload
        assert sent(client, upstream, "/app/x") == before
        # the new key signs: the cached assertion, though fresh, is not handed out again
        clock.now = max(clock.now, created_at(new_kid) + ACTIVATE_AFTER + 0.5)
        assert clock.now < minted["iat"] + HALF
        after = sent(client, upstream, "/app/x")
        assert jwt.get_unverified_header(after)["kid"] == new_kid
        jwks = jwks_of(client)  # as an upstream refetches on a new kid
        assert verified(after, jwks, "app", issuer_of(gw), clock.now)["sub"] == "alice"
        assert sent(client, upstream, "/app/x") == after
        cached = [entry[0].decode() for entry in cache_of(gw)._entries.values()]
        assert [jwt.get_unverified_header(token)["kid"] for token in cached] == [new_kid]


@pytest.mark.parametrize("revocation", ["lazy", "strict"])
def test_the_identity_of_an_ended_session_never_reaches_the_next_hop(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, revocation: str
):
    """How an ended session is known on the request path: authn refuses it (strict: the next
    request; lazy: its next re-issue, README "Sessions") before the next hop is asked, so its
    cached assertion is never handed out again, and is swept once past its reuse point."""
    gw, clock, _ = start(tmp_path, upstream, monkeypatch, False, revocation)
    with gw:
        client = login(gw)
        token = client.cookies[COOKIE]
        before = sent(client, upstream, "/app/x")
        minted = jwt.decode(before, options={"verify_signature": False})
        assert len(cache_of(gw)) == 1
        assert client.post("/.auth/logout", json={}).status_code in (200, 204)
        # the old cookie, sent as is every time (a refusal's clearing Set-Cookie changes nothing)
        replay = gw.client(headers={**API, "cookie": f"{COOKIE}={token}"})
        if revocation == "lazy":
            # documented: a still-young token passes until its re-issue; it gets what it had,
            # never a longer-lived one
            assert sent(replay, upstream, "/app/x") == before
            clock.now = minted["iat"] + REFRESH + 1
        upstream.clear()
        assert replay.get("/app/x").status_code == 401
        assert replay.get("/app/y").status_code == 401
        time.sleep(0.1)
        assert upstream.requests == []
        # the ended session's entry goes once it is stale, as other sessions come in
        clock.now = minted["iat"] + HALF
        sent(login(gw, "bob"), upstream, "/app/x")
        assert [key[1] for key in cache_of(gw)._entries] == ["bob"]


# -- the cache alone: its bounds ------------------------------------------------------------


@pytest.fixture
def minting(tmp_path: Path) -> tuple[Tokens, FakeClock]:
    from gateway.auth.keys import write_key

    write_key(tmp_path, "EdDSA", now=time.time() - 60)
    clock = FakeClock(time.time())
    keyring = Keyring(KeysConfig(dir=tmp_path, algorithm="EdDSA"), clock)
    return Tokens(keyring, "http://gw.example", 600, clock), clock


def test_the_cache_holds_at_most_max_entries_least_recently_used_out_first(minting):
    tokens, _clock = minting
    cache = AssertionCache(tokens, max_entries=8)
    kept = cache.assertion("sid-keep", "keep", ("staff",), "app", ("pwd",))
    for i in range(100):
        cache.assertion(f"sid-{i}", f"user{i}", ("staff",), "app", ("pwd",))
        # the one in use is recently used: it stays
        assert cache.assertion("sid-keep", "keep", ("staff",), "app", ("pwd",)) == kept
        assert len(cache) <= 8
    assert {key[1] for key in cache._entries} == {"keep", *(f"user{i}" for i in range(93, 100))}


def test_the_cache_holds_at_most_max_bytes_and_does_not_keep_an_oversized_one(minting):
    tokens, _clock = minting
    cache = AssertionCache(tokens, max_bytes=256 * 1024)  # and no entry over 1/64 of it
    for i in range(500):
        cache.assertion(f"sid-{i}", f"user{i}", ("staff",), "app", ("pwd",), "GET", f"/x/{i}")
        assert cache._bytes <= 256 * 1024
    assert 0 < len(cache) < 500
    assert cache._bytes == sum(entry[3] for entry in cache._entries.values())
    huge = tuple(f"group-{i:04d}" for i in range(400))  # 4 KB of roles: signed, not kept
    first = cache.assertion("sid-big", "big", huge, "app", ("pwd",))
    assert cache.assertion("sid-big", "big", huge, "app", ("pwd",)) != first
    assert all(key[0] != "sid-big" for key in cache._entries)


def test_stale_entries_are_swept_and_a_session_can_be_forgotten(minting):
    tokens, clock = minting
    cache = AssertionCache(tokens)
    for i in range(3):
        cache.assertion(f"sid-{i}", f"user{i}", ("staff",), "app", ("pwd",))
    cache.assertion("sid-0", "user0", ("staff",), "other", ("pwd",))
    assert cache.forget_session("sid-0") == 2 and len(cache) == 2
    clock.advance(HALF + 1)
    cache.assertion("sid-9", "user9", ("staff",), "app", ("pwd",))
    assert [key[0] for key in cache._entries] == ["sid-9"]
    assert cache.forget_user("user9") == 1 and cache._bytes == 0


def test_a_step_up_gets_a_new_assertion_with_the_new_amr(minting):
    """No sign-in path adds a factor yet, so this is the cache alone: amr is in the key."""
    tokens, _clock = minting
    cache = AssertionCache(tokens)
    password = cache.assertion("sid-1", "alice", ("staff",), "app", ("pwd",))
    stepped = cache.assertion("sid-1", "alice", ("staff",), "app", ("pwd", "otp"))
    assert password != stepped
    amr = [jwt.decode(t, options={"verify_signature": False})["amr"] for t in (password, stepped)]
    assert amr == [["pwd"], ["pwd", "otp"]]
    assert cache.assertion("sid-1", "alice", ("staff",), "app", ("pwd", "otp")) == stepped
