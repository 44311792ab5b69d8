"""A guessable HS256 secret: the gateway refuses to start with one, so no wordlist forges a user."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import jwt
import pytest

from gateway.auth.keys import secret_key
from tests.conftest import free_port, standard_routes, write_config
from tests.security.attack import claims, nothing_forwarded, request

# what jwt_tool's bundled wordlist and a hurried operator reach for first
GUESSABLE = [
    ("12345678901234567890123456789012", "digits counting up"),
    ("abcdefghijklmnopqrstuvwxyzABCDEF", "the alphabet"),
    ("k" * 32, "one letter repeated"),
    ("changemechangemechangemechangeme", "a word repeated"),
    ("P@ssw0rdP@ssw0rdP@ssw0rdP@ssw0rd", "a password repeated"),
    ("qwertyuiopasdfghjklzxcvbnm123456", "a keyboard walk"),
    ("0123456789abcdef0123456789abcdef", "hex digits in order"),
    ("short-but-random-Xq9", "shorter than 32 bytes"),
]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=20,
    )


HS256_KEYS = '[keys]\nalgorithm = "HS256"\nsecret = "${GATEWAY_SECRET}"\n'


def _hs256_routes(upstream_url: str) -> str:
    return standard_routes(upstream_url, f"http://127.0.0.1:{free_port()}")


@pytest.mark.parametrize("secret,why", GUESSABLE, ids=[w for _, w in GUESSABLE])
def test_a_guessable_hs256_secret_stops_the_gateway_from_starting(tmp_path, upstream, secret, why):
    config = write_config(tmp_path, free_port(), _hs256_routes(upstream.url), HS256_KEYS)
    done = _run("run", "-c", str(config), env={"GATEWAY_SECRET": secret})
    assert done.returncode == 1, why
    assert "keys.secret:" in done.stderr
    assert "gateway keys secret" in done.stderr
    assert secret not in done.stderr + done.stdout  # the error names the field, not the value


def test_keys_secret_prints_a_secret_the_gateway_takes_and_no_guess_forges(
    gateway_factory, upstream
):
    made = _run("keys", "secret")
    assert made.returncode == 0
    secret = made.stdout.strip()
    assert len(secret) >= 43 and secret != _run("keys", "secret").stdout.strip()
    env = {"GATEWAY_SECRET": secret}
    gw = gateway_factory(routes=_hs256_routes(upstream.url), extra=HS256_KEYS, users=None, env=env)
    checked = _run("check", "-c", str(gw.config), env=env)
    assert checked.returncode == 0, checked.stderr
    # the kid is no secret: any cookie the attacker ever held shows it
    kid = {"kid": secret_key(secret).kid}
    good = jwt.encode(claims(gw, sub="bob"), secret, algorithm="HS256", headers=kid)
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        assert client.get("/.auth/me", headers={"authorization": f"Bearer {good}"}).is_success
    upstream.clear()
    for guess, _ in GUESSABLE:
        forged = jwt.encode(claims(gw, sub="admin"), guess, algorithm="HS256", headers=kid)
        response = request(gw, "GET", "/admin/x", [("Authorization", f"Bearer {forged}")])
        assert response.status == 401
    assert nothing_forwarded(upstream)
