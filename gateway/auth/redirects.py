"""Where the gateway may send a browser after sign-in.

A relative `next` must be a path every browser reads as same-origin (`is_safe_next`). An
absolute one is judged on its parsed parts, never on its text: scheme (https, or http too when
public_url is http), host (public_url's, a configured route's `host`, or under `[session]
domain`) and port (the scheme's default or public_url's; a route host written with a port:
that one). Anything a browser could read differently from us is refused rather than repaired:
userinfo, backslashes, whitespace and control characters, percent-escapes or non-ASCII in the
host (write IDN hosts in their xn-- form), IP literals in brackets, `https:host` without
slashes and `//host` without a scheme. A refused `next` falls back to `/`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from gateway.config import Config
from gateway.core.casefold import ascii_lower
from gateway.core.routing import split_host

MAX_NEXT = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# kept as they are when a path is re-quoted: RFC 3986 reserved characters and existing escapes
_PATH_SAFE = "/?:@!$&'()*+,;=~%"


def is_safe_next(value: str) -> bool:
    """True for a path like `/a/b?c` that every browser reads as same-origin."""
    if not value or len(value) > MAX_NEXT or not value.startswith("/"):
        return False
    # browsers drop tabs and newlines and read `\` as `/`: `/\evil` and `/\t/evil` are `//evil`
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value) or "\\" in value:
        return False
    if value.startswith("//"):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def location_path(value: str) -> str:
    """A safe `next` as it goes in a Location header: non-ASCII and other characters a header
    cannot carry percent-encoded (UTF-8), reserved characters and existing escapes kept."""
    return quote(value, safe=_PATH_SAFE + "#")


def safe_next(value: str | None, fallback: str = "/") -> str:
    """The value if it is a safe `next`, else the fallback."""
    return value if value is not None and is_safe_next(value) else fallback


def bare_host(host: str) -> str:
    """A Host header's name alone: lower case, without port or the trailing dot of an FQDN."""
    name = ascii_lower(host.strip())
    if name.startswith("["):
        return name.partition("]")[0] + "]"
    return name.partition(":")[0].rstrip(".")


def under_domain(host: str, domain: str) -> bool:
    """True when `host` (bare) is `domain` or a name under it; never for an empty domain."""
    return bool(domain) and (host == domain or host.endswith("." + domain))


@dataclass(frozen=True)
class Destination:
    """An absolute `next`, parsed and written again in one canonical form."""

    scheme: str  # "http" | "https"
    host: str  # lower case, no trailing dot
    port: int  # the effective port (the scheme's default when none was written)
    path: str  # path and query, starting with "/", non-ASCII percent-encoded

    @property
    def origin(self) -> str:
        """scheme://host[:port], the port left out when it is the scheme's default."""
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"

    @property
    def url(self) -> str:
        """The URL the browser is sent to (a fragment is not kept)."""
        return self.origin + self.path


def parse_absolute(value: str) -> Destination | None:
    """`value` as an http(s) URL with a plain DNS or IPv4 host, or None for anything else."""
    if not value or len(value) > MAX_NEXT:
        return None
    # browsers drop whitespace and controls and read `\` as `/`: what they read is not ours
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value) or "\\" in value:
        return None
    parts = urlsplit(value)
    scheme = ascii_lower(parts.scheme)
    # urlsplit reads "https:/x" and "https:x" as paths; browsers as the host x
    if scheme not in DEFAULT_PORTS or value[len(scheme) : len(scheme) + 3] != "://":
        return None
    netloc = parts.netloc
    # userinfo (`good@evil`, `evil@good`), escapes (`%2e`), IDN and IPv6 literals: refused
    if not netloc or not netloc.isascii() or any(ch in netloc for ch in "@%[]"):
        return None
    name, _, port_text = netloc.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
    host = ascii_lower(name)
    host = host[:-1] if host.endswith(".") else host
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        return None
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    # a leading `//` after the host would become a scheme-relative `next` one hop later
    path = "/" + parts.path.lstrip("/")
    if parts.query:
        path += "?" + parts.query
    return Destination(scheme, host, port, quote(path, safe=_PATH_SAFE))


class Redirects:
    """The allow-list for `next`, built once per config from public_url, routes and domain."""

    def __init__(self, config: Config) -> None:
        parts = urlsplit(config.server.public_url)
        self.public_url = config.server.public_url
        self.public_host = bare_host(parts.netloc)
        self.public_port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.schemes = frozenset({"https"} if parts.scheme == "https" else {"http", "https"})
        self.domain = config.session.domain
        self.route_ports = _route_ports(r.host for r in config.routes if r.host)

    def destination(self, value: str) -> Destination | None:
        """The parsed absolute URL when its scheme, host and port are allowed, else None."""
        dest = parse_absolute(value)
        if dest is None or dest.scheme not in self.schemes:
            return None
        usual = {DEFAULT_PORTS[dest.scheme], self.public_port}
        ports = self.route_ports.get(dest.host, set())
        if dest.port in ports or (None in ports and dest.port in usual):
            return dest
        ours = dest.host == self.public_host or under_domain(dest.host, self.domain)
        return dest if ours and dest.port in usual else None

    def resolve(self, value: str | None, fallback: str = "/") -> str:
        """A safe relative path, an allowed absolute URL in canonical form, or the fallback."""
        if value is None:
            return fallback
        if value.startswith("/"):
            return value if is_safe_next(value) else fallback
        dest = self.destination(value)
        return dest.url if dest is not None else fallback

    def shares_cookie(self, host: str) -> bool:
        """True when the portal's cookie reaches this (bare) host: no hand-off needed."""
        return host == self.public_host or under_domain(host, self.domain)


def _route_ports(hosts: Iterable[str]) -> dict[str, set[int | None]]:
    """Route hosts by name, each with its written ports (None: written without one), read as
    the router reads them."""
    out: dict[str, set[int | None]] = {}
    for written in hosts:
        name, port = split_host(written)
        out.setdefault(name, set()).add(port)
    return out
