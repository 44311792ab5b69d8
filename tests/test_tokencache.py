"""The verified-token cache answers exactly as full verification would, only faster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.auth.keys import retire_key, write_key
from gateway.auth.tokencache import VerifiedTokens
from gateway.auth.tokens import LEEWAY, Keyring, TokenError, TokenExpired, Tokens
from gateway.config import KeysConfig
from tests.inproc import FakeClock

TTL = 900


def make(tmp_path: Path) -> tuple[FakeClock, Tokens, VerifiedTokens]:
    clock = FakeClock(time.time())
    keys = KeysConfig(algorithm="EdDSA", dir=tmp_path / "keys")
    write_key(keys.dir, "EdDSA", now=clock.now - 3600)
    tokens = Tokens(Keyring(keys, clock), "http://localhost:8000", TTL, clock)
    return clock, tokens, VerifiedTokens(tokens)


def test_a_verified_token_is_served_from_the_cache_with_the_same_claims(tmp_path: Path):
    _, tokens, verified = make(tmp_path)
    token, minted = tokens.mint_session("alice", ("staff",), "sid-1")
    first = verified.verify_session(token)
    assert first == verified.verify_session(token)
    assert (first.sub, first.roles, first.sid, first.exp) == (
        "alice",
        ("staff",),
        "sid-1",
        minted.exp,
    )
    assert len(verified._cache) == 1


def test_a_cached_token_expires_at_exp_plus_the_leeway(tmp_path: Path):
    clock, tokens, verified = make(tmp_path)
    token, minted = tokens.mint_session("alice", ("staff",), "sid-1")
    verified.verify_session(token)
    clock.now = minted.exp + LEEWAY - 1  # past exp, still inside the leeway
    assert verified.verify_session(token).sid == "sid-1"
    clock.now = minted.exp + LEEWAY
    with pytest.raises(TokenExpired):
        verified.verify_session(token)


def test_a_token_signed_by_a_retired_key_stops_verifying(tmp_path: Path):
    clock, tokens, verified = make(tmp_path)
    old = tokens.keyring.active.kid
    token, _ = tokens.mint_session("alice", ("staff",), "sid-1")
    verified.verify_session(token)
    write_key(tokens.keyring.config.dir, "EdDSA", now=clock.now - 60)
    tokens.keyring.reload()
    retire_key(tokens.keyring.config.dir, old)
    clock.advance(10)  # the keyring re-reads its directory at most every few seconds
    tokens.keyring.reload()
    with pytest.raises(TokenError):
        verified.verify_session(token)


@pytest.mark.parametrize(
    "mangle",
    [lambda t: t[:-4] + "AAAA", lambda t: t + "x", lambda t: "x" * 5000],
    ids=["a bad signature", "trailing garbage", "an oversized token"],
)
def test_refused_tokens_are_never_cached(tmp_path: Path, mangle):
    _, tokens, verified = make(tmp_path)
    token, _ = tokens.mint_session("alice", ("staff",), "sid-1")
    for _ in range(2):
        with pytest.raises(TokenError):
            verified.verify_session(mangle(token))
    assert verified._cache == {}


def test_the_cache_is_bounded(tmp_path: Path):
    _, tokens, _ = make(tmp_path)
    verified = VerifiedTokens(tokens, max_entries=3)
    minted = [tokens.mint_session("alice", ("staff",), f"sid-{i}")[0] for i in range(5)]
    for token in minted:
        verified.verify_session(token)
    assert list(verified._cache) == minted[2:]
