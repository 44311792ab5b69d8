"""Key ids sort by creation time, and a rotated key signs only once replicas have read it."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.auth.keys import ACTIVATE_AFTER, created_at, load_keys, new_kid, write_key
from gateway.auth.tokens import Keyring
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
