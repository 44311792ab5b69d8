"""JWT verification: only a token the gateway signed, for itself, now, with every claim, passes."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.security.attack import (
    assert_reason,
    b64,
    claims,
    marked,
    nothing_forwarded,
    only,
    request,
    sign,
    signing_key,
    with_cookie,
)


def _bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def assert_refused(gw, upstream, token: str, reason: str, via: str = "bearer") -> None:
    """A 401, nothing forwarded, and the access log names `reason` (a TokenError reason)."""
    header = _bearer(token) if via == "bearer" else with_cookie(gw, token)
    path = marked("/admin/x")
    response = request(gw, "GET", path, [header])
    assert response.status == 401, response.body
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, reason)


def test_a_token_signed_with_our_key_is_accepted(gw, upstream):
    # the control: the forging helper itself makes tokens the gateway takes
    response = request(gw, "GET", "/admin/x", [_bearer(sign(gw, claims(gw)))])
    assert response.status == 200
    assert only(upstream).header("x-user-id") == ["mallory"]


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(gw, upstream, alg):
    header = {"alg": alg, "typ": "JWT", "kid": signing_key(gw).kid}
    token = f"{b64(header)}.{b64(claims(gw))}."
    assert_refused(gw, upstream, token, "algorithm")


def test_alg_none_in_the_cookie_is_refused_and_cleared(gw, upstream):
    token = f"{b64({'alg': 'none', 'kid': signing_key(gw).kid})}.{b64(claims(gw))}."
    path = marked("/admin/x")
    response = request(gw, "GET", path, [with_cookie(gw, token)])
    assert response.status == 401
    assert any(c.startswith("gw_session=;") for c in response.header("set-cookie"))
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, "algorithm")


def test_hs256_signed_with_the_public_key_is_refused(gw, upstream):
    key = signing_key(gw)
    pem = key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = b64(claims(gw))
    import hashlib
    import hmac

    mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert_refused(gw, upstream, token, "algorithm")


def _attacker_token(gw, extra_header: dict) -> str:
    attacker = ed25519.Ed25519PrivateKey.generate()
    return jwt.encode(claims(gw), attacker, algorithm="EdDSA", headers=extra_header)


def test_an_embedded_jwk_naming_the_attackers_key_is_refused(gw, upstream):
    attacker = ed25519.Ed25519PrivateKey.generate()
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    token = jwt.encode(
        claims(gw), attacker, algorithm="EdDSA", headers={"kid": signing_key(gw).kid, "jwk": jwk}
    )
    assert_refused(gw, upstream, token, "forbidden header")


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_a_key_url_in_the_header_is_refused_and_never_fetched(gw, upstream, param):
    token = _attacker_token(gw, {"kid": signing_key(gw).kid, param: f"{upstream.url}/keys.json"})
    assert_refused(gw, upstream, token, "forbidden header")


@pytest.mark.parametrize(
    ("kid", "reason"),
    [
        ("../../../../etc/passwd", "unknown kid"),
        ("/dev/null", "unknown kid"),
        ("x' OR '1'='1", "unknown kid"),
        ("", "no kid"),
        ("unknown-kid", "unknown kid"),
    ],
    ids=["path traversal", "device", "sql", "empty", "unknown"],
)
def test_kid_injection_is_refused(gw, upstream, kid, reason):
    assert_refused(gw, upstream, _attacker_token(gw, {"kid": kid}), reason)


def test_our_kid_with_the_attackers_signature_is_refused(gw, upstream):
    assert_refused(gw, upstream, _attacker_token(gw, {"kid": signing_key(gw).kid}), "signature")


def test_a_tampered_payload_is_refused(gw, upstream, alice_token):
    header, _, signature = alice_token.split(".")
    payload = jwt.decode(alice_token, options={"verify_signature": False})
    payload["roles"] = ["admin"]
    assert_refused(gw, upstream, f"{header}.{b64(payload)}.{signature}", "signature", via="cookie")


def test_a_tampered_signature_is_refused(gw, upstream, alice_token):
    header, payload, signature = alice_token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert_refused(gw, upstream, f"{header}.{payload}.{flipped}", "signature", via="cookie")


NOW = int(time.time())
BAD_CLAIMS = [
    pytest.param(
        {"exp": NOW - 120, "iat": NOW - 700, "nbf": NOW - 700},
        "expired",
        id="expired past the leeway",
    ),
    pytest.param({"nbf": NOW + 300}, "not yet valid", id="not yet valid"),
    pytest.param({"iat": NOW + 300, "nbf": NOW}, "not yet valid", id="issued in the future"),
    pytest.param({"exp": NOW + 86400 * 365}, "lifetime", id="lifetime longer than access_ttl"),
    pytest.param({"iss": "https://evil.example"}, "issuer", id="foreign issuer"),
    pytest.param({"aud": "site"}, "audience", id="route audience (an assertion)"),
    pytest.param({"aud": ["https://evil.example"]}, "audience", id="foreign audience"),
    pytest.param({"sid": None}, "missing claim", id="no sid"),
    pytest.param({"jti": None}, "missing claim", id="no jti"),
    pytest.param({"exp": None}, "missing claim", id="no exp"),
    pytest.param({"roles": None}, "missing claim", id="no roles"),
    pytest.param({"sub": 42}, "claim type", id="numeric sub"),
    pytest.param({"roles": "admin"}, "claim type", id="roles as a string"),
    pytest.param({"roles": [["admin"]]}, "claim type", id="nested roles"),
    pytest.param({"exp": "9999999999"}, "claim type", id="exp as a string"),
    pytest.param({"iat": True}, "claim type", id="boolean iat"),
]


@pytest.mark.parametrize(("override", "reason"), BAD_CLAIMS)
def test_a_bad_claim_is_refused_even_when_signed_by_us(gw, upstream, override, reason):
    # the claims are judged at request time: freshen the times relative to now
    now = int(time.time())
    fixed = {
        k: (v - NOW + now if isinstance(v, int) and not isinstance(v, bool) and v > 10**9 else v)
        for k, v in override.items()
    }
    assert_refused(gw, upstream, sign(gw, claims(gw, **fixed)), reason)


def _signed_as_is(gw, header: dict, payload: dict) -> str:
    """Signed with our key, the header exactly as given (jwt.encode would drop b64)."""
    key = signing_key(gw)
    algorithm = jwt.get_algorithm_by_name(key.algorithm)
    signing_input = f"{b64({'alg': key.algorithm, 'kid': key.kid, **header})}.{b64(payload)}"
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key.private))
    return f"{signing_input}.{jwt.utils.base64url_encode(signature).decode()}"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"crit": ["exp"], "exp": 1}, id="crit naming exp"),
        pytest.param({"crit": ["b64"], "b64": True}, id="crit naming b64, which PyJWT knows"),
    ],
)
def test_a_crit_header_is_refused(gw, upstream, header):
    assert_refused(gw, upstream, _signed_as_is(gw, header, claims(gw)), "forbidden header")


def test_an_assertion_replayed_as_a_session_token_is_refused(gw, upstream, alice_token):
    request(gw, "GET", "/app/x", [with_cookie(gw, alice_token)])
    assertion = only(upstream).header("x-gateway-assertion")[0]
    upstream.clear()
    # an assertion carries no sid: PyJWT's required-claims check refuses it before its
    # audience (the route name) is compared; the audience alone is the "route audience" case
    assert_refused(gw, upstream, assertion, "missing claim")


def test_an_oversized_token_is_refused(gw, upstream):
    assert_refused(gw, upstream, sign(gw, claims(gw, pad="x" * 5000)), "too large")


def test_a_bad_bearer_does_not_fall_back_to_a_good_cookie(gw, upstream, bob_token):
    headers = [_bearer("not-a-token"), with_cookie(gw, bob_token)]
    path = marked("/admin/x")
    response = request(gw, "GET", path, headers)
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, "malformed")


def test_a_bearer_token_is_not_forwarded_upstream(gw, upstream, bob_token):
    response = request(gw, "GET", "/admin/x", [_bearer(bob_token)])
    assert response.status == 200
    rec = only(upstream)
    assert "authorization" not in rec.names()
    assert rec.header("x-user-id") == ["bob"]


def test_a_route_with_bearer_off_ignores_a_valid_bearer(gw, upstream, bob_token):
    path = marked("/nobearer/x")
    response = request(gw, "GET", path, [_bearer(bob_token)])
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, None)  # never read, so never refused: no token at all
