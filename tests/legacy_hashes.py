"""Password hashes as the apps in front of which the gateway stands wrote them.

Each comes from the library that writes it (argon2-cffi, bcrypt, Django's hashers,
werkzeug.security); PHP's `password_hash` is bcrypt with a `$2y$` prefix, and Django's
retired salted SHA-1 is reproduced from its documented format.
"""

from __future__ import annotations

import base64
import hashlib

import argon2
import bcrypt
import django
from django.conf import settings
from werkzeug.security import generate_password_hash

if not settings.configured:
    settings.configure(
        PASSWORD_HASHERS=[
            "django.contrib.auth.hashers.PBKDF2PasswordHasher",
            "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
            "django.contrib.auth.hashers.Argon2PasswordHasher",
            "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
            "django.contrib.auth.hashers.MD5PasswordHasher",
        ]
    )
    django.setup()

from django.contrib.auth import hashers as django_hashers


def argon2id(password: str) -> str:
    """argon2-cffi's PasswordHasher with its defaults (argon2id)."""
    return argon2.PasswordHasher().hash(password)


def bcrypt_hash(password: str, prefix: bytes = b"2b", rounds: int = 10) -> str:
    """pyca/bcrypt; 10 rounds is PHP's default cost."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds, prefix=prefix)).decode()


def php_password_hash(password: str) -> str:
    """What PHP's password_hash(PASSWORD_BCRYPT) writes: bcrypt under the `$2y$` prefix."""
    made = bcrypt_hash(password)
    assert made.startswith("$2b$")
    return "$2y$" + made[4:]


def django_make_password(password: str, hasher: str = "default") -> str:
    """Django's own make_password (pbkdf2_sha256 by default, with Django's iterations)."""
    return django_hashers.make_password(password, hasher=hasher)


def django_pbkdf2_legacy(password: str, iterations: int = 260000) -> str:
    """Django's PBKDF2PasswordHasher with an older release's iteration count (3.2: 260000)."""
    hasher = django_hashers.PBKDF2PasswordHasher()
    return hasher.encode(password, hasher.salt(), iterations=iterations)


def django_pbkdf2_reproduced(password: str, salt: str, iterations: int) -> str:
    """Django's documented format: pbkdf2_sha256$<iterations>$<salt>$<base64 of the digest>."""
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


def django_salted(algorithm: str, password: str, salt: str) -> str:
    """Django's retired salted hashers: <algorithm>$<salt>$hex(<algorithm>(salt + password))."""
    digest = hashlib.new(algorithm, (salt + password).encode()).hexdigest()
    return f"{algorithm}${salt}${digest}"


def werkzeug_hash(password: str, method: str) -> str:
    """werkzeug.security.generate_password_hash, as Flask apps call it."""
    return generate_password_hash(password, method=method)
