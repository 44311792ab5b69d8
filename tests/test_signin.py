"""Password sign-in against the real users file and a memory store, then through a real gateway."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.auth.signin import (
    InvalidCredentials,
    LockedOut,
    SignedIn,
    SignInRefused,
    SourceUnavailable,
)
from gateway.config import load_config
from gateway.runtime import Runtime, build_runtime
from gateway.sources.base import canonical_username
from gateway.store import open_store
from tests.conftest import Gateway, add_users, free_port, write_config
from tests.upstream import RecordingUpstream

MAX_FAILURES = 3
LOCKOUT = 600
ROUTES = textwrap.dedent(
    """
    [[routes]]
    name = "site"
    path = "/"
    upstream = "http://127.0.0.1:9"
    auth = "public"
    """
)
LIMITS = f"""
[login_limits]
max_failures = {MAX_FAILURES}
window = "5m"
lockout = "{LOCKOUT}s"
"""


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def runtime(directory: Path, clock: Clock, extra: str = "") -> Runtime:
    config = load_config(write_config(directory, free_port(), ROUTES, LIMITS + extra))
    return build_runtime(config, clock, open_store("memory://", config.base_dir))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(tmp_path: Path, clock: Clock) -> Runtime:
    add_users(tmp_path / "users.toml")
    return runtime(tmp_path, clock)


ALICE = SignedIn("alice", ("staff",), "file", ("pwd",))
BOB = SignedIn("bob", ("admin", "staff"), "file", ("pwd",))


@pytest.mark.parametrize(
    "username,password,expected",
    [
        ("alice", "alice-password-1", ALICE),
        ("bob", "bob-password-1", BOB),
        ("ALICE", "alice-password-1", ALICE),
        (" Alice ", "alice-password-1", ALICE),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice-password-1", ALICE),
        ("\uff22\uff2f\uff22", "bob-password-1", BOB),
    ],
    ids=[
        "the right password signs alice in with amr pwd",
        "bob keeps both his roles",
        "an upper-case name is the same user",
        "a padded mixed-case name is the same user",
        "a fullwidth name is the same user",
        "a fullwidth upper-case name is the same user",
    ],
)
async def test_the_right_password_yields_the_canonical_user(rt, username, password, expected):
    assert await rt.signin.sign_in(username, password, "192.0.2.1") == expected
    assert canonical_username(username) == expected.user_id


@pytest.mark.parametrize(
    "username,password",
    [
        ("alice", "not-alices-password"),
        ("alice", "ALICE-PASSWORD-1"),
        ("alice", ""),
        ("mallory", "alice-password-1"),
        ("\uff4d\uff41\uff4c\uff4c\uff4f\uff52\uff59", "whatever"),
    ],
    ids=[
        "a wrong password is refused",
        "a password is compared case-sensitively",
        "an empty password is refused",
        "an unknown user is refused",
        "an unknown fullwidth name is refused",
    ],
)
async def test_wrong_credentials_are_refused_alike(rt, username, password):
    with pytest.raises(InvalidCredentials) as refused:
        await rt.signin.sign_in(username, password, "192.0.2.1")
    assert refused.value.user == canonical_username(username)
    assert str(refused.value) == "invalid credentials"


@pytest.mark.parametrize(
    "spellings",
    [
        ["alice"] * MAX_FAILURES,
        ["ALICE", " alice ", "\uff41\uff4c\uff49\uff43\uff45"],
    ],
    ids=["failures under one spelling", "failures under several spellings of one name"],
)
async def test_a_locked_out_user_is_refused_even_with_the_right_password(rt, clock, spellings):
    for spelling in spellings:
        with pytest.raises(InvalidCredentials):
            await rt.signin.sign_in(spelling, "guess", "192.0.2.1")
    # from another address too: the user's own counter locks
    with pytest.raises(LockedOut) as locked:
        await rt.signin.sign_in("alice", "alice-password-1", "198.51.100.7")
    assert locked.value.user == "alice"
    assert 0 < locked.value.retry_after <= LOCKOUT
    # bob is not affected
    assert await rt.signin.sign_in("bob", "bob-password-1", "198.51.100.7") == BOB
    clock.now += LOCKOUT + 1
    assert await rt.signin.sign_in("alice", "alice-password-1", "198.51.100.7") == ALICE


async def test_a_good_sign_in_forgets_earlier_failures(rt):
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(InvalidCredentials):
            await rt.signin.sign_in("alice", "guess", "192.0.2.1")
    signed = await rt.signin.sign_in("alice", "alice-password-1", "192.0.2.1")
    assert signed == ALICE
    await rt.signin.completed(signed)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(InvalidCredentials):
            await rt.signin.sign_in("alice", "guess", "192.0.2.1")
    assert await rt.signin.sign_in("alice", "alice-password-1", "192.0.2.1") == ALICE


async def test_the_password_alone_forgets_no_failure_while_a_factor_is_due(rt):
    """sign_in does not forget: the caller does once the sign-in is whole, so a right
    password before a second factor leaves the count of wrong passwords and codes as it is."""
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(InvalidCredentials):
            await rt.signin.sign_in("alice", "guess", "192.0.2.1")
    assert await rt.signin.sign_in("alice", "alice-password-1", "192.0.2.1") == ALICE
    with pytest.raises(InvalidCredentials):
        await rt.signin.sign_in("alice", "guess", "192.0.2.1")
    with pytest.raises(LockedOut):
        await rt.signin.sign_in("alice", "alice-password-1", "192.0.2.1")


async def test_one_address_trying_many_users_is_locked_out(rt):
    for i in range(MAX_FAILURES * 4):
        with pytest.raises(InvalidCredentials):
            await rt.signin.sign_in(f"spray{i}", "Password1!", "203.0.113.9")
    with pytest.raises(LockedOut):
        await rt.signin.sign_in("alice", "alice-password-1", "203.0.113.9")
    assert await rt.signin.sign_in("alice", "alice-password-1", "192.0.2.1") == ALICE


async def test_a_source_that_cannot_answer_is_unavailable_not_a_wrong_password(tmp_path, clock):
    extra = '[auth]\nusers = "sql"\n[auth.sql]\ndsn = "sqlite:///absent.db"\n'
    extra += 'query = "SELECT id, hash FROM users WHERE name = :username"\n'
    rt = runtime(tmp_path, clock, extra)
    try:
        with pytest.raises(SourceUnavailable) as unavailable:
            await rt.signin.sign_in("Alice", "alice-password-1", "192.0.2.1")
    finally:
        await rt.users.close()
    assert isinstance(unavailable.value, SignInRefused)
    assert unavailable.value.user == "alice"
    assert str(unavailable.value) == "users database unavailable"
    # an outage is not a failed guess: it must not lock the user out
    assert await rt.limiter.retry_after("alice", "192.0.2.1") is None


def _form_login(client: httpx.Client) -> httpx.Response:
    page = client.get("/.auth/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    fields = {"username": "Alice", "password": "alice-password-1", "csrf": csrf}
    return client.post("/.auth/login", data=fields)


def _json_login(client: httpx.Client) -> httpx.Response:
    body = {"username": "Alice", "password": "alice-password-1"}
    response = client.post("/.auth/login", json=body)
    assert response.json()["amr"] == ["pwd"]
    return response


@pytest.mark.parametrize(
    "login", [_json_login, _form_login], ids=["after a JSON sign-in", "after a form sign-in"]
)
def test_me_and_the_assertion_carry_amr_pwd(gateway: Gateway, upstream: RecordingUpstream, login):
    with gateway.client() as client:
        response = login(client)
        assert response.status_code in (200, 303), response.text
        me = client.get("/.auth/me").json()
        assert (me["sub"], me["roles"], me["amr"]) == ("alice", ["staff"], ["pwd"])
        upstream.clear()
        assert client.get("/app/x").status_code == 200
        (token,) = upstream.last().header("x-gateway-assertion")
        jwks = client.get("/.auth/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key, algorithms=["EdDSA"], audience="app", issuer=f"http://localhost:{gateway.port}"
    )
    assert (claims["sub"], claims["amr"]) == ("alice", ["pwd"])
