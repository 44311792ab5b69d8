"""Second factors against real gateway processes: enrollment, sign-in with a code or a recovery
code, step-up on `mfa = true` routes, `[mfa] required`, the browser form flow, the CLI, secrets
at rest, config errors, and a real Chromium enrolling and signing in."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pyotp
import pytest

from gateway.config import ConfigError, build_config
from tests.conftest import USERS, Gateway, GatewayFactory, start_gateway, write_config
from tests.rawhttp import read_response
from tests.services import need
from tests.upstream import RecordingUpstream

JSON = {"accept": "application/json"}
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def routes(upstream: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "site"
        path = "/"
        upstream = "{upstream}"
        auth = "public"

        [[routes]]
        name = "app"
        path = "/app"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "secure"
        path = "/secure"
        upstream = "{upstream}"
        auth = "required"
        mfa = true
        """
    )


EXTRA = """
[audit]
file = "audit.log"
[login_limits]
max_failures = 3
"""


def code(secret: str, offset: float = 0.0) -> str:
    return pyotp.TOTP(secret).at(time.time() + offset)


def start(factory: GatewayFactory, upstream: RecordingUpstream, extra: str = "") -> Gateway:
    return factory(routes=routes(upstream.url), extra=EXTRA + extra)


def enroll(gw: Gateway, user: str = "alice") -> tuple[httpx.Client, str, list[str], dict]:
    """Sign in (no factor yet), enroll an authenticator app by JSON with the previous step's
    code; the client now holds the stepped-up session."""
    client = gw.login(user)
    page = client.get("/.auth/mfa", headers=JSON)
    assert page.status_code == 200, page.text
    doc = page.json()
    assert doc["enroll"] is True
    secret = doc["totp"]["secret"]
    assert doc["totp"]["uri"].startswith("otpauth://totp/")
    done = client.post("/.auth/mfa/totp/enroll", json={"code": code(secret, -30)})
    assert done.status_code == 200, done.text
    return client, secret, done.json()["recovery_codes"], done.json()


def pending(gw: Gateway, user: str = "alice") -> tuple[httpx.Client, str, dict]:
    client = gw.client()
    response = client.post("/.auth/login", json={"username": user, "password": USERS[user][0]})
    assert response.status_code == 401, response.text
    doc = response.json()
    assert doc["error"] == "mfa_required"
    assert "gw_session_mfa" in client.cookies
    assert "gw_session" not in client.cookies
    return client, doc["pending"], doc


def audit_lines(gw: Gateway) -> list[dict]:
    path = gw.directory / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(gw.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=gw.directory,
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


# -- enrollment ---------------------------------------------------------------------------


def test_enrollment_by_json_gives_recovery_codes_and_amr(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    client, _, codes, doc = enroll(gw)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert doc["amr"] == ["pwd", "otp"]
    assert doc["sub"] == "alice"
    me = client.get("/.auth/me", headers=JSON)
    assert me.status_code == 200
    assert me.json()["amr"] == ["pwd", "otp"]
    upstream.clear()
    response = client.get("/secure/page", headers=JSON)
    assert response.status_code == 200, response.text
    assertion = upstream.last().header("x-gateway-assertion")[0]
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["amr"] == ["pwd", "otp"]
    kinds = [e["event"] for e in audit_lines(gw)]
    assert "mfa.enrolled" in kinds and "mfa.succeeded" in kinds


# -- sign-in with a factor ----------------------------------------------------------------


def test_password_alone_is_pending_and_pending_opens_nothing(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    enroll(gw)
    client, handle, doc = pending(gw)
    assert "totp" in doc["methods"] and "recovery" in doc["methods"]
    assert client.get("/app/x", headers=JSON).status_code == 401
    assert client.get("/secure/x", headers=JSON).status_code == 401
    assert client.get("/.auth/me", headers=JSON).status_code == 401
    forwarded = {**JSON, "x-forwarded-method": "GET", "x-forwarded-uri": "/app/x"}
    verdict = client.get("/.auth/verify", headers=forwarded)
    assert verdict.status_code == 401, verdict.text
    assert verdict.json()["error"] == "unauthenticated"
    # the handle as a bearer token or a session cookie opens nothing either
    bare = gw.client()
    bare.cookies.set("gw_session", handle)
    assert bare.get("/app/x", headers=JSON).status_code == 401
    assert (
        gw.client().get("/app/x", headers={"authorization": f"Bearer {handle}"}).status_code == 401
    )
    assert "signin.pending" in [e["event"] for e in audit_lines(gw)]


def test_the_right_code_begins_the_session_once(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    now = code(secret)
    done = client.post("/.auth/mfa/totp", json={"code": now, "pending": handle})
    assert done.status_code == 200, done.text
    doc = done.json()
    assert doc["amr"] == ["pwd", "otp"] and doc["sub"] == "alice" and doc["sid"]
    assert client.get("/secure/x", headers=JSON).status_code == 200
    assert client.get("/.auth/me", headers=JSON).json()["amr"] == ["pwd", "otp"]
    # completion replay: the same pending handle again, even with a fresh code
    again = gw.client().post("/.auth/mfa/totp", json={"code": code(secret, 30), "pending": handle})
    assert again.status_code == 401, again.text
    # code replay: the same code on a new pending sign-in
    other, handle2, _ = pending(gw)
    replay = other.post("/.auth/mfa/totp", json={"code": now, "pending": handle2})
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_code"
    assert "gw_session" not in other.cookies


@pytest.mark.parametrize("offset", [90, -90], ids=["+3 steps", "-3 steps"])
def test_a_code_outside_the_window_is_refused(gateway_factory, upstream, offset):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    response = client.post(
        "/.auth/mfa/totp", json={"code": code(secret, offset), "pending": handle}
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_code"
    ok = client.post("/.auth/mfa/totp", json={"code": code(secret, 30), "pending": handle})
    assert ok.status_code == 200, ok.text


def test_wrong_codes_count_and_lock_even_the_right_code(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    for wrong in ("000000", "111111", "222222"):
        if wrong == code(secret) or wrong == code(secret, 30):
            continue
        r = client.post("/.auth/mfa/totp", json={"code": wrong, "pending": handle})
        assert r.status_code in (401, 429), r.text
    locked = client.post("/.auth/mfa/totp", json={"code": code(secret, 30), "pending": handle})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"] == "too_many_attempts"
    assert "retry-after" in locked.headers
    assert "gw_session" not in client.cookies
    kinds = [e["event"] for e in audit_lines(gw)]
    assert kinds.count("mfa.failed") >= 2 and "mfa.locked" in kinds


# the zero of digits that str.isdigit() takes too, but that make no TOTP code
OTHER_ZEROS = {"arabic-indic": "\u0660", "fullwidth": "\uff10", "devanagari": "\u0966"}


def in_digits(ascii_code: str, digits: str) -> str:
    """The code an app shows, spelt in other digits (Arabic-Indic: U+0661 U+0662 ...)."""
    return "".join(chr(ord(OTHER_ZEROS[digits]) + int(c)) for c in ascii_code)


def test_a_code_in_other_digits_is_a_wrong_enrollment_code(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)  # max_failures = 3
    client = gw.login("alice")
    secret = client.get("/.auth/mfa", headers=JSON).json()["totp"]["secret"]
    for digits in ("arabic-indic", "fullwidth"):
        other = in_digits(code(secret, -30), digits)
        r = client.post("/.auth/mfa/totp/enroll", json={"code": other})
        assert r.status_code == 401, (digits, r.status_code, r.text)
        assert r.json()["error"] == "invalid_code"
    failed = [e for e in audit_lines(gw) if e["event"] == "mfa.failed"]
    assert [e["reason"] for e in failed] == ["wrong_enrollment_code"] * 2
    done = client.post("/.auth/mfa/totp/enroll", json={"code": code(secret, -30)})
    assert done.status_code == 200, done.text


def test_codes_in_other_digits_are_wrong_codes_and_count_at_sign_in(gateway_factory, upstream):
    """Three of them lock the sign-in as three wrong ASCII codes do (max_failures = 3)."""
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    for digits in ("arabic-indic", "fullwidth", "devanagari"):
        other = in_digits(code(secret, 30), digits)
        r = client.post("/.auth/mfa/totp", json={"code": other, "pending": handle})
        assert r.status_code == 401, (digits, r.status_code, r.text)
        assert r.json()["error"] == "invalid_code"
    locked = client.post("/.auth/mfa/totp", json={"code": code(secret, 30), "pending": handle})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"] == "too_many_attempts"
    assert "gw_session" not in client.cookies
    failed = [e for e in audit_lines(gw) if e["event"] == "mfa.failed"]
    assert [(e["method"], e["reason"]) for e in failed] == [("totp", "wrong_code")] * 3


def test_parallel_codes_get_no_more_guesses_than_the_limit(gateway_factory, upstream):
    """The limit is checked before a code and its failure counted after: 300 codes sent at
    once were all judged against max_failures = 3. One check per user at a time now."""
    gw = start(gateway_factory, upstream)  # max_failures = 3
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    now = _codes_now(secret)
    wrong = [c for c in (f"{n:06d}" for n in range(100000, 100100)) if c not in now][:40]
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    requests = []
    for guess in wrong:
        body = json.dumps({"code": guess, "pending": handle}).encode()
        head = (
            f"POST /.auth/mfa/totp HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Cookie: {cookie}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        requests.append(head.encode() + body)
    # every connection open first, then every request written at once: judged side by side
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in requests]
    for sock, data in zip(socks, requests, strict=True):
        sock.sendall(data)
    statuses = []
    for sock in socks:
        with sock:
            statuses.append(read_response(sock).status)
    assert statuses.count(401) <= 3, statuses
    assert set(statuses) <= {401, 429}, statuses
    failed = [e for e in audit_lines(gw) if e["event"] == "mfa.failed"]
    assert len(failed) <= 3


def test_the_right_password_does_not_reset_wrong_codes(gateway_factory, upstream):
    """A thief who holds the password signs in again between guesses: the count of wrong
    codes goes on (the password alone, while a factor is due, forgets no failure)."""
    gw = start(gateway_factory, upstream)  # max_failures = 3
    _, secret, _, _ = enroll(gw)
    wrong = next(c for c in ("000000", "111111", "222222") if c not in _codes_now(secret))
    for _ in range(3):
        client, handle, _ = pending(gw)
        r = client.post("/.auth/mfa/totp", json={"code": wrong, "pending": handle})
        assert r.status_code == 401, r.text
    refused = gw.client().post(
        "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
    )
    assert refused.status_code == 429, refused.text


def test_signing_out_ends_a_pending_sign_in(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    out = client.post("/.auth/logout", headers=JSON)
    assert out.status_code == 204
    assert any(
        c.startswith("gw_session_mfa=;") and "Max-Age=0" in c
        for c in out.headers.get_list("set-cookie")
    )
    # the handle is gone from the store: even a right code no longer finishes that sign-in
    late = gw.client().post("/.auth/mfa/totp", json={"code": code(secret), "pending": handle})
    assert late.status_code == 401 and late.json()["error"] == "unauthenticated"


def _codes_now(secret: str) -> set[str]:
    return {code(secret, offset) for offset in (-30, 0, 30)}


@pytest.mark.parametrize(
    "handle",
    ["garbage", "A" * 43, "x" * 200, "../../etc/passwd", ""],
    ids=["short", "well-formed-unknown", "long", "path", "empty"],
)
def test_a_forged_pending_handle_is_refused(gateway_factory, upstream, handle):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client = gw.client()
    client.cookies.set("gw_session_mfa", handle)
    response = client.post("/.auth/mfa/totp", json={"code": code(secret, 30), "pending": handle})
    assert response.status_code == 401, response.text
    assert "gw_session" not in client.cookies


def test_recovery_codes_sign_in_once_each_in_any_spelling(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, _, codes, _ = enroll(gw)
    first = codes[0]
    spelled = "  " + first.upper().replace("-", " ") + " "
    client, handle, _ = pending(gw)
    done = client.post("/.auth/mfa/recovery", json={"code": spelled, "pending": handle})
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == ["pwd", "otp"]
    assert client.get("/secure/x", headers=JSON).status_code == 200
    # used up: the same code in its plain spelling is refused
    other, handle2, _ = pending(gw)
    again = other.post("/.auth/mfa/recovery", json={"code": first, "pending": handle2})
    assert again.status_code == 401 and again.json()["error"] == "invalid_code"
    second = other.post(
        "/.auth/mfa/recovery", json={"code": codes[1].replace("-", ""), "pending": handle2}
    )
    assert second.status_code == 200, second.text
    listed = cli(gw, "mfa", "list", "alice")
    assert "recovery codes left: 8" in listed.stdout


# -- step-up ------------------------------------------------------------------------------


def test_step_up_on_an_mfa_route_keeps_the_session(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    # a session signed in with the password alone, before the factor existed
    old = gw.login("alice")
    sid = old.get("/.auth/me", headers=JSON).json()["sid"]
    _, secret, _, _ = enroll(gw)
    assert old.get("/app/x", headers=JSON).status_code == 200
    browser = old.get("/secure/a?b=1", headers=HTML)
    assert browser.status_code == 302
    assert browser.headers["location"] == (
        f"http://localhost:{gw.port}/.auth/mfa?next=%2Fsecure%2Fa%3Fb%3D1"
    )
    api = old.get("/secure/a", headers=JSON)
    assert api.status_code == 401
    assert api.json()["error"] == "mfa_required"
    assert "totp" in api.json()["methods"]
    assert old.get("/.auth/mfa", headers=JSON).json() == {
        "methods": ["totp", "recovery"],
        "enroll": False,
    }
    done = old.post("/.auth/mfa/totp", json={"code": code(secret)})
    assert done.status_code == 200, done.text
    assert done.json()["sid"] == sid
    assert done.json()["amr"] == ["pwd", "otp"]
    assert old.get("/secure/a", headers=JSON).status_code == 200
    me = old.get("/.auth/me", headers=JSON).json()
    assert me["sid"] == sid and me["amr"] == ["pwd", "otp"]


def test_mfa_required_sends_a_user_without_a_factor_to_enrollment(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[mfa]\nrequired = true\n")
    client, handle, doc = pending(gw, "bob")
    assert doc["methods"] == [] and doc["enroll"] is True
    assert client.get("/app/x", headers=JSON).status_code == 401
    assert client.get("/.auth/me", headers=JSON).status_code == 401
    page = client.get("/.auth/mfa", headers=JSON)
    assert page.status_code == 200 and page.json()["enroll"] is True
    secret = page.json()["totp"]["secret"]
    done = client.post("/.auth/mfa/totp/enroll", json={"code": code(secret), "pending": handle})
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == ["pwd", "otp"] and len(done.json()["recovery_codes"]) == 10
    assert client.get("/app/x", headers=JSON).status_code == 200
    assert client.get("/secure/x", headers=JSON).status_code == 200


def test_service_tokens_and_mfa(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[mfa]\nrequired = true\n")
    made = cli(gw, "tokens", "create", "robot", "--roles", "staff")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    bearer = {"authorization": f"Bearer {token}", **JSON}
    assert gw.client().get("/app/x", headers=bearer).status_code == 200
    refused = gw.client().get("/secure/x", headers=bearer)
    assert refused.status_code == 403, refused.text


# -- the browser form flow ----------------------------------------------------------------


def test_the_form_flow_with_csrf(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client = gw.client()
    form = client.get("/.auth/login?next=/secure/x", headers=HTML)
    csrf = client.cookies["gw_session_csrf"]
    assert form.status_code == 200
    sent = client.post(
        "/.auth/login",
        data={
            "username": "alice",
            "password": USERS["alice"][0],
            "csrf": csrf,
            "next": "/secure/x",
        },
        headers=HTML,
    )
    assert sent.status_code == 303, sent.text
    assert sent.headers["location"] == f"http://localhost:{gw.port}/.auth/mfa"
    assert "gw_session_mfa" in client.cookies
    page = client.get("/.auth/mfa", headers=HTML)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "content-security-policy" in page.headers
    assert 'action="/.auth/mfa/totp"' in page.text
    # without the form's csrf: refused
    bare = client.post("/.auth/mfa/totp", data={"code": code(secret)}, headers=HTML)
    assert bare.status_code == 403
    # from another origin: refused
    foreign = client.post(
        "/.auth/mfa/totp",
        data={"code": code(secret), "csrf": client.cookies["gw_session_csrf"]},
        headers={**HTML, "origin": "http://evil.example"},
    )
    assert foreign.status_code == 403
    done = client.post(
        "/.auth/mfa/totp",
        data={"code": code(secret), "csrf": client.cookies["gw_session_csrf"]},
        headers=HTML,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"].endswith("/secure/x")
    assert client.get("/secure/x", headers=JSON).status_code == 200


def test_cross_origin_json_completion_is_refused(gateway_factory, upstream):
    gw = start(gateway_factory, upstream)
    _, secret, _, _ = enroll(gw)
    client, handle, _ = pending(gw)
    foreign = client.post(
        "/.auth/mfa/totp",
        json={"code": code(secret), "pending": handle},
        headers={"origin": "http://evil.example"},
    )
    assert foreign.status_code == 403, foreign.text


# -- the CLI and secrets at rest ----------------------------------------------------------


def test_cli_list_and_reset_and_secrets_stay_sealed(gateway_factory, upstream):
    # strict: an ended session is refused at once, not when its access token is re-issued
    gw = start(gateway_factory, upstream, '[session]\nrevocation = "strict"\n')
    client, secret, codes, _ = enroll(gw)
    listed = cli(gw, "mfa", "list", "alice")
    assert listed.returncode == 0, listed.stderr
    assert "totp" in listed.stdout and "recovery codes left: 10" in listed.stdout
    assert secret not in listed.stdout + listed.stderr

    # the secret and the recovery codes are in no log and not in clear in the store
    time.sleep(0.5)
    stored = b"".join(p.read_bytes() for p in (gw.directory / "data").iterdir() if p.is_file())
    assert stored, "no store files"
    assert secret.encode() not in stored
    for c in codes:
        assert c.encode() not in stored and c.replace("-", "").encode() not in stored
    texts = gw.logs() + (gw.directory / "audit.log").read_text()
    assert secret not in texts
    assert not any(c in texts or c.replace("-", "") in texts for c in codes)

    reset = cli(gw, "mfa", "reset", "alice")
    assert reset.returncode == 0, reset.stderr
    assert "removed 1" in reset.stdout
    assert secret not in reset.stdout
    assert "user 'alice' has no second factor" in cli(gw, "mfa", "list", "alice").stdout
    # alice's sessions ended (strict mode's in-process cache holds a good standing 1 s);
    # the next sign-in needs no factor
    from gateway.auth.sessions import STRICT_CACHE_SECONDS

    time.sleep(STRICT_CACHE_SECONDS + 0.2)
    assert client.get("/app/x", headers=JSON).status_code == 401
    again = gw.login("alice")
    assert again.get("/.auth/me", headers=JSON).json()["amr"] == ["pwd"]
    events = audit_lines(gw)
    assert "mfa.reset" in [e["event"] for e in events]
    # every event carries only the fields its kind lists (gateway.audit.EVENTS)
    from gateway import audit

    assert all(set(e) <= {"time", "event", *audit.EVENTS[e["event"]]} for e in events)


# -- config errors ------------------------------------------------------------------------

ROUTE = {"name": "site", "path": "/", "upstream": "http://127.0.0.1:9"}


def _errors(tmp_path: Path, raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config({"routes": [ROUTE], **raw}, tmp_path, env={})
    return info.value.errors


def test_route_mfa_needs_auth_required(tmp_path):
    errors = _errors(tmp_path, {"routes": [{**ROUTE, "auth": "public", "mfa": True}]})
    assert any(e.startswith("routes[0].mfa:") for e in errors), errors


def test_rp_id_must_match_public_url(tmp_path):
    raw = {"server": {"public_url": "https://login.corp.test"}, "mfa": {"rp_id": "evil.test"}}
    errors = _errors(tmp_path, raw)
    assert any(e.startswith("mfa.rp_id:") for e in errors), errors
    ok = {"server": {"public_url": "https://login.corp.test"}, "mfa": {"rp_id": "corp.test"}}
    assert build_config({"routes": [ROUTE], **ok}, tmp_path, env={}).rp_id == "corp.test"


def test_both_kinds_off_while_required_is_an_error(tmp_path):
    errors = _errors(tmp_path, {"mfa": {"totp": False, "webauthn": False, "required": True}})
    assert any(e.startswith("mfa.required:") for e in errors), errors
    errors = _errors(
        tmp_path,
        {"mfa": {"totp": False, "webauthn": False}, "routes": [{**ROUTE, "mfa": True}]},
    )
    assert any(e.startswith("routes[0].mfa:") for e in errors), errors


def test_an_issuer_with_a_colon_is_refused(tmp_path):
    errors = _errors(tmp_path, {"mfa": {"issuer": "Corp: SSO"}})
    assert any(e.startswith("mfa.issuer:") for e in errors), errors


def test_gateway_check_reports_mfa_errors(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[mfa]\nissuer = "a:b"\n\n[[routes]]\nname = "site"\npath = "/"\n'
        'upstream = "http://127.0.0.1:9"\nauth = "public"\nmfa = true\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "mfa.issuer" in out and "routes[0].mfa" in out


# -- a real browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    need("chromium", CHROMIUM.exists(), f"no browser at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import CHROMIUM_ARGS

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def test_enroll_and_sign_in_with_a_code_in_a_browser(browser, gateway_factory, upstream):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    gw = start(gateway_factory, upstream)
    site = f"http://localhost:{gw.port}"
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{site}/secure/report")
        assert urlsplit(page.url).path == "/.auth/login"
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(USERS["alice"][0])
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/.auth/mfa")
        expect(page.locator(".qr svg")).to_be_visible()
        # a card taller than the window starts at the top, where it can be read (a centred
        # flex item would begin above the page, out of scrolling's reach)
        assert page.locator("h1").bounding_box()["y"] > 0
        page.screenshot(path=str(ARTIFACTS / "mfa-enroll.png"), full_page=True)
        secret = page.locator(".secret").inner_text().replace(" ", "").strip()
        page.locator("#code").fill(code(secret, -30))
        page.get_by_role("button", name="Turn on").click()
        expect(page.locator("ol.codes li")).to_have_count(10)
        page.get_by_role("link", name="Continue").click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/secure/report")
    finally:
        context.close()

    context = browser.new_context(viewport={"width": 1024, "height": 700})
    page = context.new_page()
    try:
        page.goto(f"{site}/secure/report")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(USERS["alice"][0])
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/.auth/mfa")
        expect(page.locator("#code")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "mfa-factor.png"))
        page.locator("#code").fill(code(secret))
        page.get_by_role("button", name="Verify").click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/secure/report")
        names = {c["name"] for c in context.cookies()}
        assert "gw_session" in names and "gw_session_mfa" not in names
    finally:
        context.close()


def test_mfa_required_steps_up_required_routes_only(gateway_factory, upstream):
    """`[mfa] required`: "on every required route" (MfaConfig.required). A session begun
    before the switch (password only) is stepped up on a required route; a public page stays
    open to it as it is to anyone."""
    first = start(gateway_factory, upstream)
    cookie = first.login("alice").cookies["gw_session"]
    first.stop()
    # the same port (public_url, so the token's issuer) and users file: the session lives on
    config = write_config(
        first.directory, first.port, routes(upstream.url), EXTRA + "[mfa]\nrequired = true\n"
    )
    gw = start_gateway(config, first.port)
    gateway_factory.started.append(gw)
    client = gw.client()
    client.cookies.set("gw_session", cookie)
    assert client.get("/.auth/me", headers=JSON).json()["amr"] == ["pwd"]
    stepped = client.get("/app/x", headers=JSON)
    assert stepped.status_code == 401 and stepped.json()["error"] == "mfa_required"
    assert gw.client().get("/page", headers=JSON).status_code == 200
    public = client.get("/page", headers=JSON)
    assert public.status_code == 200, public.text


def test_the_script_the_factor_pages_load_is_served(gateway_factory, upstream):
    """Every script the enrollment page loads is served: the gateway's own WebAuthn calls."""
    import re

    gw = start(gateway_factory, upstream)
    client = gw.login("alice")
    page = client.get("/.auth/mfa?next=/secure", headers=HTML)
    assert page.status_code == 200
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', page.text)
    assert scripts == ["/.auth/static/webauthn.js"]
    for src in scripts:
        response = client.get(src)
        assert response.status_code == 200, (src, response.status_code)
        assert "javascript" in response.headers["content-type"]


def _policy_route(**values) -> object:
    from gateway.config import Route

    return Route(name="r", path="/", upstream="http://127.0.0.1:9", **values)


@pytest.mark.parametrize("auth", ["public", "optional"])
def test_mfa_required_does_not_step_up_routes_that_need_no_sign_in(auth):
    """`[mfa] required`: "on every required route"; a public or optional route lets a
    password-only session in, as it lets in anyone."""
    from gateway.core.context import Identity
    from gateway.core.policy import Outcome, decide

    alice = Identity("alice", ("staff",), "sid", time.time() + 60, "cookie", ("pwd",))
    route = _policy_route(auth=auth)
    assert decide(None, route, "GET", "127.0.0.1", mfa_everyone=True).outcome is Outcome.ALLOW
    assert decide(alice, route, "GET", "127.0.0.1", mfa_everyone=True).outcome is Outcome.ALLOW


def test_bypass_networks_on_an_mfa_route_treat_signed_in_users_like_anyone():
    """Inside `bypass_networks` a required route needs no sign-in: a password-only session
    there must not be refused what the same browser without its cookie is given."""
    import ipaddress

    from gateway.core.context import Identity
    from gateway.core.policy import Outcome, decide

    alice = Identity("alice", ("staff",), "sid", time.time() + 60, "cookie", ("pwd",))
    route = _policy_route(mfa=True, bypass_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    assert decide(None, route, "GET", "10.1.2.3").outcome is Outcome.ALLOW
    assert decide(alice, route, "GET", "10.1.2.3").outcome is Outcome.ALLOW
    assert decide(alice, route, "GET", "192.0.2.1").outcome is Outcome.STEP_UP


def test_concurrent_completions_have_one_winner(gateway_factory, upstream):
    from concurrent.futures import ThreadPoolExecutor

    gw = start(gateway_factory, upstream, "[login_limits]\nmax_failures = 50\n")
    _, secret, codes, _ = enroll(gw)

    def post(path: str, value: str, handle: str) -> int:
        with gw.client() as client:
            return client.post(path, json={"code": value, "pending": handle}).status_code

    with ThreadPoolExecutor(8) as pool:
        _, handle, _ = pending(gw)
        now = code(secret)
        same = list(pool.map(lambda _: post("/.auth/mfa/totp", now, handle), range(8)))
        assert sorted(same) == [200] + [401] * 7, same
        handles = [pending(gw)[1] for _ in range(6)]
        later = code(secret, 30)
        one_code = list(pool.map(lambda h: post("/.auth/mfa/totp", later, h), handles))
        assert sorted(one_code) == [200] + [401] * 5, one_code
        handles = [pending(gw)[1] for _ in range(6)]
        recovery = list(pool.map(lambda h: post("/.auth/mfa/recovery", codes[3], h), handles))
        assert sorted(recovery) == [200] + [401] * 5, recovery


# -- the enrollment secret is one sign-in's; factor names print -----------------------------


def test_each_pending_sign_in_gets_its_own_enrollment_secret(gateway_factory, upstream):
    gw = start(gateway_factory, upstream, "[mfa]\nrequired = true\n")
    victim, victim_handle, _ = pending(gw, "bob")
    other, other_handle, _ = pending(gw, "bob")  # the same password, another sign-in
    secrets_seen = {}
    for name, client in (("victim", victim), ("other", other)):
        doc = client.get("/.auth/mfa", headers=JSON).json()
        assert doc["enroll"] is True
        secrets_seen[name] = doc["totp"]["secret"]
        # a reload shows the same secret to the same sign-in
        assert (
            client.get("/.auth/mfa", headers=JSON).json()["totp"]["secret"] == doc["totp"]["secret"]
        )
    assert secrets_seen["victim"] != secrets_seen["other"]
    # the secret another sign-in of the user was shown does not enroll this one...
    refused = other.post(
        "/.auth/mfa/totp/enroll",
        json={"pending": other_handle, "code": code(secrets_seen["victim"])},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_code"
    # ...and the victim enrolls the secret it was shown
    done = victim.post(
        "/.auth/mfa/totp/enroll",
        json={"pending": victim_handle, "code": code(secrets_seen["victim"], -30)},
    )
    assert done.status_code == 200, done.text
    # the secret the other sign-in read is no factor of bob's: password and its code fail
    later, later_handle, doc = pending(gw, "bob")
    assert doc["methods"] == ["totp", "recovery"]
    refused = later.post(
        "/.auth/mfa/totp", json={"pending": later_handle, "code": code(secrets_seen["other"])}
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_code"


def _control_characters(text: str) -> set[str]:
    return {ch for ch in text if not ch.isprintable() and ch != "\n"}


def test_factor_names_lose_control_characters_and_the_cli_escapes_old_ones(
    gateway_factory, upstream
):
    gw = start(gateway_factory, upstream)
    client = gw.login("alice")
    secret = client.get("/.auth/mfa", headers=JSON).json()["totp"]["secret"]
    name = "\x1b]0;owned\x07Phone\x1b[2J\x9b31m\u202e"
    done = client.post("/.auth/mfa/totp/enroll", json={"code": code(secret, -30), "name": name})
    assert done.status_code == 200, done.text
    listed = cli(gw, "mfa", "list", "alice")
    assert listed.returncode == 0, listed.stderr
    assert "]0;ownedPhone[2J31m" in listed.stdout
    assert not _control_characters(listed.stdout)

    # a name kept before names were cleaned is listed escaped
    from gateway.auth.sealed import Sealer
    from gateway.mfa.factors import Factors
    from gateway.store import open_store

    async def keep_raw_name() -> None:
        store = open_store("sqlite:///data/gateway.db", gw.directory)
        try:
            factors = Factors(store, Sealer(gw.directory / "keys"), time.time)
            await factors.add("alice", "totp", "Old\x1b]0;x\x07key", {"secret": secret})
        finally:
            await store.close()

    # in a thread of its own: a browser test of this module may hold this thread's loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, keep_raw_name()).result()
    listed = cli(gw, "mfa", "list", "alice")
    assert listed.returncode == 0, listed.stderr
    assert "Old\\x1b]0;x\\x07key" in listed.stdout
    assert not _control_characters(listed.stdout)
