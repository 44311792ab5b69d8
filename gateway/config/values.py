"""What each kind of config value may be: one converter per kind, raising ValueError with why.

A converter's message completes "<field path>: <value> ...", e.g. `is not an http(s) URL`.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

from gateway.config.model import HTTP_METHODS, SecureAuto
from gateway.core.casefold import ascii_lower

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# the schemes whose drivers the gateway installs (psycopg, PyMySQL, the stdlib's sqlite3)
_SQL_SCHEMES = {"sqlite", "postgres", "postgresql", "postgresql+psycopg", "mysql", "mariadb"}
_SQL_SCHEMES |= {"mysql+pymysql", "mariadb+pymysql"}


def parse_duration(value: object) -> float:
    """Turn "30s", "15m", "7d" (or a bare number of seconds) into seconds."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("is not a duration")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError('is not a duration like "30s", "15m", "12h" or "7d"')


def string(value: object) -> str:
    """Any string."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def nonempty(value: object) -> str:
    """A string with more than blanks in it."""
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def boolean(value: object) -> bool:
    """true or false (TOML's, not "yes" or 1)."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def positive_int(value: object) -> int:
    """A whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


HEADER_LIMIT_MIN = 256  # bytes: below this a roles header would hold only a role or two


def header_limit(value: object) -> int:
    """A header value's size limit: a whole number of bytes, at least HEADER_LIMIT_MIN."""
    if isinstance(value, bool) or not isinstance(value, int) or value < HEADER_LIMIT_MIN:
        raise ValueError(f"must be a whole number of bytes, at least {HEADER_LIMIT_MIN}")
    return value


def positive_duration(value: object) -> float:
    """A duration longer than zero, in seconds."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def one_of(choices: Any) -> Callable[[object], str]:
    """A converter accepting exactly the values of a `Literal[...]` from the model."""
    allowed = get_args(choices)

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("is not one of " + ", ".join(repr(a) for a in allowed))
        return value

    return convert


def secure(value: object) -> str | bool:
    """`session.secure`: true, false or the model's automatic choice."""
    words = get_args(SecureAuto)
    if isinstance(value, bool) or (isinstance(value, str) and value in words):
        return value
    raise ValueError("must be " + ", ".join(f'"{w}"' for w in words) + ", true or false")


def header_name(value: object) -> str:
    """An HTTP header name (a token)."""
    text = string(value)
    if not _HEADER_NAME.fullmatch(text):
        raise ValueError("is not a valid header name")
    return text


def optional_header_name(value: object) -> str:
    """A header name, or "" for none."""
    return "" if value == "" else header_name(value)


def string_list(value: object) -> tuple[str, ...]:
    """A list of non-empty strings, each one line of printable text."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    bad = next((v for v in value if not v.isprintable()), None)
    if bad is not None:
        # a role with a line break could never be a user's (tokens refuse one), and a header
        # name with one would split the headers the upstream receives
        raise ValueError(f"has {bad!r}, which is not one line of printable text")
    return tuple(value)


def header_names(value: object) -> tuple[str, ...]:
    """A list of header names."""
    return tuple(header_name(h) for h in string_list(value))


def http_url(value: object) -> str:
    """An http(s) URL without query, fragment or credentials; a trailing / dropped."""
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    return text.rstrip("/")


def listen(value: object) -> tuple[str, str, int]:
    """A "host:port" as written, with its host and port: parsed here and nowhere else."""
    text = string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('is not "host:port"')
    return text, host.strip("[]"), int(port)


def networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of IP addresses or CIDRs."""
    items = string_list(value) if value != [] else ()
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"has {item!r}, which is not an IP address or CIDR") from None
    return tuple(nets)


def origins(value: object) -> tuple[str, ...]:
    """A list of web origins, lower-cased as browsers send them."""
    items = string_list(value) if value != [] else ()
    out = []
    for item in items:
        parts = urlsplit(item)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in "/":
            raise ValueError(f"has {item!r}, which is not an origin like https://app.example.com")
        out.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(out)


def prefix(value: object) -> str:
    """`auth.prefix`: an absolute path of plain segments."""
    text = string(value)
    plain = re.fullmatch(r"/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", text)
    if not plain or ".." in text.split("/"):
        raise ValueError('must be an absolute path like "/.auth"')
    return text


def cookie_name(value: object) -> str:
    """A cookie name the gateway may prefix with `__Host-` itself."""
    text = string(value)
    if not _COOKIE_NAME.fullmatch(text) or text.lower().startswith(("__host-", "__secure-")):
        raise ValueError("must be letters, digits, - or _ (the __Host- prefix is added for you)")
    return text


def file_path(value: object) -> Path:
    """A file or folder; the caller joins it to the config's folder (absolute stays absolute)."""
    return Path(nonempty(value))


def store_url(value: object) -> str:
    """`store.url`: one of the store backends' URLs (gateway/store/__init__.py lists them)."""
    from gateway.store import check_url

    text = nonempty(value)
    check_url(text)
    return text


def sql_dsn_problem(dsn: str) -> str | None:
    """Why a users-database URL cannot work, without repeating it (it may hold a password)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not rest:
        return "is not a database URL like postgresql://user@host/db (value not shown)"
    if scheme.lower() not in _SQL_SCHEMES:
        return f"scheme {scheme[:30]!r} is not sqlite, postgresql (postgres) or mysql (mariadb)"
    if scheme.lower() == "sqlite" and not rest.startswith("/"):
        return "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
    return None


def route_name(value: object) -> str:
    """A route's name: letters, digits, '.', '_' or '-'."""
    text = string(value)
    if not _ROUTE_NAME.fullmatch(text):
        raise ValueError("must be letters, digits, '.', '_' or '-'")
    return text


def route_path(value: object) -> str:
    """A route's path prefix, already in the normal form requests are matched in."""
    text = string(value)
    if not text.startswith("/") or "//" in text or any(s in {".", ".."} for s in text.split("/")):
        raise ValueError("must be an absolute path without dot segments or empty segments")
    if any(ch in text for ch in "?#%\\") or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain ?, #, %, backslashes, spaces or control characters")
    return text.rstrip("/") or "/"


def host(value: object) -> str:
    """A host name (optionally with :port): lower-cased, without the trailing dot of a fully
    qualified name, the port as a number (`CRM.example.com.:08443` is `crm.example.com:8443`)."""
    text = ascii_lower(string(value))
    if not re.fullmatch(r"[a-z0-9.-]+(:\d+)?", text):
        raise ValueError("is not a host name")
    name, _, port = text.partition(":")
    name = name.rstrip(".")
    if not name:
        raise ValueError("is not a host name")
    if not port:
        return name
    if not 0 < int(port) < 65536:
        raise ValueError("has a port outside 1-65535")
    return f"{name}:{int(port)}"


def methods(value: object) -> frozenset[str]:
    """A list of HTTP methods, upper-cased; GET brings HEAD."""
    items = string_list(value)
    upper = {m.upper() for m in items}
    bad = sorted(upper - HTTP_METHODS)
    if bad:
        raise ValueError(f"has unknown method {bad[0]!r}")
    if "GET" in upper:
        upper.add("HEAD")
    return frozenset(upper)


def ldap_url(value: object) -> str:
    """`auth.ldap.url`: ldap://host[:port] or ldaps://host[:port], nothing after."""
    text = nonempty(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in {"ldap", "ldaps"} or not parts.hostname:
        raise ValueError("is not an ldap:// or ldaps:// URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise ValueError("must be only ldap[s]://host[:port] (the base DN is base_dn)")
    return f"{parts.scheme}://{parts.netloc}"


def ldap_filter(value: object) -> str:
    """An LDAP search filter (RFC 4515) in parentheses; {username} and {dn} are placeholders."""
    from ldap3.core.exceptions import LDAPException
    from ldap3.operation.search import parse_filter

    text = string(value).strip()
    if not text:
        return ""
    sample = text.replace("{username}", "x").replace("{dn}", "cn=x")
    if "{" in sample or "}" in sample:
        raise ValueError("has a placeholder other than {username} and {dn}")
    try:
        parse_filter(sample, None, True, True, None, False)
    except (LDAPException, ValueError, IndexError) as exc:
        raise ValueError(f"is not a valid LDAP filter ({exc})") from None
    return text


def ldap_attribute(value: object) -> str:
    """An LDAP attribute name: a descriptor like `cn` or `sAMAccountName`, or an OID."""
    text = nonempty(value).strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+", text):
        raise ValueError("is not an LDAP attribute name")
    return text
