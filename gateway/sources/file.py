"""The users file: a TOML table of usernames with argon2id hashes and roles."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config import Config
from gateway.sources.base import MAX_PASSWORD_BYTES, User, canonical_username
from gateway.sources.hashes import UnknownHashFormat, burn_time, hash_password, verify_password
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.users")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class UsersFileError(Exception):
    """The users file cannot be read or written, or a name or role is not allowed."""


def check_username(name: str) -> str:
    """The canonical name, or UsersFileError if it is not allowed."""
    canonical = canonical_username(name)
    if not _NAME.match(canonical):
        raise UsersFileError(
            f"username {name!r} is not allowed: 1-64 of a-z 0-9 . _ @ -, starting with a letter "
            "or digit"
        )
    return canonical


def check_roles(roles: list[str]) -> tuple[str, ...]:
    """The roles, or UsersFileError naming the first that is not allowed."""
    for role in roles:
        if not _ROLE.fullmatch(role):
            raise UsersFileError(f"role {role!r} is not allowed: letters, digits, . _ : -")
    return tuple(dict.fromkeys(roles))


@dataclass(frozen=True)
class UserRecord:
    """One entry of the users file."""

    name: str
    hash: str
    roles: tuple[str, ...]
    disabled: bool = False  # a disabled user cannot sign in and their sessions end


def read_users(path: Path) -> dict[str, UserRecord]:
    """Every user in the file (an absent file has none)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsersFileError(f"{path}: cannot be read ({exc})") from None
    users = raw.get("users", {})
    if not isinstance(users, dict):
        raise UsersFileError(f"{path}: [users] must be a table")
    out = {}
    for name, entry in users.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise UsersFileError(f"{path}: users.{name} needs a hash")
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise UsersFileError(f"{path}: users.{name}.roles must be a list of strings")
        disabled = entry.get("disabled", False)
        if not isinstance(disabled, bool):
            raise UsersFileError(f"{path}: users.{name}.disabled must be true or false")
        out[name] = UserRecord(name, entry["hash"], tuple(roles), disabled)
    return out


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_users(path: Path, users: dict[str, UserRecord]) -> None:
    """Write the whole file atomically with mode 0600 (it holds password hashes)."""
    lines = ["# Written by `gateway users`. Hashes are argon2id.", ""]
    for name in sorted(users):
        record = users[name]
        roles = ", ".join(_toml_string(r) for r in record.roles)
        lines += [
            f"[users.{_toml_string(name)}]",
            f"hash = {_toml_string(record.hash)}",
            f"roles = [{roles}]",
        ]
        if record.disabled:
            lines.append("disabled = true")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    os.replace(temp, path)


def set_user(path: Path, name: str, password: str, roles: tuple[str, ...] | None) -> UserRecord:
    """Add a user or change one's password (and roles, when given)."""
    name = check_username(name)
    if not password:
        raise UsersFileError("the password must not be empty")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise UsersFileError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    users = read_users(path)
    if roles is None:
        roles = users[name].roles if name in users else ()
    disabled = users[name].disabled if name in users else False
    record = UserRecord(name, hash_password(password), check_roles(list(roles)), disabled)
    users[name] = record
    write_users(path, users)
    return record


def remove_user(path: Path, name: str) -> None:
    """Delete a user; UsersFileError if there is none by that name."""
    canonical = canonical_username(name)
    users = read_users(path)
    if canonical not in users:
        raise UsersFileError(f"no user {name!r}")
    del users[canonical]
    write_users(path, users)


def set_disabled(path: Path, name: str, disabled: bool) -> UserRecord:
    """Disable a user (no sign-in, sessions refused) or enable them again."""
    canonical = canonical_username(name)
    users = read_users(path)
    if canonical not in users:
        raise UsersFileError(f"no user {name!r}")
    record = replace(users[canonical], disabled=disabled)
    users[canonical] = record
    write_users(path, users)
    return record


class FileUsers:
    """The users file as a credential backend, re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, UserRecord] = {}

    def _current(self) -> dict[str, UserRecord]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            self._users = read_users(self.path)
            self._stamp = stamp
        return self._users

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right; None otherwise, after the same work either way."""
        record = self._current().get(canonical_username(username))
        if record is None or record.disabled:
            # spend what a real verification costs, so timing does not tell who exists
            await asyncio.to_thread(burn_time, password)
            return None
        try:
            ok = await asyncio.to_thread(verify_password, record.hash, password)
        except UnknownHashFormat as exc:
            log.warning("users file: login refused for %r: %s", record.name, exc)
            return None
        return User(record.name, record.roles) if ok else None

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        """The user as the file has them now; None if removed or disabled (ids are names)."""
        try:
            record = self._current().get(user_id)
        except UsersFileError as exc:
            # a half-written or broken file says nothing about this user: as if it were down
            raise StoreUnavailable(str(exc)) from None
        if record is None or record.disabled:
            return None
        return User(record.name, record.roles)

    async def close(self) -> None:
        """Nothing to release."""


def from_config(config: Config) -> FileUsers:
    """The `users = "file"` source: argon2id hashes in `auth.users_file`."""
    return FileUsers(config.auth.users_file)
