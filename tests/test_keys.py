"""Key ids sort by creation time, a rotated key signs only once replicas have read it, and a
retired key stops verifying within the reload interval in a keyring that mints nothing."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from gateway.auth.keys import ACTIVATE_AFTER, created_at, load_keys, new_kid, retire_key, write_key
from gateway.auth.tokencache import VerifiedTokens
from gateway.auth.tokens import _RELOAD_EVERY, Keyring, TokenError, Tokens
from gateway.config import KeysConfig
from tests.inproc import FakeClock


def test_keys_written_within_one_second_load_in_the_order_they_were_made(tmp_path: Path):
    made = [write_key(tmp_path, "EdDSA") for _ in range(12)]
    assert [k.kid for k in load_keys(tmp_path)] == made
    assert created_at(made[0]) < created_at(made[-1])


def test_a_clock_stepped_back_still_makes_the_new_key_the_newest(tmp_path: Path):
    future = write_key(tmp_path, "EdDSA", now=time.time() + 3600)
    rotated = write_key(tmp_path, "EdDSA")
    assert [k.kid for k in load_keys(tmp_path)] == [future, rotated]


def test_key_ids_from_before_microseconds_sort_among_the_new_ones(tmp_path: Path):
    old = write_key(tmp_path, "EdDSA", now=time.time() - 60)
    legacy = old.replace(old[15:22], "")  # 20261125T101010.123456Z-... -> 20261125T101010Z-...
    (tmp_path / f"{old}.pem").rename(tmp_path / f"{legacy}.pem")
    newer = write_key(tmp_path, "EdDSA")
    assert [k.kid for k in load_keys(tmp_path)] == [legacy, newer]
    assert abs(created_at(legacy) - created_at(old)) < 1


def test_a_rotated_key_verifies_at_once_and_signs_after_the_activation_delay(tmp_path: Path):
    clock = FakeClock(time.time())
    first = write_key(tmp_path, "EdDSA", now=clock.now - 3600)
    keyring = Keyring(KeysConfig(algorithm="EdDSA", dir=tmp_path), clock)
    second = write_key(tmp_path, "EdDSA", now=clock.now)
    clock.advance(6)  # past the reload interval: the keyring reads the directory again
    assert keyring.lookup(second) is not None
    assert keyring.signing_key().kid == first
    clock.advance(ACTIVATE_AFTER)
    assert keyring.signing_key().kid == second


def test_new_kids_are_fixed_width_so_they_sort_as_text():
    kids = [new_kid(1_800_000_000 + i / 7) for i in range(20)]
    assert sorted(kids, key=lambda k: k.split("-")[0]) == kids
    assert len({len(k) for k in kids}) == 1


def _two_keys(tmp_path: Path) -> tuple[FakeClock, Tokens, str, str]:
    """A keyring with an old key (retirable) and the active one, on a fake clock."""
    clock = FakeClock(time.time())
    old = write_key(tmp_path, "EdDSA", now=clock.now - 3600)
    new = write_key(tmp_path, "EdDSA", now=clock.now - 1800)
    keyring = Keyring(KeysConfig(algorithm="EdDSA", dir=tmp_path), clock)
    return clock, Tokens(keyring, "http://localhost:8000", 900, clock), old, new


def _signed_by(tokens: Tokens, kid: str) -> str:
    """A session token signed with `kid` (not the active key), as a leaked key would sign it."""
    key = tokens.keyring.lookup(kid)
    assert key is not None
    now = int(tokens.clock())
    payload = {
        "iss": tokens.issuer,
        "aud": tokens.audience,
        "sub": "mallory",
        "roles": ["admin"],
        "sid": "forged",
        "jti": f"jti-{time.monotonic_ns()}",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": kid})


def test_a_retired_key_stops_verifying_within_the_reload_interval_without_minting(
    tmp_path: Path,
):
    clock, tokens, old, _ = _two_keys(tmp_path)
    cached = VerifiedTokens(tokens)
    token = _signed_by(tokens, old)
    fresh = _signed_by(tokens, old)  # never verified before the retirement: not cached
    assert cached.verify_session(token).sub == "mallory"
    retire_key(tmp_path, old)
    # nothing mints and nobody calls reload(): only lookups, as requests make them
    clock.advance(_RELOAD_EVERY - 0.5)
    assert tokens.keyring.lookup(old) is not None  # within the interval: the last read holds
    clock.advance(0.5)
    assert tokens.keyring.lookup(old) is None
    with pytest.raises(TokenError, match="unknown kid"):
        cached.verify_session(token)  # the cached verdict is not served past the interval
    with pytest.raises(TokenError, match="unknown kid"):
        cached.verify_session(fresh)


def test_a_cached_verdict_of_a_retired_key_ends_on_the_first_request_after_the_interval(
    tmp_path: Path,
):
    clock, tokens, old, new = _two_keys(tmp_path)
    cached = VerifiedTokens(tokens)
    tokens_by_old = [_signed_by(tokens, old) for _ in range(3)]
    for token in tokens_by_old:
        cached.verify_session(token)
    kept = _signed_by(tokens, new)
    cached.verify_session(kept)
    retire_key(tmp_path, old)
    clock.advance(_RELOAD_EVERY)
    for token in tokens_by_old:
        with pytest.raises(TokenError):
            cached.verify_session(token)
    assert cached.verify_session(kept).kid == new


def test_reloading_keeps_the_same_key_objects_so_caches_survive(tmp_path: Path):
    clock, tokens, _, new = _two_keys(tmp_path)
    cached = VerifiedTokens(tokens)
    token = _signed_by(tokens, new)
    cached.verify_session(token)
    before = tokens.keyring.lookup(new)
    clock.advance(_RELOAD_EVERY)
    assert tokens.keyring.lookup(new) is before  # re-read, and still the same object
    assert token in cached._cache
    cached.verify_session(token)
    assert token in cached._cache  # a hit, not a full verification that re-inserts it


def test_a_clock_stepped_back_does_not_hold_the_last_read(tmp_path: Path):
    clock, tokens, old, _ = _two_keys(tmp_path)
    retire_key(tmp_path, old)
    clock.advance(-3600)
    assert tokens.keyring.lookup(old) is None


def test_a_key_retired_while_the_directory_is_read_is_skipped(tmp_path: Path, monkeypatch):
    old = write_key(tmp_path, "EdDSA", now=time.time() - 3600)
    new = write_key(tmp_path, "EdDSA", now=time.time() - 1800)
    listing = list(tmp_path.glob("*.pem"))
    (tmp_path / f"{old}.pem").unlink()  # retired after the listing, before the read
    monkeypatch.setattr(type(tmp_path), "glob", lambda self, pattern: iter(listing))
    assert [k.kid for k in load_keys(tmp_path)] == [new]
