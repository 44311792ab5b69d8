"""Claims a token we signed may still not carry, and keys a running gateway must stop trusting.

Each case is signed with the gateway's own key (defence in depth: the attacker holds a key, or
a bug of ours signed it): NaN times, control characters in what becomes a header, and a key the
operator retired while the gateway mints nothing at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import jwt
import pytest

from gateway.auth.keys import SigningKey, load_keys, write_key
from gateway.auth.tokens import _RELOAD_EVERY
from tests.conftest import standard_routes
from tests.security.attack import (
    claims,
    nothing_forwarded,
    only,
    request,
    signing_key,
    with_cookie,
)
from tests.security.test_jwt import _bearer
from tests.security.test_jwt import assert_refused as refused_by_route


def _b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode("ascii")


def signed_text(key: SigningKey, payload_json: str) -> str:
    """A compact JWS of this exact JSON text (json.dumps would also write NaN, but by hand it is
    plain that the token says `NaN`)."""
    algorithm = jwt.get_algorithm_by_name(key.algorithm)
    header = json.dumps({"alg": key.algorithm, "typ": "JWT", "kid": key.kid})
    signing_input = f"{_b64(header.encode())}.{_b64(payload_json.encode())}"
    signature = algorithm.sign(signing_input.encode("ascii"), algorithm.prepare_key(key.private))
    return f"{signing_input}.{_b64(signature)}"


def with_raw_claim(gw, name: str, raw: str) -> str:
    """Our valid claims with `name` written as the raw JSON text `raw`, signed with our key."""
    payload = claims(gw)
    payload[name] = "@@RAW@@"
    text = json.dumps(payload).replace('"@@RAW@@"', raw)
    assert raw in text
    return signed_text(signing_key(gw), text)


def assert_refused(gw, upstream, token: str, reason: str, via: str = "bearer") -> None:
    """test_jwt's refusal (401, nothing forwarded, `reason` logged), and /.auth/me answers 401
    too (not a 500 on a claim nobody checked)."""
    refused_by_route(gw, upstream, token, reason, via)
    header = _bearer(token) if via == "bearer" else with_cookie(gw, token)
    me = request(gw, "GET", "/.auth/me", [header])
    assert me.status == 401, me.body


def test_the_forging_helpers_make_a_token_the_gateway_takes(gw, upstream):
    # the control: the same hand-written JSON path, with a number, passes
    token = with_raw_claim(gw, "exp", str(int(time.time()) + 600))
    response = request(gw, "GET", "/admin/x", [_bearer(token)])
    assert response.status == 200
    assert only(upstream).header("x-user-id") == ["mallory"]
    assert request(gw, "GET", "/.auth/me", [_bearer(token)]).status == 200


NON_FINITE = [
    pytest.param("exp", "NaN", id="exp NaN"),
    pytest.param("iat", "NaN", id="iat NaN"),
    pytest.param("nbf", "NaN", id="nbf NaN"),
    pytest.param("exp", "Infinity", id="exp Infinity"),
    pytest.param("nbf", "-Infinity", id="nbf -Infinity"),
    pytest.param("exp", "1" + "0" * 400, id="exp too large for a float"),
]


@pytest.mark.parametrize(("name", "raw"), NON_FINITE)
@pytest.mark.parametrize("via", ["bearer", "cookie"])
def test_a_time_that_is_not_a_finite_number_is_refused(gw, upstream, name, raw, via):
    assert_refused(gw, upstream, with_raw_claim(gw, name, raw), "claim type", via=via)


CONTROL = [
    pytest.param({"sub": "alice\r\nX-Injected: 1"}, id="CRLF in sub"),
    pytest.param({"sub": "alice\nX-Injected: 1"}, id="LF in sub"),
    pytest.param({"sub": "alice\x00admin"}, id="NUL in sub"),
    pytest.param({"sub": "alice\tbob"}, id="tab in sub"),
    pytest.param({"sub": "alice\x7f"}, id="DEL in sub"),
    pytest.param({"roles": ["admin", "staff\r\nX-Injected: 1"]}, id="CRLF in a role"),
    pytest.param({"roles": ["admin\x00"]}, id="NUL in a role"),
    pytest.param({"roles": ["admin", "\x1b[31m"]}, id="escape in a role"),
    pytest.param({"username": "alice\r\nX-Injected: 1"}, id="CRLF in username"),
    pytest.param({"amr": ["pwd\n"]}, id="LF in amr"),
    pytest.param({"sid": "forged\r\nsid"}, id="CRLF in sid"),
]


@pytest.mark.parametrize("override", CONTROL)
def test_a_control_character_in_a_claim_is_refused(gw, upstream, override):
    token = signed_text(signing_key(gw), json.dumps(claims(gw, **override)))
    assert_refused(gw, upstream, token, "claim type")


def test_a_control_character_in_sub_never_becomes_a_header_line(gw, upstream):
    token = signed_text(signing_key(gw), json.dumps(claims(gw, sub="alice\r\nX-Injected: 1")))
    for header in (_bearer(token), with_cookie(gw, token)):
        response = request(gw, "GET", "/app/x", [header])
        assert response.status == 401
    assert nothing_forwarded(upstream)


def test_printable_unicode_in_claims_is_still_accepted(gw, upstream):
    token = signed_text(
        signing_key(gw), json.dumps(claims(gw, sub="zoë o'neil", roles=["admin", "équipe a"]))
    )
    response = request(gw, "GET", "/admin/x", [_bearer(token)])
    assert response.status == 200, response.body
    assert only(upstream).header("x-user-id")
    me = request(gw, "GET", "/.auth/me", [_bearer(token)])
    assert json.loads(me.body)["sub"] == "zoë o'neil"


# -- a retired key -------------------------------------------------------------------------


@pytest.fixture
def two_key_gateway(gateway_factory, tmp_path, upstream):
    """Two workers, two keys (the older one, K1, retirable at once), no assertion header: with
    no login either, nothing in this gateway ever mints a token (nor re-reads keys to do so)."""
    keys = tmp_path / "keys"
    old = write_key(keys, "EdDSA", now=time.time() - 3600)
    write_key(keys, "EdDSA", now=time.time() - 1800)
    extra = """
        [identity]
        assertion_header = ""
        """
    routes = standard_routes(upstream.url, upstream.url)
    gw = gateway_factory(tmp_path, routes=routes, extra=extra, args=("--workers", "2"))
    k1 = next(k for k in load_keys(keys) if k.kid == old)
    return gw, k1


def _forged(gw, key: SigningKey, **override) -> str:
    # a fresh jti each time: an uncached token, verified in full
    payload = claims(gw, jti=f"jti-{time.monotonic_ns()}", **override)
    return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})


def _statuses(gw, cached: str, k1: SigningKey) -> list[int]:
    statuses = []
    for _ in range(4):  # fresh connections: spread over both workers
        fresh = _forged(gw, k1)
        statuses.append(request(gw, "GET", "/admin/x", [_bearer(cached)]).status)
        statuses.append(request(gw, "GET", "/admin/x", [_bearer(fresh)]).status)
        statuses.append(request(gw, "GET", "/.auth/me", [_bearer(fresh)]).status)
    return statuses


def test_a_retired_key_stops_verifying_within_the_reload_interval(two_key_gateway, upstream):
    gw, k1 = two_key_gateway
    cached = _forged(gw, k1)
    before = _statuses(gw, cached, k1)  # accepted, and the verdict is now in both caches
    assert before == [200] * len(before)
    assert all(r.header("x-user-roles") == ["admin,staff"] for r in upstream.requests)
    retire = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "retire", k1.kid, "-c", str(gw.config)],
        capture_output=True,
        text=True,
        cwd=gw.directory,
        timeout=60,
    )
    assert retire.returncode == 0, retire.stderr
    retired_at = time.monotonic()
    time.sleep(_RELOAD_EVERY + 0.5)  # the bound (plus scheduling slack), and no longer
    upstream.clear()
    after = _statuses(gw, cached, k1)
    assert after == [401] * len(after), f"{time.monotonic() - retired_at:.1f}s after: {after}"
    assert nothing_forwarded(upstream)
    # the key still there keeps verifying: the refusal is of K1, not of everything
    k2 = next(k for k in load_keys(gw.directory / "keys") if k.kid != k1.kid)
    assert request(gw, "GET", "/admin/x", [_bearer(_forged(gw, k2))]).status == 200
