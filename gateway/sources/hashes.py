"""Password hashes: argon2id for our own users file, and the formats legacy apps wrote.

Verified formats (`verify_password`):

- argon2 (`$argon2id$`, `$argon2i$`, `$argon2d$`), and Django's `argon2$argon2id$...`
- bcrypt (`$2a$`, `$2b$`, `$2y$` as PHP writes it), and Django's `bcrypt_sha256$`
- Django `pbkdf2_sha256$iterations$salt$hash` (and `pbkdf2_sha1$`)
- Werkzeug `pbkdf2:sha256:iterations$salt$hexhash` and `scrypt:n:r:p$salt$hexhash`
- salted SHA-1 / MD5 as Django wrote them (`sha1$salt$hex`, `md5$salt$hex`), only
  when the operator set `allow_weak_hashes = true`

Anything else, a malformed hash, or one asking for absurd work raises UnknownHashFormat,
which the caller turns into a failed login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable

import argon2
import bcrypt

_ARGON2 = argon2.PasswordHasher()  # argon2id with argon2-cffi's RFC 9106 low-memory profile
DUMMY_HASH = _ARGON2.hash("gateway: a password nobody has")

# bounds on the work a stored hash may ask for, so one odd row cannot stall or exhaust a
# worker; each is far above what any library's default writes
_MAX_PBKDF2_ITERATIONS = 10_000_000
_MAX_BCRYPT_COST = 16
_MAX_ARGON2_MEMORY_KIB = 1024 * 1024
_MAX_ARGON2_TIME = 20
_MAX_ARGON2_LANES = 64
_MAX_SCRYPT_N = 2**20
_MAX_SCRYPT_R = 32
_MAX_SCRYPT_P = 16
_MAX_SCRYPT_BYTES = 2**30
_BCRYPT_MAX_BYTES = 72  # bcrypt only ever read this many bytes of a password
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")


class UnknownHashFormat(ValueError):
    """The stored hash is in no format we verify (or a weak one that is not allowed)."""


class WeakHashRefused(UnknownHashFormat):
    """A salted SHA-1/MD5 hash while `allow_weak_hashes` is off."""


def hash_password(password: str) -> str:
    """A new argon2id hash (what `gateway users add` stores)."""
    return _ARGON2.hash(password)


def burn_time(password: str) -> None:
    """Spend as long as a real check would, so an unknown user answers like a wrong password."""
    try:
        _ARGON2.verify(DUMMY_HASH, password.encode("utf-8", "surrogatepass"))
    except argon2.exceptions.VerificationError:
        pass


def hash_format(stored: str) -> str:
    """A short name for the format of a stored hash (for logs), or "unknown"."""
    if not isinstance(stored, str):
        return "unknown"
    for name, test in _FORMATS:
        if test(stored):
            return name
    return "unknown"


def verify_password(stored: str, password: str, *, allow_weak: bool = False) -> bool:
    """True when `password` matches `stored`; raises UnknownHashFormat for a format we refuse."""
    name = hash_format(stored)
    if name == "unknown":
        raise UnknownHashFormat("unrecognised password hash format")
    if name in _WEAK and not allow_weak:
        raise WeakHashRefused(f"{name} hash refused: set allow_weak_hashes = true to accept it")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate from JSON: no stored password can be it
    try:
        return _VERIFY[name](stored, password)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UnknownHashFormat(f"malformed {name} hash ({exc})") from exc


def _argon2(stored: str, password: str) -> bool:
    params = argon2.extract_parameters(stored)  # InvalidHashError (a ValueError) if malformed
    _bounded(params.memory_cost, _MAX_ARGON2_MEMORY_KIB, "argon2 memory")
    _bounded(params.time_cost, _MAX_ARGON2_TIME, "argon2 time cost")
    _bounded(params.parallelism, _MAX_ARGON2_LANES, "argon2 parallelism")
    try:
        return _ARGON2.verify(stored, password)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except argon2.exceptions.VerificationError as exc:
        raise ValueError(str(exc)) from exc


def _django_argon2(stored: str, password: str) -> bool:
    return _argon2(stored.removeprefix("argon2"), password)


def _bcrypt(stored: str, password: str) -> bool:
    match = _BCRYPT.match(stored)
    if match is None:
        raise ValueError("not 60 characters of bcrypt")
    _bounded(int(match[1]), _MAX_BCRYPT_COST, "bcrypt cost")
    raw = stored.encode("ascii")
    if raw.startswith(b"$2y$"):
        raw = b"$2b$" + raw[4:]  # PHP's $2y$ is the same algorithm as $2b$
    return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX_BYTES], raw)


def _django_bcrypt_sha256(stored: str, password: str) -> bool:
    # Django hashes the password with SHA-256 first, so bcrypt sees its 64 hex digits
    digest = hashlib.sha256(password.encode()).hexdigest()
    return _bcrypt(stored.removeprefix("bcrypt_sha256$"), digest)


def _django_pbkdf2(stored: str, password: str) -> bool:
    algorithm, iterations, salt, expected = stored.split("$", 3)
    digest = {"pbkdf2_sha256": "sha256", "pbkdf2_sha1": "sha1"}[algorithm]
    rounds = _bounded(_number(iterations), _MAX_PBKDF2_ITERATIONS, "pbkdf2 iterations")
    derived = hashlib.pbkdf2_hmac(digest, password.encode(), salt.encode(), rounds)
    return hmac.compare_digest(base64.b64encode(derived).decode("ascii"), expected)


def _werkzeug(stored: str, password: str) -> bool:
    method, salt, expected = stored.split("$", 2)
    parts = method.split(":")
    if parts[0] == "pbkdf2":
        if len(parts) != 3:
            raise ValueError("pbkdf2 hash without iterations")
        digest = parts[1]
        rounds = _bounded(_number(parts[2]), _MAX_PBKDF2_ITERATIONS, "pbkdf2 iterations")
        if digest not in {"sha256", "sha512", "sha1"}:
            raise ValueError(f"unsupported pbkdf2 digest {digest!r}")
        derived = hashlib.pbkdf2_hmac(digest, password.encode(), salt.encode(), rounds)
    else:
        if len(parts) != 4:
            raise ValueError("scrypt hash without parameters")
        n, r, p = (_number(x) for x in parts[1:])
        _bounded(n, _MAX_SCRYPT_N, "scrypt n")
        _bounded(r, _MAX_SCRYPT_R, "scrypt r")
        _bounded(p, _MAX_SCRYPT_P, "scrypt p")
        _bounded(128 * n * r, _MAX_SCRYPT_BYTES, "scrypt memory")
        # Werkzeug's allowance: OpenSSL needs a little more than 128 * n * r * p bytes
        derived = hashlib.scrypt(
            password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p
        )
    return hmac.compare_digest(derived.hex(), expected)


def _salted_weak(stored: str, password: str) -> bool:
    algorithm, salt, expected = stored.split("$", 2)
    derived = hashlib.new(algorithm, (salt + password).encode(), usedforsecurity=False)
    return hmac.compare_digest(derived.hexdigest(), expected)


def _number(text: str) -> int:
    if not _DIGITS.match(text):
        raise ValueError(f"{text[:20]!r} is not a number")
    return int(text)


def _bounded(value: int, limit: int, what: str) -> int:
    if not 0 < value <= limit:
        raise ValueError(f"{what} {value} is out of range (at most {limit})")
    return value


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda stored: stored.startswith(prefixes)


_FORMATS = (
    ("argon2", _starts("$argon2id$", "$argon2i$", "$argon2d$")),
    ("django-argon2", _starts("argon2$argon2")),
    ("bcrypt", _starts("$2a$", "$2b$", "$2y$")),
    ("django-bcrypt_sha256", _starts("bcrypt_sha256$$2")),
    (
        "django-pbkdf2",
        lambda s: s.startswith(("pbkdf2_sha256$", "pbkdf2_sha1$")) and s.count("$") == 3,
    ),
    ("werkzeug", lambda s: s.startswith(("pbkdf2:", "scrypt:")) and s.count("$") == 2),
    ("salted-sha1", lambda s: s.startswith("sha1$") and s.count("$") == 2),
    ("salted-md5", lambda s: s.startswith("md5$") and s.count("$") == 2),
)
_WEAK = {"salted-sha1", "salted-md5"}
_VERIFY: dict[str, Callable[[str, str], bool]] = {
    "argon2": _argon2,
    "django-argon2": _django_argon2,
    "bcrypt": _bcrypt,
    "django-bcrypt_sha256": _django_bcrypt_sha256,
    "django-pbkdf2": _django_pbkdf2,
    "werkzeug": _werkzeug,
    "salted-sha1": _salted_weak,
    "salted-md5": _salted_weak,
}
