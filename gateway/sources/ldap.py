"""`users = "ldap"`: LDAP and Active Directory, read-only, on ldap3.

A sign-in searches `base_dn` with `user_filter` as the service account (`bind_dn`), the
username escaped per RFC 4515, takes the one entry found, refuses it if the directory says it
is disabled (Active Directory's `userAccountControl` ACCOUNTDISABLE bit, OpenLDAP's
`pwdAccountLockedTime`), then binds as that entry with the password on a connection of its
own. Roles are the `role_attribute` of the entry's groups: found by `group_filter` under
`group_base_dn` (`{dn}` for groupOfNames `member`, `{username}` for posixGroup `memberUid`),
read from `member_of_attribute` on the entry (AD's and OpenLDAP's `memberOf`), or both;
`nested_groups` follows groups that are members of groups. A refresh (`lookup`) asks the
same questions again, without the user's password.

An entry whose `user_attribute` has more than one value is refused (at sign-in and at refresh):
which value would be the id is the directory's order, and a user who may write that attribute
could put another's name first. A `member_of_attribute` value counts only when its DN is under
`group_base_dn` (compared parsed, RDN by RDN, case-insensitively), as a `group_filter` search
only looks there; when `group_base_dn` is unset (the config fills in `base_dn`) every listed
group counts. A password ldap3 refuses to send (SASLprep: control, private-use or
mapped-to-nothing characters) is a wrong password for the entry, never a directory failure.

Service-account searches run on a small pool of bound connections, each used by one worker
thread at a time; every connection is opened `read_only`, so ldap3 itself refuses any write
operation before it reaches the directory. A directory that cannot be reached raises
StoreUnavailable: sign-in answers 503, and refresh follows `[session] revocation`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import ssl
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPPasswordIsMandatoryError,
    LDAPSASLPrepError,
)
from ldap3.protocol.sasl.sasl import validate_simple_password
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn, to_dn

from gateway.config import Config, LdapConfig
from gateway.sources.base import User, WrongPassword, canonical_username, encodable
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.users")
T = TypeVar("T")

# Active Directory: userAccountControl bit 0x2 is ACCOUNTDISABLE
AD_ACCOUNTDISABLE = 0x2
# LDAP result codes a user's bind answers for a refused password or account (RFC 4511):
# invalidCredentials, inappropriateAuthentication, insufficientAccessRights, unwillingToPerform
_REFUSED = {48, 49, 50, 53}
# how far nested groups are followed, and how many groups one user may bring
MAX_NESTING = 8
MAX_GROUPS = 1000
_LOCK_ATTRIBUTES = ("userAccountControl", "pwdAccountLockedTime")
# what ldap3 raises, before anything is sent, for a password it cannot put in a simple bind
_UNSENDABLE_PASSWORD = (LDAPSASLPrepError, LDAPPasswordIsMandatoryError)
# the other names (RFC 4519) of the attribute types DNs are usually made of
_DN_ATTRIBUTE_NAMES = {
    "commonname": "cn",
    "2.5.4.3": "cn",
    "organizationalunitname": "ou",
    "2.5.4.11": "ou",
    "organizationname": "o",
    "2.5.4.10": "o",
    "domaincomponent": "dc",
    "0.9.2342.19200300.100.1.25": "dc",
    "userid": "uid",
    "0.9.2342.19200300.100.1.1": "uid",
    "countryname": "c",
    "2.5.4.6": "c",
    "localityname": "l",
    "2.5.4.7": "l",
}


class DirectoryError(Exception):
    """The directory could not answer (down, timed out, refused the service account)."""


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: dict[str, list[str]]

    def values(self, name: str) -> list[str]:
        """Every value of an attribute, by a case-insensitive name ([] when absent)."""
        wanted = name.lower()
        for key, values in self.attributes.items():
            if key.lower() == wanted:
                return values
        return []


def fill(template: str, **values: str) -> str:
    """A filter template with each `{name}` replaced by its RFC 4515-escaped value."""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", escape_filter_chars(value))
    return out


def _text_values(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, bytes | bytearray):
            item = bytes(item).decode("utf-8", "replace")
        out.append(str(item))
    return out


def _clean_role(value: str) -> str | None:
    """A role from a directory value, or None when it cannot travel in X-User-Roles."""
    role = value.strip()
    # roles are joined by commas in X-User-Roles: a comma or a control character would split it
    if not role or len(role) > 256 or "," in role or not role.isprintable():
        return None
    return role


class LdapUsers:
    """Users and their groups from an LDAP directory or Active Directory, never written to."""

    def __init__(self, config: LdapConfig) -> None:
        self.config = config
        self.timeout = config.timeout
        self._idle: queue.LifoQueue[ldap3.Connection] = queue.LifoQueue()
        # at most pool_size service connections exist; a caller waits for a free one
        self._slots = queue.Queue[None]()
        for _ in range(config.pool_size):
            self._slots.put(None)
        self._closed = False
        # memberOf values count only under group_base_dn, unless it is unset (the config then
        # fills in base_dn: every listed group counts, as before) or is base_dn itself
        group_base = _dn_key(config.group_base_dn)
        self._group_base: tuple[frozenset[tuple[str, str]], ...] | None = group_base
        self._any_group = group_base is not None and group_base == _dn_key(config.base_dn)
        if group_base is None and config.member_of_attribute:
            log.error(
                "ldap: group_base_dn %r is not a DN: no %s group gives a role",
                config.group_base_dn,
                config.member_of_attribute,
            )

    # -- connections -------------------------------------------------------------------

    def _make_server(self) -> ldap3.Server:
        c = self.config
        tls = None
        if c.url.startswith("ldaps://") or c.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
                ca_certs_file=str(c.ca_file) if c.ca_file else None,
            )
        return ldap3.Server(
            c.url,
            use_ssl=c.url.startswith("ldaps://"),
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.timeout,
            # a referral names another server: never follow one with our credentials
            allowed_referral_hosts=[],
        )

    def _open(self, user: str, password: str) -> ldap3.Connection:
        """A connection bound as `user`; raises LDAPException (bind refused: result in .result)."""
        conn = ldap3.Connection(
            # a Server of its own each time: ldap3 marks an address that once refused a
            # connection unusable for minutes, which would outlast a directory's restart
            self._make_server(),
            user=user,
            password=password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            authentication=ldap3.SIMPLE,
            read_only=True,
            auto_referrals=False,
            # ldap3 packs it into SO_RCVTIMEO: whole seconds
            receive_timeout=max(1, math.ceil(self.timeout)),
            raise_exceptions=False,
        )
        try:
            conn.open()
            if self.config.start_tls and not conn.start_tls():
                raise DirectoryError(f"StartTLS refused: {conn.result.get('description')}")
            conn.bind()
        except BaseException:
            conn.unbind()
            raise
        return conn

    def _service_connection(self) -> ldap3.Connection:
        conn = self._open(self.config.bind_dn, self.config.bind_password)
        if not conn.bound:
            result = dict(conn.result or {})
            conn.unbind()
            raise DirectoryError(
                f"the service account {self.config.bind_dn!r} was refused: "
                f"{result.get('description') or result.get('result')}"
            )
        return conn

    def _with_service(self, work: Callable[[ldap3.Connection], T]) -> T:
        """`work` on a bound service connection from the pool, which gets it back afterwards.

        A pooled connection the directory has dropped (restarted, idle timeout) fails its
        first use: then every idle one is dropped and `work` runs once more on a new one.
        """
        try:
            self._slots.get(timeout=self.timeout)
        except queue.Empty:
            raise DirectoryError("every directory connection is busy") from None
        try:
            while True:
                try:
                    conn, reused = self._idle.get_nowait(), True
                except queue.Empty:
                    conn, reused = self._service_connection(), False
                try:
                    result = work(conn)
                except (LDAPException, DirectoryError, OSError):
                    _unbind(conn)
                    if not reused:
                        raise
                    self._drain()
                    continue
                if self._closed or conn.closed:
                    _unbind(conn)
                else:
                    self._idle.put(conn)
                return result
        finally:
            self._slots.put(None)

    def _drain(self) -> None:
        while True:
            try:
                _unbind(self._idle.get_nowait())
            except queue.Empty:
                return

    # -- searches ----------------------------------------------------------------------

    def _search(
        self,
        conn: ldap3.Connection,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        scope: str = ldap3.SUBTREE,
        size_limit: int = 0,
    ) -> list[_Entry]:
        ok = conn.search(
            base,
            search_filter,
            search_scope=scope,
            attributes=list(attributes) or ldap3.NO_ATTRIBUTES,
            size_limit=size_limit,
            time_limit=max(1, math.ceil(self.timeout)),
        )
        result = dict(conn.result or {})
        code = result.get("result", 0)
        # 0 success, 4 sizeLimitExceeded (we asked for at most size_limit), 32 noSuchObject
        if not ok and code not in (0, 4, 32):
            if code in (1, 3, 51, 52, 80, 81, 85) or conn.closed:
                raise DirectoryError(f"search failed: {result.get('description') or code}")
            log.error("ldap: search under %r failed: %s", base, result.get("description") or code)
        entries = []
        for item in conn.response or []:
            if item.get("type") != "searchResEntry":
                continue  # a referral or a continuation: never followed
            attributes_ = {k: _text_values(v) for k, v in (item.get("attributes") or {}).items()}
            entries.append(_Entry(item["dn"], attributes_))
        return entries

    def _find_user(self, conn: ldap3.Connection, name: str) -> _Entry | None:
        c = self.config
        attributes = [c.user_attribute, *_LOCK_ATTRIBUTES]
        if c.member_of_attribute:
            attributes.append(c.member_of_attribute)
        found = self._search(
            conn, c.base_dn, fill(c.user_filter, username=name), attributes, size_limit=2
        )
        if len(found) > 1:
            log.warning("ldap: user_filter finds more than one entry for %r: refused", name)
            return None
        return found[0] if found else None

    def _user_id(self, entry: _Entry) -> str | None:
        values = entry.values(self.config.user_attribute)
        if not values:
            log.warning(
                "ldap: %r has no %s attribute: refused", entry.dn, self.config.user_attribute
            )
            return None
        if len(values) > 1:
            # which one would be the id is the directory's order of values, and a user who may
            # write the attribute could put another user's name first
            log.warning(
                "ldap: %r has %d values of %s: refused",
                entry.dn,
                len(values),
                self.config.user_attribute,
            )
            return None
        return canonical_username(values[0])

    def _group_counts(self, group_dn: str) -> bool:
        """True when a group listed in member_of_attribute may give roles (group_base_dn)."""
        if self._any_group:
            return True
        key = _dn_key(group_dn)
        base = self._group_base
        if key is not None and base is not None and _under(key, base):
            return True
        log.info(
            "ldap: group %r is not under group_base_dn %r: no role from it",
            group_dn,
            self.config.group_base_dn,
        )
        return False

    @staticmethod
    def _disabled(entry: _Entry) -> str | None:
        """Why the directory says this account may not sign in, or None."""
        for value in entry.values("userAccountControl"):
            try:
                if int(value) & AD_ACCOUNTDISABLE:
                    return "userAccountControl has ACCOUNTDISABLE"
            except ValueError:
                return "userAccountControl is not a number"
        if entry.values("pwdAccountLockedTime"):
            return "pwdAccountLockedTime is set"
        return None

    def _roles(self, conn: ldap3.Connection, entry: _Entry, name: str) -> tuple[str, ...]:
        """The role_attribute of every group of the entry (nested when configured)."""
        c = self.config
        groups: dict[str, list[str]] = {}  # group DN (lower case) -> its role values
        frontier: list[str] = []
        if c.group_filter:
            search_filter = fill(c.group_filter, dn=entry.dn, username=name)
            for group in self._search(conn, c.group_base_dn, search_filter, [c.role_attribute]):
                key = group.dn.lower()
                if key not in groups:
                    groups[key] = group.values(c.role_attribute)
                    frontier.append(group.dn)
        if c.member_of_attribute:
            for dn in entry.values(c.member_of_attribute):
                if dn.lower() not in groups and self._group_counts(dn):
                    groups[dn.lower()] = self._role_of(conn, dn)
                    frontier.append(dn)
        depth = 0
        while c.nested_groups and frontier and depth < MAX_NESTING and len(groups) < MAX_GROUPS:
            depth += 1
            frontier = self._parents(conn, frontier, groups)
        roles = (_clean_role(value) for values in groups.values() for value in values)
        return tuple(dict.fromkeys(role for role in roles if role))

    def _parents(
        self, conn: ldap3.Connection, children: list[str], groups: dict[str, list[str]]
    ) -> list[str]:
        """The groups that have any of `children` as a member and are not yet in `groups`."""
        c = self.config
        found: list[str] = []
        if "{dn}" in c.group_filter:
            # asked by DN only: {username} becomes NUL, which no name holds (posixGroup's
            # memberUid names users, never groups)
            parts = "".join(
                _parenthesized(fill(c.group_filter, dn=dn, username="\x00")) for dn in children
            )
            for group in self._search(conn, c.group_base_dn, f"(|{parts})", [c.role_attribute]):
                if group.dn.lower() not in groups:
                    groups[group.dn.lower()] = group.values(c.role_attribute)
                    found.append(group.dn)
        if c.member_of_attribute:
            for child in children:
                for entry in self._search(
                    conn, child, "(objectClass=*)", [c.member_of_attribute], scope=ldap3.BASE
                ):
                    for dn in entry.values(c.member_of_attribute):
                        if dn.lower() not in groups and self._group_counts(dn):
                            groups[dn.lower()] = self._role_of(conn, dn)
                            found.append(dn)
        return found

    def _role_of(self, conn: ldap3.Connection, group_dn: str) -> list[str]:
        """A group's role_attribute: from its own RDN when that is the attribute, else read."""
        try:
            rdn_attribute, rdn_value, _ = parse_dn(group_dn, escape=False)[0]
        except (LDAPException, IndexError, ValueError):
            rdn_attribute, rdn_value = "", ""
        if rdn_attribute.lower() == self.config.role_attribute.lower():
            return [_unescape_dn_value(rdn_value)]
        entries = self._search(
            conn, group_dn, "(objectClass=*)", [self.config.role_attribute], scope=ldap3.BASE
        )
        return entries[0].values(self.config.role_attribute) if entries else []

    # -- the source --------------------------------------------------------------------

    def _check(self, name: str, password: str) -> User | WrongPassword | None:
        # an empty password makes a simple bind "unauthenticated", which many servers accept
        if not password or not name or "\x00" in name or not encodable(name):
            return None

        def check(conn: ldap3.Connection) -> User | WrongPassword | None:
            entry = self._find_user(conn, name)
            user_id = self._user_id(entry) if entry is not None else None
            if entry is None or user_id is None:
                return None
            why = self._disabled(entry)
            if why:
                log.info("ldap: sign-in refused for %r: %s", user_id, why)
                return WrongPassword(user_id)
            if not self._bind_as(entry.dn, password):
                return WrongPassword(user_id)
            return User(user_id, self._roles(conn, entry, name), name)

        try:
            return self._with_service(check)
        except (LDAPException, DirectoryError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _bind_as(self, dn: str, password: str) -> bool:
        """True when the directory accepts this password for this DN."""
        try:
            # ldap3 runs SASLprep on a simple bind's password and raises for a control,
            # private-use or mapped-to-nothing character: what the user typed, so a wrong
            # password (counted as one), never a failing directory (503, the pool drained)
            validate_simple_password(password)
            conn = self._open(dn, password)
        except _UNSENDABLE_PASSWORD as exc:
            log.info("ldap: a password for %r that cannot be sent: %s", dn, exc)
            return False
        try:
            if conn.bound:
                return True
            code = (conn.result or {}).get("result")
            if code in _REFUSED:
                return False
            raise DirectoryError(f"bind failed: {(conn.result or {}).get('description') or code}")
        finally:
            conn.unbind()

    def _current(self, user_id: str, name: str) -> User | None:
        if not name or "\x00" in name or not encodable(name):
            return None

        def current(conn: ldap3.Connection) -> User | None:
            entry = self._find_user(conn, name)
            # gone, disabled, or the name now finds an entry with another id
            if entry is None or self._user_id(entry) != user_id or self._disabled(entry):
                return None
            return User(user_id, self._roles(conn, entry, name), name)

        try:
            return self._with_service(current)
        except (LDAPException, DirectoryError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        # the exception's text names the server and the failure, never the password
        log.error("ldap: directory unavailable: %s: %s", exc.__class__.__name__, exc)
        return StoreUnavailable("directory unavailable")

    async def authenticate(self, username: str, password: str) -> User | WrongPassword | None:
        """The user if the directory accepts the password; WrongPassword or None if not."""
        return await asyncio.to_thread(self._check, username, password)

    async def lookup(self, user_id: str, name: str = "") -> User | None:
        """The entry the name finds now, if it still has this id and is not disabled."""
        return await asyncio.to_thread(self._current, user_id, name or user_id)

    def _close(self) -> None:
        self._closed = True
        self._drain()

    async def close(self) -> None:
        """Unbind the pooled connections."""
        await asyncio.to_thread(self._close)


def _unbind(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except (LDAPException, OSError):
        pass  # a connection the server already dropped


def _parenthesized(search_filter: str) -> str:
    text = search_filter.strip()
    return text if text.startswith("(") else f"({text})"


def _dn_key(dn: str) -> tuple[frozenset[tuple[str, str]], ...] | None:
    """A DN as LDAP compares it: each RDN a set of (type, value), without case, escapes or
    insignificant spaces; None when it is not a DN."""
    try:
        parts = parse_dn(",".join(to_dn(dn, remove_space=True)), escape=False)
    except (LDAPException, ValueError, IndexError, TypeError):
        return None
    rdns: list[frozenset[tuple[str, str]]] = []
    rdn: list[tuple[str, str]] = []
    for attribute, value, separator in parts:
        name = attribute.strip().lower()
        name = _DN_ATTRIBUTE_NAMES.get(name.removeprefix("oid."), name)
        rdn.append((name, " ".join(_unescape_dn_value(value).split()).casefold()))
        if separator != "+":
            rdns.append(frozenset(rdn))
            rdn = []
    return tuple(rdns) if rdns and not rdn else None


def _under(
    dn: tuple[frozenset[tuple[str, str]], ...], base: tuple[frozenset[tuple[str, str]], ...]
) -> bool:
    """True when `dn` is `base` or below it (both from _dn_key)."""
    return len(dn) >= len(base) and dn[len(dn) - len(base) :] == base


def _unescape_dn_value(value: str) -> str:
    """An RDN value as text: `O\\, Brien` -> `O, Brien`, `\\C3\\A9` -> `é` (RFC 4514)."""
    out = bytearray()
    i = 0
    while i < len(value):
        pair = value[i + 1 : i + 3]
        if value[i] == "\\" and len(pair) == 2 and all(c in string.hexdigits for c in pair):
            out.append(int(pair, 16))
            i += 3
        elif value[i] == "\\" and i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            out += value[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def from_config(config: Config) -> LdapUsers:
    """The `users = "ldap"` source: `[auth.ldap]`."""
    ldap = config.auth.ldap
    if ldap.url.startswith("ldap://") and not ldap.start_tls:
        host = ldap.url[len("ldap://") :].split("/")[0].rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "auth.ldap.url: %s without start_tls sends passwords in the clear; use "
                "ldaps:// or start_tls = true",
                ldap.url,
            )
    return LdapUsers(ldap)
