"""Signing keys on disk: generate, rotate, retire, load.

Each private key is one PEM file `<kid>.pem` (mode 0600) in the key directory. Key ids
sort by creation time. A new key verifies at once but signs only once it is
ACTIVATE_AFTER seconds old, so every replica has read it (they re-read the directory
at least that often) before any token signed with it reaches them. Older keys only
verify until their tokens have expired and an operator retires them: a retired key stops
verifying in every running gateway within the keyring's reload interval (5 s).
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ASYMMETRIC = ("EdDSA", "ES256", "RS256")
# creation time to the microsecond (a rotation right after the first start must sort after it)
_KID = re.compile(r"^([0-9]{8}T[0-9]{6})(?:\.([0-9]{6}))?Z-[0-9a-f]{8}$")
ACTIVATE_AFTER = 10.0  # seconds; at least twice the replicas' key reload interval
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyFileError(Exception):
    """A key file is missing, unreadable or of the wrong kind."""


@dataclass(frozen=True)
class SigningKey:
    """One key: its id, the algorithm it signs with, and the material PyJWT takes."""

    kid: str
    algorithm: str
    private: object  # a cryptography private key, or bytes for HS256
    public: object  # a cryptography public key, or bytes for HS256


def _generate(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise KeyFileError(f"cannot generate a key for {algorithm!r}")


def _algorithm_of(key: object) -> str | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "RS256"
    return None


def new_kid(now: float | None = None) -> str:
    """A sortable key id: UTC creation time to the microsecond and 32 random bits."""
    when = time.time() if now is None else now
    seconds = int(when)
    micros = round((when - seconds) * 1_000_000)
    if micros == 1_000_000:
        seconds, micros = seconds + 1, 0
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
    return f"{stamp}.{micros:06d}Z-{secrets.token_hex(4)}"


# the signing key is chosen per minted token (one assertion per proxied request): parse once
@functools.lru_cache(maxsize=256)
def created_at(kid: str) -> float:
    """The creation time a key id records (unix seconds)."""
    match = _KID.match(kid)
    if match is None:
        raise ValueError(f"not a key id: {kid!r}")
    seconds = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%S"))
    return seconds + int(match.group(2) or 0) / 1_000_000


def active_key(keys: list[SigningKey], now: float) -> SigningKey:
    """The signing key: the newest one at least ACTIVATE_AFTER old, else the oldest."""
    for key in reversed(keys):
        if key.kid.startswith("hs-") or created_at(key.kid) <= now - ACTIVATE_AFTER:
            return key
    return keys[0]


def write_key(directory: Path, algorithm: str, now: float | None = None) -> str:
    """Generate a key, write it as `<kid>.pem` with mode 0600, and return its kid."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _generate(algorithm)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    when = time.time() if now is None else now
    if now is None:
        # a clock stepped back must not make the new key sort before (and sign after) an old one
        newest = max(
            (created_at(f.stem) for f in directory.glob("*.pem") if _KID.match(f.stem)), default=0.0
        )
        when = max(when, newest + 0.000001)
    kid = new_kid(when)
    final = directory / f"{kid}.pem"
    temp = directory / f".{kid}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    # rename is atomic: a replica reloading the directory never sees half a key
    os.replace(temp, final)
    return kid


def ensure_key(directory: Path, algorithm: str) -> str | None:
    """Create the first key if the directory holds none for this algorithm; return its kid."""
    if algorithm not in ASYMMETRIC:
        return None
    if any(k.algorithm == algorithm for k in load_keys(directory)):
        return None
    return write_key(directory, algorithm)


def load_keys(directory: Path) -> list[SigningKey]:
    """Every usable key in the directory, oldest first; unreadable files raise KeyFileError."""
    if not directory.is_dir():
        return []
    keys = []
    files = [f for f in directory.glob("*.pem") if _KID.match(f.stem)]
    # oldest first by the recorded time (ids without microseconds, from before, sort by it too)
    for file in sorted(files, key=lambda f: (created_at(f.stem), f.stem)):
        kid = file.stem
        try:
            pem = file.read_bytes()
        except FileNotFoundError:
            # retired between the listing and the read: a gateway re-reading its keys on a
            # request must not fail it (nor keep the key) over that race
            continue
        except OSError as exc:
            raise KeyFileError(f"key {kid} cannot be loaded ({exc.__class__.__name__})") from None
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"key {kid} cannot be loaded ({exc.__class__.__name__})") from None
        algorithm = _algorithm_of(private)
        if algorithm is None:
            raise KeyFileError(f"key {kid} is of an unsupported type")
        keys.append(SigningKey(kid, algorithm, private, private.public_key()))
    return keys


def retire_key(directory: Path, kid: str) -> None:
    """Delete one key; refuse to delete the only or the active key of its algorithm."""
    keys = load_keys(directory)
    target = next((k for k in keys if k.kid == kid), None)
    if target is None:
        raise KeyFileError(f"no key with id {kid!r}")
    same = [k for k in keys if k.algorithm == target.algorithm]
    if active_key(same, time.time()).kid == kid:
        raise KeyFileError(f"key {kid} is the active signing key; rotate first")
    if same[-1].kid == kid:
        raise KeyFileError(f"key {kid} is the newest key and signs soon; rotate first")
    (directory / f"{kid}.pem").unlink()


def secret_key(secret: str) -> SigningKey:
    """The HS256 key from a shared secret; its kid is derived so every replica agrees."""
    material = secret.encode("utf-8")
    kid = "hs-" + hashlib.sha256(b"gateway-kid:" + material).hexdigest()[:16]
    return SigningKey(kid, "HS256", material, material)
