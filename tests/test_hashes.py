"""verify_password against hashes made by the libraries (and apps) that make them.

argon2-cffi, bcrypt (and PHP's `$2y$`, which is bcrypt's `$2b$` under another name),
Django's own hashers, and werkzeug.security each write a hash of one password; the
gateway must accept that password and refuse any other, refuse weak salted SHA-1/MD5
unless allowed, and answer every other string with UnknownHashFormat, never a crash
or a stall.
"""

from __future__ import annotations

import base64
import functools
import hashlib

import argon2
import bcrypt
import pytest

from gateway.sources.hashes import (
    UnknownHashFormat,
    WeakHashRefused,
    burn_time,
    hash_format,
    hash_password,
    verify_password,
)
from tests.legacy_hashes import (
    argon2id,
    bcrypt_hash,
    django_hashers,
    django_make_password,
    django_pbkdf2_reproduced,
    django_salted,
    php_password_hash,
    werkzeug_hash,
)

PASSWORD = "correct horse ✓ bättery"  # non-ASCII: every library must agree on UTF-8
WRONG = "correct horse ✓ battery"


def make_hashes() -> dict[str, str]:
    """One hash of PASSWORD per format, each written by the library that writes it."""
    return {
        "argon2id (argon2-cffi)": argon2id(PASSWORD),
        "argon2i (argon2-cffi)": argon2.PasswordHasher(type=argon2.Type.I).hash(PASSWORD),
        "bcrypt $2b$": bcrypt_hash(PASSWORD),
        "bcrypt $2a$": bcrypt_hash(PASSWORD, prefix=b"2a"),
        "bcrypt $2y$ (PHP)": php_password_hash(PASSWORD),
        "Django pbkdf2_sha256 (reproduced)": django_pbkdf2_reproduced(
            PASSWORD, "a1b2c3d4e5f6", 260000
        ),
        "Django pbkdf2_sha256 (Django)": django_make_password(PASSWORD),
        "Django pbkdf2_sha1 (Django)": django_make_password(PASSWORD, hasher="pbkdf2_sha1"),
        "Django argon2 (Django)": django_make_password(PASSWORD, hasher="argon2"),
        "Django bcrypt_sha256 (Django)": django_make_password(PASSWORD, hasher="bcrypt_sha256"),
        "werkzeug pbkdf2:sha256": werkzeug_hash(PASSWORD, method="pbkdf2:sha256"),
        "werkzeug pbkdf2:sha256 old iterations": werkzeug_hash(
            PASSWORD, method="pbkdf2:sha256:260000"
        ),
        "werkzeug scrypt": werkzeug_hash(PASSWORD, method="scrypt"),
    }


WEAK = {
    "salted sha1 (Django format, reproduced)": django_salted("sha1", PASSWORD, "k3Yx9q"),
    "salted md5 (Django)": django_make_password(PASSWORD, hasher="md5"),
}


@pytest.fixture(scope="module")
def strong() -> dict[str, str]:
    return make_hashes()


STRONG_NAMES = [
    "argon2id (argon2-cffi)",
    "argon2i (argon2-cffi)",
    "bcrypt $2b$",
    "bcrypt $2a$",
    "bcrypt $2y$ (PHP)",
    "Django pbkdf2_sha256 (reproduced)",
    "Django pbkdf2_sha256 (Django)",
    "Django pbkdf2_sha1 (Django)",
    "Django argon2 (Django)",
    "Django bcrypt_sha256 (Django)",
    "werkzeug pbkdf2:sha256",
    "werkzeug pbkdf2:sha256 old iterations",
    "werkzeug scrypt",
]


def test_the_table_of_formats_is_complete(strong):
    assert sorted(strong) == sorted(STRONG_NAMES)
    assert strong["bcrypt $2a$"].startswith("$2a$")
    assert strong["bcrypt $2y$ (PHP)"].startswith("$2y$10$")
    assert strong["werkzeug pbkdf2:sha256"].startswith("pbkdf2:sha256:")
    assert strong["werkzeug scrypt"].startswith("scrypt:")


@pytest.mark.parametrize("name", STRONG_NAMES)
def test_the_right_password_verifies(strong, name):
    assert verify_password(strong[name], PASSWORD) is True


@pytest.mark.parametrize("name", STRONG_NAMES)
def test_a_wrong_password_is_refused(strong, name):
    assert verify_password(strong[name], WRONG) is False


def test_our_reading_of_djangos_format_matches_django():
    made_by_django = django_hashers.PBKDF2PasswordHasher().encode(
        PASSWORD, "a1b2c3d4e5f6", iterations=260000
    )
    assert made_by_django == django_pbkdf2_reproduced(PASSWORD, "a1b2c3d4e5f6", 260000)
    assert django_hashers.check_password(PASSWORD, made_by_django)


def test_php_2y_hash_is_bcrypt_2b_under_another_name():
    made = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    as_php = "$2y$" + made[4:]
    assert verify_password(as_php, PASSWORD) is True
    assert verify_password(as_php, WRONG) is False


def test_bcrypt_reads_only_72_bytes_like_every_bcrypt():
    long_password = "x" * 72 + "tail the library never saw"
    made = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(made, long_password) is True
    assert verify_password(made, "x" * 71) is False


@pytest.mark.parametrize("name", list(WEAK))
def test_weak_salted_hashes_verify_only_when_allowed(name):
    stored = WEAK[name]
    with pytest.raises(WeakHashRefused):
        verify_password(stored, PASSWORD)
    assert verify_password(stored, PASSWORD, allow_weak=True) is True
    assert verify_password(stored, WRONG, allow_weak=True) is False


def test_a_weak_refusal_is_an_unknown_format_to_callers():
    with pytest.raises(UnknownHashFormat, match="allow_weak_hashes"):
        verify_password(WEAK["salted md5 (Django)"], PASSWORD)


UNKNOWN = {
    "empty": "",
    "plain text": "hunter2",
    "unsalted md5 hex": hashlib.md5(b"hunter2").hexdigest(),
    "unsalted sha1 hex": hashlib.sha1(b"hunter2").hexdigest(),
    "md5-crypt": "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
    "sha512-crypt": "$6$saltsalt$" + "a" * 86,
    "ldap ssha": "{SSHA}" + base64.b64encode(b"x" * 24).decode(),
    "phpass": "$P$B12345678" + "a" * 22,
    "bcrypt 2x": "$2x$10$" + "a" * 53,
    "django unsalted md5 via unknown name": "md5_unsalted$$" + "a" * 32,
    "crypt des": "abJnggxhB/yWI",
}


@pytest.mark.parametrize("stored", list(UNKNOWN.values()), ids=list(UNKNOWN))
def test_unknown_formats_raise_unknown_hash_format(stored):
    assert hash_format(stored) == "unknown"
    with pytest.raises(UnknownHashFormat):
        verify_password(stored, PASSWORD, allow_weak=True)


def test_a_non_string_hash_is_unknown_not_a_crash():
    with pytest.raises(UnknownHashFormat):
        verify_password(b"$2b$10$abc", PASSWORD)  # type: ignore[arg-type]


def _replace(stored: str, old: str, new: str) -> str:
    assert old in stored
    return stored.replace(old, new, 1)


@functools.cache
def malformed_hashes() -> dict[str, str]:
    made = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
    argon = argon2.PasswordHasher().hash("x")
    return {
        "bcrypt cut short": made[:40],
        "bcrypt with a bad cost": "$2b$xx" + made[6:],
        "bcrypt cost out of bcrypt's range": "$2b$99" + made[6:],
        "bcrypt with non-ASCII": made[:-1] + "é",
        "argon2 garbage": "$argon2id$garbage",
        "argon2 without a digest": argon.rsplit("$", 1)[0],
        "argon2 with a broken digest": argon[:-4] + "!!!!",
        "django pbkdf2 with words for iterations": "pbkdf2_sha256$many$salt$aGFzaA==",
        "django pbkdf2 with underscored iterations": "pbkdf2_sha256$1_000$salt$aGFzaA==",
        "django pbkdf2 with zero iterations": "pbkdf2_sha256$0$salt$aGFzaA==",
        "django pbkdf2 with non-ASCII digest": "pbkdf2_sha256$1000$salt$ÿÿÿ",
        "werkzeug pbkdf2 without iterations": "pbkdf2:sha256$salt$" + "ab" * 32,
        "werkzeug pbkdf2 with an unknown digest": "pbkdf2:md4:1000$salt$" + "ab" * 32,
        "werkzeug scrypt with two parameters": "scrypt:16384:8$salt$" + "ab" * 64,
        "werkzeug scrypt with n not a power of two": "scrypt:1000:8:1$salt$" + "ab" * 64,
        "werkzeug scrypt with negative r": "scrypt:16384:-8:1$salt$" + "ab" * 64,
        "django argon2 garbage": "argon2$argon2id$nothing",
        "django bcrypt_sha256 cut short": "bcrypt_sha256$$2b$12$short",
    }


@pytest.mark.parametrize("name", list(malformed_hashes()))
def test_malformed_hashes_raise_unknown_hash_format(name):
    with pytest.raises(UnknownHashFormat, match="malformed"):
        verify_password(malformed_hashes()[name], PASSWORD)


@functools.cache
def absurd_hashes() -> dict[str, str]:
    """Well-formed hashes whose parameters would stall or exhaust a worker if obeyed."""
    made = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
    argon = argon2.PasswordHasher().hash("x")
    scrypt = werkzeug_hash("x", method="scrypt")
    return {
        "bcrypt cost 31 (days)": _replace(made, "$04$", "$31$"),
        "bcrypt cost 20": _replace(made, "$04$", "$20$"),
        "argon2 with 4 GiB of memory": _replace(argon, "m=65536", "m=4194304"),
        "argon2 with 1000 passes": _replace(argon, "t=3", "t=1000"),
        "argon2 with 255 lanes": _replace(argon, "p=4", "p=255"),
        "django pbkdf2 with 2**31 iterations": django_pbkdf2_reproduced("x", "salt", 1).replace(
            "$1$", f"${2**31}$"
        ),
        "werkzeug pbkdf2 with 10**9 iterations": "pbkdf2:sha256:999999999$salt$" + "ab" * 32,
        "werkzeug scrypt with n = 2**30": _replace(scrypt, "scrypt:32768", f"scrypt:{2**30}"),
        "werkzeug scrypt with r = 1024": _replace(scrypt, ":8:1$", ":1024:1$"),
        "werkzeug scrypt with p = 2**20": _replace(scrypt, ":8:1$", f":8:{2**20}$"),
        "werkzeug scrypt with a huge r": _replace(scrypt, ":8:1$", f":{10**30}:1$"),
    }


@pytest.mark.parametrize("name", list(absurd_hashes()))
def test_absurd_work_factors_are_refused_before_any_work(name):
    with pytest.raises(UnknownHashFormat, match=r"out of range|not a number"):
        verify_password(absurd_hashes()[name], "x")


def test_a_lone_surrogate_password_is_wrong_not_a_crash(strong):
    # JSON can carry "\ud800"; it cannot be UTF-8, so no stored password can match it
    for stored in (*strong.values(), *WEAK.values()):
        assert verify_password(stored, "\ud800", allow_weak=True) is False
    burn_time("\ud800")


def test_hash_format_names_each_family(strong):
    assert hash_format(strong["argon2id (argon2-cffi)"]) == "argon2"
    assert hash_format(strong["bcrypt $2y$ (PHP)"]) == "bcrypt"
    assert hash_format(strong["Django pbkdf2_sha256 (Django)"]) == "django-pbkdf2"
    assert hash_format(strong["werkzeug scrypt"]) == "werkzeug"
    assert hash_format(WEAK["salted md5 (Django)"]) == "salted-md5"


def test_our_own_hashes_are_argon2id_and_verify():
    stored = hash_password(PASSWORD)
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, PASSWORD) is True
    assert verify_password(stored, WRONG) is False
