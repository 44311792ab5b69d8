"""`users = "htpasswd"`: an Apache htpasswd file, as oauth2-proxy, nginx and Apache read it.

One `name:hash` a line; blank lines and `#` comments are skipped, and anything after a second
`:` is ignored, as Apache does. Verified: bcrypt (`$2y$` as `htpasswd -B` writes it, `$2b$`,
`$2a$`); with `htpasswd_allow_weak_hashes`, also unsalted SHA-1 (`{SHA}`, `htpasswd -s`) and
Apache's MD5 (`$apr1$`, `htpasswd -m`). Anything else (plain text, crypt(3) DES, the SHA-crypt
`$5$`/`$6$`) is a failed login and a log line. Names are canonical_username's; a line whose
name is already taken by an earlier one is ignored with an error. The file is re-read when it
changes; while it cannot be read, the last good copy keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import bcrypt

from gateway.config import Config, ConfigError
from gateway.sources.base import User, canonical_username
from gateway.sources.hashes import UnknownHashFormat, WeakHashRefused, burn_time, verify_password

log = logging.getLogger("gateway.users")

_MAX_NAME = 256  # the longest name the sign-in form takes
_MAX_BCRYPT_COST = 16  # hashes.py refuses more; dummies are made only up to it
_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_APR1 = re.compile(r"^\$apr1\$([^$]{0,8})\$[./0-9A-Za-z]{22}$")
_BCRYPT_COST = re.compile(r"^\$2[aby]\$(\d\d)\$")
_DUMMY_PASSWORD = b"gateway: a password nobody has"
# a write within the file system's timestamp granularity of our read leaves mtime, size and
# inode as they were (`htpasswd` rewrites in place): until the mtime is this old, compare bytes
_RECENT_NS = 2_000_000_000


def apr1_md5(password: bytes, salt: bytes) -> str:
    """Apache's `$apr1$` hash: Poul-Henning Kamp's FreeBSD MD5-crypt under another magic.

    The algorithm of apr-util's crypto/apr_md5.c (apr_md5_encode), which `htpasswd -m` and
    `openssl passwd -apr1` write; the salt is at most 8 characters.
    """
    magic, salt = b"$apr1$", salt[:8]
    alternate = hashlib.md5(password + salt + password, usedforsecurity=False).digest()
    context = password + magic + salt
    context += (alternate * (len(password) // 16 + 1))[: len(password)]
    length = len(password)
    while length:
        context += b"\0" if length & 1 else password[:1]
        length >>= 1
    final = hashlib.md5(context, usedforsecurity=False).digest()
    for i in range(1000):
        round_input = password if i & 1 else final
        if i % 3:
            round_input += salt
        if i % 7:
            round_input += password
        round_input += final if i & 1 else password
        final = hashlib.md5(round_input, usedforsecurity=False).digest()
    encoded = ""
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        encoded += _to64((final[a] << 16) | (final[b] << 8) | final[c], 4)
    encoded += _to64(final[11], 2)
    return f"$apr1${salt.decode('utf-8', 'replace')}${encoded}"


def _to64(value: int, count: int) -> str:
    out = ""
    for _ in range(count):
        out += _ITOA64[value & 0x3F]
        value >>= 6
    return out


def _sha1_matches(stored: str, password: bytes) -> bool:
    expected = stored.removeprefix("{SHA}").encode("utf-8")
    if len(expected) != 28:
        raise UnknownHashFormat("malformed {SHA} hash (not base64 of 20 bytes)")
    digest = base64.b64encode(hashlib.sha1(password, usedforsecurity=False).digest())
    return hmac.compare_digest(digest, expected)


def _apr1_matches(stored: str, password: bytes) -> bool:
    match = _APR1.match(stored)
    if match is None:
        raise UnknownHashFormat("malformed $apr1$ hash")
    derived = apr1_md5(password, match[1].encode("utf-8"))
    return hmac.compare_digest(derived.encode("utf-8"), stored.encode("utf-8"))


def _starts(*prefixes: str) -> Callable[[str], bool]:
    return lambda stored: stored.startswith(prefixes)


# each format an htpasswd line may hold, by the name logs and the README give it
_FORMATS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("bcrypt", _starts("$2y$", "$2b$", "$2a$")),
    ("sha1", _starts("{SHA}")),
    ("apr1", _starts("$apr1$")),
    ("md5-crypt", _starts("$1$")),
    ("sha256-crypt", _starts("$5$")),
    ("sha512-crypt", _starts("$6$")),
    ("crypt-des", lambda s: re.fullmatch(r"[./0-9A-Za-z]{13}", s) is not None),
    ("empty", lambda s: not s),
    ("unknown", _starts("$", "{")),
    ("plain text", lambda s: True),  # Apache reads these only on Windows and NetWare
)
_WEAK: dict[str, Callable[[str, bytes], bool]] = {"sha1": _sha1_matches, "apr1": _apr1_matches}
_REFUSED = {
    "crypt-des": "crypt(3) DES hashes are refused (8-character passwords, cracked in hours)",
    "plain text": "plain-text passwords are refused",
    "empty": "no password hash",
    "unknown": "the hash is in no format htpasswd sources verify",
}


def entry_format(stored: str) -> str:
    """The name of the format of an htpasswd entry's hash ("bcrypt", "apr1", "plain text"...)."""
    return next(name for name, test in _FORMATS if test(stored))


def verify_entry(stored: str, password: str, *, allow_weak: bool = False) -> bool:
    """True when `password` matches an htpasswd hash; UnknownHashFormat for one we refuse."""
    name = entry_format(stored)
    if name == "bcrypt":
        return verify_password(stored, password)  # bounds the cost, as for every source
    if name not in _WEAK:
        why = _REFUSED.get(name, f"{name} hashes are not verified")
        raise UnknownHashFormat(f"{why}; make the entry with `htpasswd -B`")
    if not allow_weak:
        raise WeakHashRefused(
            f"{name} hash refused: set auth.htpasswd_allow_weak_hashes = true to accept it"
        )
    try:
        raw = password.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate from JSON: no stored password can be it
    return _WEAK[name](stored, raw)


def _work(stored: str, allow_weak: bool) -> tuple[str, int] | None:
    """What checking a password against this hash costs, if it is ever checked."""
    name = entry_format(stored)
    if name == "bcrypt":
        match = _BCRYPT_COST.match(stored)
        cost = int(match[1]) if match else 0
        return (name, cost) if 4 <= cost <= _MAX_BCRYPT_COST else None
    return (name, 0) if name in _WEAK and allow_weak else None


@cache
def _dummy_hash(name: str, cost: int) -> str:
    if name == "bcrypt":
        return bcrypt.hashpw(_DUMMY_PASSWORD, bcrypt.gensalt(rounds=cost)).decode("ascii")
    if name == "apr1":
        return apr1_md5(_DUMMY_PASSWORD, b"gateway")
    digest = hashlib.sha1(_DUMMY_PASSWORD, usedforsecurity=False).digest()
    return "{SHA}" + base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class Entry:
    """One user of the file: the canonical name, the stored hash, the line it is on."""

    name: str
    hash: str
    line: int


@dataclass(frozen=True)
class Table:
    """The users of one version of the file, and a hash that costs what checking theirs does."""

    users: dict[str, Entry]
    usual_work: tuple[str, int] | None = None  # the most common format (and bcrypt cost)

    def burn(self, password: str) -> None:
        """Spend what a wrong password costs here, so an unknown user answers just as late."""
        if self.usual_work is None:
            burn_time(password)  # nobody here can sign in: any work will do
            return
        try:
            # made on first use, in the worker thread: a bcrypt hash costs what a check does
            verify_entry(_dummy_hash(*self.usual_work), password, allow_weak=True)
        except UnknownHashFormat:
            pass


def parse_htpasswd(data: bytes, where: str, *, allow_weak: bool = False) -> Table:
    """The users in an htpasswd file's bytes; each line that cannot be used is logged."""
    users: dict[str, Entry] = {}
    for number, raw_line in enumerate(data.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError:
            log.error("htpasswd: %s line %d is not UTF-8; ignored", where, number)
            continue
        if not line or line.startswith("#"):
            continue
        written, colon, rest = line.partition(":")
        name = canonical_username(written)
        if not colon:
            log.error(
                "htpasswd: %s line %d has no ':' between name and hash; ignored", where, number
            )
            continue
        # the name becomes X-User-Id: a control character there would split the header
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            log.error(
                "htpasswd: %s line %d: the name %r is not allowed; ignored", where, number, written
            )
            continue
        if name in users:
            log.error(
                "htpasswd: %s line %d: %r is the same user as line %d (names compare as %r); "
                "the earlier line wins, this one is ignored",
                where,
                number,
                written,
                users[name].line,
                name,
            )
            continue
        stored = rest.split(":", 1)[0].strip()
        users[name] = Entry(name, stored, number)
        if _work(stored, allow_weak) is None:
            log.warning(
                "htpasswd: %s line %d: %r has a %s hash, which sign-in refuses",
                where,
                number,
                name,
                entry_format(stored),
            )
    # an unknown name is checked against a hash like most of the file's
    kinds = Counter(work for e in users.values() if (work := _work(e.hash, allow_weak)))
    return Table(users, kinds.most_common(1)[0][0] if kinds else None)


class HtpasswdUsers:
    """An htpasswd file as a password source, re-read when it changes on disk.

    A file that cannot be read at start raises ConfigError; later, the last good copy stays.
    """

    def __init__(
        self, path: Path, *, allow_weak_hashes: bool = False, roles: tuple[str, ...] = ()
    ) -> None:
        self.path = path
        self.allow_weak = allow_weak_hashes
        self.roles = tuple(roles)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._recent = False
        self._data: bytes | None = None
        self._table = Table({})
        self._unreadable: str | None = None  # why the file could not be read, once logged
        try:
            self._reload_if_changed()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                [f"auth.htpasswd_file: {str(path)!r} cannot be read ({reason})"]
            ) from None
        if allow_weak_hashes:
            log.warning(
                "auth.htpasswd_allow_weak_hashes is on: {SHA} and $apr1$ (MD5) entries are "
                "accepted; re-create those users with `htpasswd -B`"
            )

    def _reload_if_changed(self) -> None:
        stat = os.stat(self.path)
        stamp = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and not self._recent:
            return
        data = self.path.read_bytes()
        self._stamp = stamp
        self._recent = time.time_ns() - stat.st_mtime_ns < _RECENT_NS
        if self._unreadable is not None:
            log.info("htpasswd: %s can be read again", self.path)
            self._unreadable = None
        if data == self._data:
            return
        table = parse_htpasswd(data, str(self.path), allow_weak=self.allow_weak)
        self._data, self._table = data, table
        log.info("htpasswd: %d user(s) from %s", len(table.users), self.path)

    def _current(self) -> Table:
        with self._lock:
            try:
                self._reload_if_changed()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if reason != self._unreadable:
                    log.error(
                        "htpasswd: %s cannot be read (%s); the %d user(s) read before stay",
                        self.path,
                        reason,
                        len(self._table.users),
                    )
                    self._unreadable = reason
            return self._table

    def _check(self, username: str, password: str) -> User | None:
        table = self._current()
        entry = table.users.get(canonical_username(username))
        if entry is None:
            # the same work as a wrong password, so timing does not tell who exists
            table.burn(password)
            return None
        try:
            ok = verify_entry(entry.hash, password, allow_weak=self.allow_weak)
        except UnknownHashFormat as exc:
            log.warning(
                "htpasswd: login refused for %r: %s (format: %s)",
                entry.name,
                exc,
                entry_format(entry.hash),
            )
            table.burn(password)
            return None
        return User(entry.name, self.roles) if ok else None

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right; None otherwise, after the same work either way."""
        # stat, re-read and hash checks all run in a worker thread, off the event loop
        return await asyncio.to_thread(self._check, username, password)

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        """The user as the file has them now; None once their line is gone (ids are names)."""
        table = await asyncio.to_thread(self._current)
        entry = table.users.get(user_id)
        return User(entry.name, self.roles) if entry is not None else None

    async def close(self) -> None:
        """Nothing to release."""


def from_config(config: Config) -> HtpasswdUsers:
    """The `users = "htpasswd"` source: `auth.htpasswd_file`, every user given `htpasswd_roles`."""
    auth = config.auth
    return HtpasswdUsers(
        auth.htpasswd_file,
        allow_weak_hashes=auth.htpasswd_allow_weak_hashes,
        roles=auth.htpasswd_roles,
    )
