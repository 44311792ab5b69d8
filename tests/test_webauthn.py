"""Security keys and passkeys against real gateway processes, answered by a software
authenticator (tests/soft_authenticator.py) that speaks the browser's JSON: registration as a
first factor and from a session, password plus key, passkey-only sign-in, step-up, and every
refusal: a replayed answer, another origin or relying party, a forged signature, a counter
that went back, another user's challenge or handle, no user verification on a passkey, a
disabled user, a removed key, lockout, CSRF and cross-site posts, an open redirect.
Chromium with a virtual authenticator: tests/test_webauthn_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import ConfigError, build_config
from tests.conftest import USERS, Gateway
from tests.soft_authenticator import SoftAuthenticator, b64
from tests.test_account import forget_confirmation
from tests.test_mfa import JSON, audit_lines, cli, pending, start
from tests.upstream import RecordingUpstream

P = "/.auth"
REQUIRED = "[mfa]\nrequired = true\n"
PASSWORD = USERS["alice"][0]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def origin(gw: Gateway) -> str:
    return f"http://localhost:{gw.port}"


def options(client: httpx.Client, ceremony: str, body: dict | None = None) -> dict:
    response = client.post(f"{P}/mfa/webauthn/{ceremony}/options", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


def register_from_session(
    gw: Gateway, user: str = "alice"
) -> tuple[httpx.Client, SoftAuthenticator]:
    """A password session with no factor yet adds a key (as the account page does)."""
    client = gw.login(user)
    key = SoftAuthenticator(origin(gw))
    answer = key.create(options(client, "register"))
    done = client.post(
        f"{P}/mfa/webauthn/register", json={"credential": answer, "name": "YubiKey 5"}
    )
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == ["pwd", "hwk"]
    assert len(done.json()["recovery_codes"]) == 10
    return client, key


def second_factor(
    gw: Gateway, key: SoftAuthenticator, user: str = "alice", **lie
) -> httpx.Response:
    """Password, then the key's answer (told to lie by `lie`) to the pending sign-in."""
    client, handle, doc = pending(gw, user)
    assert "webauthn" in doc["methods"]
    opts = options(client, "authenticate", {"pending": handle})
    return client.post(
        f"{P}/mfa/webauthn/authenticate",
        json={"pending": handle, "credential": key.get(opts, **lie)},
    )


def reasons(gw: Gateway, event: str) -> list[str]:
    return [line.get("reason") for line in audit_lines(gw) if line["event"] == event]


# -- registration and the second factor -----------------------------------------------------


def test_a_key_enrolled_at_the_first_sign_in_is_the_second_factor_after(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, REQUIRED)
    client, handle, doc = pending(gw, "bob")
    assert doc["enroll"] is True
    key = SoftAuthenticator(origin(gw))
    opts = options(client, "register", {"pending": handle})
    assert opts["rp"]["id"] == "localhost"
    assert opts["authenticatorSelection"]["residentKey"] == "preferred"
    assert opts["authenticatorSelection"]["userVerification"] == "preferred"
    # the user is named by a random handle, never by the id
    assert opts["user"]["id"] != b64(b"bob") and len(opts["user"]["id"]) >= 43
    done = client.post(
        f"{P}/mfa/webauthn/register",
        json={"pending": handle, "credential": key.create(opts), "name": "Desk key"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == ["pwd", "hwk"] and len(done.json()["recovery_codes"]) == 10
    assert client.get("/secure/x", headers=JSON).status_code == 200

    # next time: the password, then the key; the token, /me and the assertion carry hwk
    ok = second_factor(gw, key, "bob")
    assert ok.status_code == 200, ok.text
    assert ok.json()["amr"] == ["pwd", "hwk"]
    listed = cli(gw, "mfa", "list", "bob")
    assert listed.returncode == 0 and "webauthn" in listed.stdout and "Desk key" in listed.stdout
    token = ok.cookies.get("gw_session") or ""
    assert jwt.decode(token, options={"verify_signature": False})["amr"] == ["pwd", "hwk"]
    # the counter the key reported is kept: the same answer count again is a clone
    assert key.counter == 1
    again = second_factor(gw, key, "bob", counter=1)
    assert again.status_code == 401 and again.json()["error"] == "invalid_code"
    assert reasons(gw, "mfa.failed")[-1] == "counter_went_back"


def test_a_password_session_steps_up_with_a_key_it_adds(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    client = gw.login("alice")
    refused = client.get("/secure/x", headers=JSON)
    assert refused.status_code == 401
    assert refused.json()["methods"] == ["totp", "webauthn", "recovery"]
    sid = client.get(f"{P}/me", headers=JSON).json()["sid"]
    key = SoftAuthenticator(origin(gw))
    done = client.post(
        f"{P}/mfa/webauthn/register", json={"credential": key.create(options(client, "register"))}
    )
    assert done.status_code == 200, done.text
    assert done.json()["sid"] == sid and done.json()["amr"] == ["pwd", "hwk"]
    assert client.get("/secure/x", headers=JSON).status_code == 200
    # another key needs a session that entered a factor: this one did
    second = SoftAuthenticator(origin(gw))
    added = client.post(
        f"{P}/mfa/webauthn/register",
        json={"credential": second.create(options(client, "register")), "name": "Spare"},
    )
    assert added.status_code == 200, added.text
    assert "recovery_codes" not in added.json()
    # the first key is excluded from a new registration's options (no double enrollment)
    excluded = options(client, "register")["excludeCredentials"]
    assert {c["id"] for c in excluded} == {b64(key.credential_id), b64(second.credential_id)}


def test_adding_a_key_needs_a_second_factor_first(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    old = gw.login("alice")  # password only, before any factor existed
    register_from_session(gw, "alice")
    # that old session, and a pending sign-in, cannot add a key beside the existing one
    refused = old.post(f"{P}/mfa/webauthn/register/options", json={})
    assert refused.status_code == 403 and refused.json()["error"] == "step_up_required"
    client, handle, _ = pending(gw, "alice")
    refused = client.post(f"{P}/mfa/webauthn/register/options", json={"pending": handle})
    assert refused.status_code == 403 and refused.json()["error"] == "step_up_required"
    # nor can anyone with no session and no pending sign-in ask for options at all
    nobody = gw.client().post(f"{P}/mfa/webauthn/register/options", json={})
    assert nobody.status_code == 401


def test_a_key_that_does_not_hold_is_not_added(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    client = gw.login("alice")
    key = SoftAuthenticator(origin(gw))
    for lie in ({"origin": "http://evil.test"}, {"rp_id": "evil.test"}):
        answer = key.create(options(client, "register"), **lie)
        refused = client.post(f"{P}/mfa/webauthn/register", json={"credential": answer})
        assert refused.status_code == 400 and refused.json()["error"] == "key_not_added"
    # the challenge of a refused answer is used up: the true answer to it is refused too
    opts = options(client, "register")
    bad = key.create(opts, origin="http://evil.test")
    assert client.post(f"{P}/mfa/webauthn/register", json={"credential": bad}).status_code == 400
    good = key.create(opts)
    again = client.post(f"{P}/mfa/webauthn/register", json={"credential": good})
    assert again.status_code == 400
    assert reasons(gw, "mfa.refused") == [
        "registration_not_verified",
        "registration_not_verified",
        "registration_not_verified",
        "unknown_or_used_challenge",
    ]
    assert cli(gw, "mfa", "list", "alice").stdout.count("webauthn") == 0


LIES = {
    "another origin": {"origin": "http://evil.test"},
    "another relying party": {"rp_id": "evil.test"},
    "a signature by another key": {"signer": ec.generate_private_key(ec.SECP256R1())},
}


@pytest.mark.parametrize("lie", LIES.values(), ids=LIES.keys())
def test_an_answer_that_does_not_hold_is_refused_and_counted(gateway_factory, upstream, lie):
    gw = start(gateway_factory, upstream)
    _, key = register_from_session(gw)
    refused = second_factor(gw, key, **lie)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_code"
    assert "gw_session" not in refused.cookies
    assert reasons(gw, "mfa.failed") == ["assertion_not_verified"]


def test_a_replayed_answer_and_another_users_challenge_are_refused(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, key = register_from_session(gw, "alice")
    client, handle, _ = pending(gw, "alice")
    answer = key.get(options(client, "authenticate", {"pending": handle}))
    first = client.post(
        f"{P}/mfa/webauthn/authenticate", json={"pending": handle, "credential": answer}
    )
    assert first.status_code == 200, first.text
    # the same answer again, for a new pending sign-in: its challenge is used up
    client, handle, _ = pending(gw, "alice")
    replay = client.post(
        f"{P}/mfa/webauthn/authenticate", json={"pending": handle, "credential": answer}
    )
    assert replay.status_code == 401
    assert reasons(gw, "mfa.failed")[-1] == "unknown_or_used_challenge"

    # bob's challenge, signed by alice's key, does not finish alice's sign-in
    register_from_session(gw, "bob")
    bob_client, bob_handle, _ = pending(gw, "bob")
    bobs = options(bob_client, "authenticate", {"pending": bob_handle})
    client, handle, _ = pending(gw, "alice")
    crossed = client.post(
        f"{P}/mfa/webauthn/authenticate", json={"pending": handle, "credential": key.get(bobs)}
    )
    assert crossed.status_code == 401
    assert reasons(gw, "mfa.failed")[-1] == "challenge_of_another_ceremony"


def test_wrong_answers_lock_out_like_wrong_codes(gateway_factory, upstream):
    """Each try signs in with the right password first: that forgets no wrong answer."""
    gw = start(gateway_factory, upstream)  # max_failures = 3
    _, key = register_from_session(gw)
    other = ec.generate_private_key(ec.SECP256R1())
    for _ in range(3):
        assert second_factor(gw, key, signer=other).status_code == 401
    # locked: the password alone is refused now, and so would the key be
    locked = gw.client().post(f"{P}/login", json={"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429 and "retry-after" in locked.headers
    assert reasons(gw, "mfa.failed") == ["assertion_not_verified"] * 3


# -- a passkey alone ----------------------------------------------------------------------


def passkey(gw: Gateway, key: SoftAuthenticator, **lie) -> httpx.Response:
    client = gw.client()
    opts = options(client, "passkey")
    return client.post(f"{P}/mfa/webauthn/passkey", json={"credential": key.get(opts, **lie)})


def test_a_passkey_signs_in_alone(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    register_from_session(gw, "bob")
    _, key = register_from_session(gw, "alice")
    opts = options(gw.client(), "passkey")
    assert opts["allowCredentials"] == [] and opts["userVerification"] == "required"
    done = passkey(gw, key)
    assert done.status_code == 200, done.text
    assert done.json()["sub"] == "alice" and done.json()["roles"] == ["staff"]
    assert done.json()["amr"] == ["hwk"]
    client = gw.client()
    client.cookies.set("gw_session", done.cookies["gw_session"])
    # a passkey is both factors: mfa routes open, and the upstream is told who it is
    assert client.get("/secure/x", headers=JSON).status_code == 200
    assert upstream.last().header("x-user-id") == ["alice"]
    assert client.get(f"{P}/me", headers=JSON).json()["amr"] == ["hwk"]
    assert [e["source"] for e in audit_lines(gw) if e["event"] == "signin.succeeded"][-1] == (
        "passkey"
    )


def test_passkey_refusals(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[login_limits]\nmax_failures = 50\n")
    _, alice = register_from_session(gw, "alice")
    _, bob = register_from_session(gw, "bob")

    # the authenticator did not verify the user: possession alone is one factor, refused
    assert passkey(gw, alice, verified=False).status_code == 401
    assert reasons(gw, "signin.failed")[-1] == "assertion_not_verified"
    # alice's key answering with bob's user handle: not bob's credential
    assert passkey(gw, alice, user_handle=bob.user_handle).status_code == 401
    assert reasons(gw, "signin.failed")[-1] == "credential_not_registered"
    # a handle nobody has
    assert passkey(gw, alice, user_handle=b64(b"x" * 43)).status_code == 401
    assert reasons(gw, "signin.failed")[-1] == "unknown_user_handle"
    # a replayed answer
    client = gw.client()
    answer = alice.get(options(client, "passkey"))
    assert client.post(f"{P}/mfa/webauthn/passkey", json={"credential": answer}).status_code == 200
    replay = gw.client().post(f"{P}/mfa/webauthn/passkey", json={"credential": answer})
    assert replay.status_code == 401
    assert reasons(gw, "signin.failed")[-1] == "unknown_or_used_challenge"
    # a second-factor challenge is not a passkey sign-in's (bob's pending sign-in, bob's key)
    bob_client, bob_handle, _ = pending(gw, "bob")
    stolen = options(bob_client, "authenticate", {"pending": bob_handle})
    crossed = gw.client().post(f"{P}/mfa/webauthn/passkey", json={"credential": bob.get(stolen)})
    assert crossed.status_code == 401
    assert reasons(gw, "signin.failed")[-1] == "challenge_of_another_ceremony"

    # a disabled user's passkey opens nothing; enabled again, it does
    assert cli(gw, "users", "disable", "bob").returncode == 0
    gone = passkey(gw, bob)
    assert gone.status_code == 401 and gone.json()["error"] == "passkey_refused"
    assert reasons(gw, "signin.failed")[-1] == "user_gone"
    assert cli(gw, "users", "enable", "bob").returncode == 0
    assert passkey(gw, bob).status_code == 200

    # a key reset by the operator no longer signs in
    assert cli(gw, "mfa", "reset", "alice").returncode == 0
    assert passkey(gw, alice).status_code == 401


def test_the_passkey_form_is_csrf_checked_and_next_stays_on_site(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, key = register_from_session(gw, "alice")
    browser = gw.client()
    page = browser.get(f"{P}/login", headers={"accept": "text/html"})
    assert "Sign in with a passkey" in page.text
    csrf = browser.cookies["gw_session_csrf"]

    def submit(client: httpx.Client, fields: dict, headers: dict | None = None) -> httpx.Response:
        opts = options(client, "passkey")
        fields = {**fields, "credential": json.dumps(key.get(opts))}
        return client.post(f"{P}/mfa/webauthn/passkey", data=fields, headers=headers or {})

    # no CSRF token, a wrong one, or a post from another site: refused before the key is read
    assert submit(gw.client(), {}).status_code == 403
    assert submit(browser, {"csrf": "x" * 43}).status_code == 403
    cross = submit(browser, {"csrf": csrf}, {"origin": "http://evil.test"})
    assert cross.status_code == 403 and cross.json()["error"] == "cross_origin"
    # next to another site falls back to /
    done = submit(browser, {"csrf": csrf, "next": "https://evil.test/x"})
    assert done.status_code == 303, done.text
    assert done.headers["location"] in ("/", f"{origin(gw)}/")
    ok = submit(
        gw.client(),
        {"csrf": csrf, "next": "/app/report?x=1"},
        {"cookie": f"gw_session_csrf={csrf}"},
    )
    assert ok.status_code == 303 and ok.headers["location"].endswith("/app/report?x=1")
    # a refused passkey in a browser: the sign-in page again, saying so (a sign-in clears
    # the CSRF cookie: a fresh page brings a fresh one)
    browser = gw.client()
    browser.get(f"{P}/login", headers={"accept": "text/html"})
    csrf = browser.cookies["gw_session_csrf"]
    opts = options(browser, "passkey")
    bad = browser.post(
        f"{P}/mfa/webauthn/passkey",
        data={"csrf": csrf, "credential": json.dumps(key.get(opts, verified=False))},
        headers={"accept": "text/html"},
    )
    assert bad.status_code == 401 and "That passkey was not accepted." in bad.text
    assert "<form" in bad.text


# -- where WebAuthn cannot work -------------------------------------------------------------


def test_webauthn_is_not_offered_on_an_ip_address(tmp_path):
    route = {"name": "r", "path": "/", "upstream": "http://127.0.0.1:9", "auth": "required"}
    on_ip = {"server": {"public_url": "http://127.0.0.1:8000"}, "routes": [route]}
    config = build_config(on_ip, tmp_path, env={})
    assert config.mfa.webauthn is True and config.webauthn_on is False
    on_name = {"server": {"public_url": "http://localhost:8000"}, "routes": [route]}
    assert build_config(on_name, tmp_path, env={}).webauthn_on is True
    # a factor asked for with only WebAuthn, on an IP: an error that says why
    with pytest.raises(ConfigError) as info:
        build_config({**on_ip, "mfa": {"totp": False, "required": True}}, tmp_path, env={})
    assert any("domain name" in e for e in info.value.errors), info.value.errors


def test_the_endpoints_are_absent_while_webauthn_is_off(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[mfa]\nwebauthn = false\n")
    client = gw.login("alice")
    for ceremony in ("register", "authenticate", "passkey"):
        assert client.post(f"{P}/mfa/webauthn/{ceremony}/options", json={}).status_code == 404
    assert "passkey" not in gw.client().get(f"{P}/login").text
    assert client.get("/secure/x", headers=JSON).json()["methods"] == ["totp", "recovery"]


def test_passkeys_nobody_owns_lock_out_the_address(gateway_factory, upstream):
    """Answers naming no user count against the address (its wider budget: 4 x 3); once it
    is locked out it gets no more challenges, and no answer is read."""
    gw = start(gateway_factory, upstream)  # max_failures = 3
    _, key = register_from_session(gw)
    for _ in range(12):
        refused = passkey(gw, key, user_handle=b64(b"y" * 43))
        assert refused.status_code == 401, refused.text
    locked = gw.client().post(f"{P}/mfa/webauthn/passkey/options", json={})
    assert locked.status_code == 429 and "retry-after" in locked.headers
    # other sign-ins from that address wait too: the address, not a user, is locked
    password = gw.client().post(f"{P}/login", json={"username": "bob", "password": "x"})
    assert password.status_code == 429


def _challenge_records(gw: Gateway) -> dict[str, str]:
    from gateway.store import open_store

    async def read() -> dict[str, str]:
        store = open_store("sqlite:///data/gateway.db", gw.directory)
        try:
            return await store.list_records("webauthn-challenge:", time.time())
        finally:
            await store.close()

    return asyncio.run(read())


def _with_challenge(opts: dict, challenge: bytes) -> dict:
    return {**opts, "challenge": b64(challenge)}


def test_passkey_options_asked_again_and_again_fill_no_store(gateway_factory, upstream):
    """Anybody may ask for passkey options before signing in: the challenge is sealed, not
    kept, so a loop of asks leaves nothing behind; the one answer that uses a challenge
    leaves one record, which makes it the only one."""
    gw = start(gateway_factory, upstream)
    _, key = register_from_session(gw)
    before = _challenge_records(gw)
    asker = gw.client()
    challenges = {options(asker, "passkey")["challenge"] for _ in range(300)}
    assert len(challenges) == 300  # each one new
    assert _challenge_records(gw) == before
    done = passkey(gw, key)
    assert done.status_code == 200, done.text
    assert len(_challenge_records(gw)) == len(before) + 1


def test_a_passkey_challenge_the_gateway_did_not_seal_or_that_expired_is_refused(
    gateway_factory, upstream
):
    from gateway.auth.sealed import Sealer

    gw = start(gateway_factory, upstream, "[login_limits]\nmax_failures = 50\n")
    _, key = register_from_session(gw)
    opts = options(gw.client(), "passkey")

    def answer(challenge: bytes) -> httpx.Response:
        credential = key.get(_with_challenge(opts, challenge))
        return gw.client().post(f"{P}/mfa/webauthn/passkey", json={"credential": credential})

    # a challenge of the attacker's own (right length, no seal), one sealed by another key,
    # a real one with a bit flipped, and one the gateway's key sealed that has expired
    real = base64.urlsafe_b64decode(opts["challenge"] + "==")
    flipped = bytes([real[0] ^ 1]) + real[1:]
    other_key = Sealer(gw.directory / "other-keys")
    expired = int(time.time()) - 1
    cases = {
        "own": os.urandom(32),
        "other key": other_key.seal_bytes(
            expired.to_bytes(4, "big"), "webauthn-challenge", "passkey"
        ),
        "flipped": flipped,
        "expired": Sealer(gw.directory / "keys").seal_bytes(
            expired.to_bytes(4, "big"), "webauthn-challenge", "passkey"
        ),
    }
    for name, challenge in cases.items():
        refused = answer(challenge)
        assert refused.status_code == 401, name
        assert reasons(gw, "signin.failed")[-1] == "unknown_or_used_challenge", name
    assert _challenge_records(gw) == {}
    # the real one still signs in, once; a sealed passkey challenge finishes no second factor
    assert answer(real).status_code == 200
    assert answer(real).status_code == 401
    client, handle, _ = pending(gw, "alice")
    crossed = client.post(
        f"{P}/mfa/webauthn/authenticate",
        json={"pending": handle, "credential": key.get(options(gw.client(), "passkey"))},
    )
    assert crossed.status_code == 401
    assert reasons(gw, "mfa.failed")[-1] == "challenge_of_another_ceremony"


def test_one_passkey_answer_sent_at_once_many_times_signs_in_once(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[login_limits]\nmax_failures = 50\n")
    _, key = register_from_session(gw)
    credential = key.get(options(gw.client(), "passkey"))

    def send(_: int) -> int:
        with gw.client() as client:
            return client.post(
                f"{P}/mfa/webauthn/passkey", json={"credential": credential}
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(send, range(8)))
    assert statuses == [200] + [401] * 7


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://Login.Corp.test:443/portal", "https://login.corp.test"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("https://sso.corp.test:8443", "https://sso.corp.test:8443"),
        ("http://intranet.test:80", "http://intranet.test"),
    ],
    ids=["default https port and path dropped", "localhost port kept", "other port", "http 80"],
)
def test_the_origin_a_browser_reports_for_public_url(public_url, expected):
    from gateway.mfa.webauthn import web_origin

    assert web_origin(public_url) == expected


# -- adding a key beside other factors ------------------------------------------------------


def _step_code(secret: str, steps: int = 0) -> str:
    """The code `steps` 30-second steps from now (never in the last moment of a step)."""
    import pyotp

    now = time.time()
    if now % 30 > 28.5:
        time.sleep(30 - now % 30 + 0.2)
        now = time.time()
    return pyotp.TOTP(secret).at(now + 30 * steps)


def test_an_old_session_adds_a_key_beside_its_factors_only_with_a_current_one(
    gateway_factory, upstream
):
    from tests.test_mfa import enroll

    gw = start(gateway_factory, upstream)
    client, secret, recovery, done = enroll(gw, "alice")  # password + app, just now
    sid = done["sid"]
    # a factor entered just now: a key is added without asking again
    fresh = SoftAuthenticator(origin(gw))
    added = client.post(
        f"{P}/mfa/webauthn/register",
        json={"credential": fresh.create(options(client, "register")), "name": "Fresh"},
    )
    assert added.status_code == 200, added.text

    # the same session (or its stolen cookie) after CONFIRM_TTL: no key without a factor now
    early = options(client, "register")  # a challenge asked for while it still could
    forget_confirmation(gw, sid)
    refused = client.post(f"{P}/mfa/webauthn/register/options", json={})
    assert refused.status_code == 403 and refused.json()["error"] == "confirm_required"
    thief = SoftAuthenticator(origin(gw))
    refused = client.post(
        f"{P}/mfa/webauthn/register", json={"credential": thief.create(early), "name": "Thief"}
    )
    assert refused.status_code == 403 and refused.json()["error"] == "confirm_required"
    wrong = next(c for c in ("000000", "111111") if c != _step_code(secret))
    refused = client.post(f"{P}/mfa/webauthn/register/options", json={"confirm_code": wrong})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_code"
    # the thief's key signs nobody in
    assert passkey(gw, thief).status_code == 401
    listed = cli(gw, "mfa", "list", "alice")
    assert "Thief" not in listed.stdout and "Fresh" in listed.stdout

    # with a current code: the options, then the key (the same code again is no second use)
    current = _step_code(secret, 0)
    opts = options(client, "register", {"confirm_code": current})
    spare = SoftAuthenticator(origin(gw))
    added = client.post(
        f"{P}/mfa/webauthn/register",
        json={"credential": spare.create(opts), "name": "Spare", "confirm_code": current},
    )
    assert added.status_code == 200, added.text
    # a recovery code confirms as well
    forget_confirmation(gw, sid)
    opts = options(client, "register", {"confirm_code": recovery[0]})
    third = SoftAuthenticator(origin(gw))
    added = client.post(f"{P}/mfa/webauthn/register", json={"credential": third.create(opts)})
    assert added.status_code == 200, added.text
    assert "Spare" in cli(gw, "mfa", "list", "alice").stdout
