"""Path normalization and route lookup: pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

from gateway.config import Route
from gateway.core.casefold import ascii_lower

# characters left as they are when the normalized path is encoded again for the upstream
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_HEX = b"0123456789abcdefABCDEF"
# escapes that would let the upstream see a different path than the one we matched:
# an encoded / \ ? # or NUL, and double encoding (%25 followed by two hex digits)
_REFUSED_ESCAPES = {b"2f", b"5c", b"3f", b"23", b"00"}


@dataclass(frozen=True)
class BadPath:
    """Why a request target is refused with 400."""

    detail: str


# bytes a path may hold as they are (printable ASCII but %, \\ and space): a path of only these,
# with no `//` and no `/.`, is already normalized, and decoding it changes nothing
_PLAIN_BYTES = bytes(b for b in range(0x21, 0x7F) if b not in b"%\\#")
# a normalized path's characters that encode_path leaves as they are
_ENCODED_AS_IS = re.compile(r"[A-Za-z0-9/:@!$&'()*+,;=._~-]*")


def normalize_path(raw_path: bytes) -> str | BadPath:
    """Decode a raw request path and resolve dot-segments and repeated slashes, or refuse it."""
    if (
        raw_path.startswith(b"/")
        and not raw_path.translate(None, _PLAIN_BYTES)
        and b"//" not in raw_path
        and b"/." not in raw_path
        and b"/;" not in raw_path
    ):
        # the common case, without the byte-by-byte walk (tests/test_paths.py holds the two
        # to the same answers)
        return raw_path.decode("ascii")
    return _normalize_walk(raw_path)


def _normalize_walk(raw_path: bytes) -> str | BadPath:
    if not raw_path.startswith(b"/"):
        return BadPath("the path must start with /")
    out = bytearray()
    i, n = 0, len(raw_path)
    while i < n:
        byte = raw_path[i]
        if byte == 0x25:  # %
            pair = raw_path[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                return BadPath("invalid percent-encoding in the path")
            if pair.lower() in _REFUSED_ESCAPES:
                return BadPath("encoded /, \\, ?, # or NUL in the path")
            value = int(pair, 16)
            if value < 0x20 or value == 0x7F:
                return BadPath("control character in the path")
            if value == 0x25 and raw_path[i + 3 : i + 5].strip(_HEX) == b"" and i + 5 <= n:
                return BadPath("double percent-encoding in the path")
            out.append(value)
            i += 3
            continue
        if byte < 0x21 or byte >= 0x7F:
            return BadPath("control character, space or non-ASCII byte in the path")
        if byte == 0x5C:  # \
            return BadPath("backslash in the path")
        if byte == 0x23:  # a fragment is never part of a request target (a WebSocket's kept it)
            return BadPath("# in the path")
        out.append(byte)
        i += 1
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError:
        return BadPath("the path is not valid UTF-8")
    if "\\" in decoded:
        return BadPath("backslash in the path")
    return _resolve_segments(decoded)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_forwarded_uri(uri: str) -> str | BadPath:
    """The path of a URI a front proxy names for forward-auth, or BadPath unless it is canonical.

    The proxy hands the app its own raw copy of the URI, not the path we judge: nginx passes a raw
    `#` (and routes on the part before it), and apps differ on dot segments, `//` and encoded
    letters. So the URI is judged only when every reading of it names the same path.
    """
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in uri):
        return BadPath("space, control character or non-ASCII byte in the forwarded URI")
    if "#" in uri:
        # nginx routes on the part before a raw `#` but passes all of it to the app
        return BadPath("# in the forwarded URI")
    raw_path = uri.partition("?")[0].encode("ascii")
    path = normalize_path(raw_path)
    if isinstance(path, BadPath):
        return path
    segments = raw_path.split(b"/")[1:]
    for index, segment in enumerate(segments):
        if segment == b"" and index < len(segments) - 1:
            return BadPath("an empty segment (//) in the forwarded URI")
        if segment.split(b";", 1)[0] in (b".", b".."):
            return BadPath("a dot segment in the forwarded URI")
    for i in range(len(raw_path) - 2):
        # an app that does not decode `%61dmin` (or `%2e%2e`) reads another path than we do
        if raw_path[i] == 0x25 and int(raw_path[i + 1 : i + 3], 16) in _UNRESERVED:
            return BadPath("a percent-encoded letter, digit or -._~ in the forwarded URI")
    return path


def _resolve_segments(path: str) -> str | BadPath:
    trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
    stack: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment in ("", "."):
            continue
        if segment == "..":
            if stack:
                stack.pop()
            continue
        # Tomcat and other servlet stacks read `..;x` as `..`: a dot segment in disguise
        name = segment.split(";", 1)[0]
        if name in (".", ".."):
            return BadPath("dot segment with ; parameters in the path")
        # ... and `/;x/admin` as `//admin`, then `/admin`: an empty segment in disguise, which
        # would be judged under `/`. Only a last one (`/app/;jsessionid=1`) names nothing more.
        if not name and any(rest not in ("", ".") for rest in segments[index + 1 :]):
            return BadPath("an empty segment with ; parameters in the path")
        stack.append(segment)
    result = "/" + "/".join(stack)
    if trailing and stack:
        result += "/"
    return result


def encode_path(path: str) -> bytes:
    """Percent-encode a normalized path for the upstream (the inverse of normalize_path)."""
    if _ENCODED_AS_IS.fullmatch(path):
        return path.encode("ascii")
    return quote(path, safe=_PATH_SAFE).encode("ascii")


def match_key(path: str) -> str:
    """The form of a path that route prefixes are compared with: `;params` dropped per segment.

    Servlet stacks route `/admin;x=1/page` as `/admin/page`, so the policy must too.
    """
    if ";" not in path:
        return path
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def under_prefix(path: str, prefix: str, case_sensitive: bool = False) -> bool:
    """True when `path` is `prefix` or below it on a segment boundary."""
    if not case_sensitive:
        path, prefix = ascii_lower(path), ascii_lower(prefix)
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def strip_route_prefix(path: str, route: Route) -> str:
    """The path below the route's prefix, for `strip_prefix = true`."""
    if route.path == "/":
        return path
    rest = path[len(route.path) :]
    return rest if rest.startswith("/") else "/" + rest


def split_host(host: str) -> tuple[str, int | None]:
    """A Host value as the name and port a host route is written with: the name lower-cased and
    without a trailing dot, the port a number (None: none written, -1: not a number)."""
    name, sep, port = host.rpartition(":")
    if not sep or "]" in port or (":" in name and not name.endswith("]")):
        # no port, or an IPv6 address written without one
        return ascii_lower(host).rstrip("."), None
    if not port:
        number = None
    else:
        number = int(port) if port.isascii() and port.isdigit() else -1
    return ascii_lower(name).rstrip("."), number


class Router:
    """Longest-prefix route lookup; cost grows with the path's depth, not the number of routes."""

    def __init__(self, routes: Iterable[Route]) -> None:
        # (host or None, prefix) -> route, one table for exact case and one folded
        self._exact: dict[tuple[str | None, str], Route] = {}
        self._folded: dict[tuple[str | None, str], Route] = {}
        self.routes = tuple(routes)
        for route in self.routes:
            if route.case_sensitive:
                self._exact[(route.host, route.path)] = route
            else:
                self._folded[(route.host, ascii_lower(route.path))] = route
        # host route names -> the ports their routes are written with (None: without one)
        self._hosts: dict[str, dict[int | None, str]] = {}
        for route in self.routes:
            if route.host:
                name, port = split_host(route.host)
                self._hosts.setdefault(name, {})[port] = route.host

    def match(self, host: str | None, path: str) -> Route | None:
        """The route for this host and normalized path, or None (404)."""
        key = match_key(path)
        # ASCII only: the folded key keeps the key's length, so one index serves both
        folded = ascii_lower(key)
        candidates: list[str | None] = []
        if host and self._hosts:
            # `CRM.example.com.:08443` is `crm.example.com:8443`: no spelling skips its route
            name, port = split_host(host)
            ports = self._hosts.get(name)
            if ports is not None:
                written = ports.get(port) if port is not None else None
                if written is None:
                    written = ports.get(None)
                if written is None:
                    # this name's routes are written for other ports: a port the client chose
                    # (or left out) never leads past them to the routes without a host
                    return None
                candidates.append(written)
        candidates.append(None)
        for candidate in candidates:
            route = self._lookup(candidate, key, folded)
            if route is not None:
                return route
        return None

    def _lookup(self, host: str | None, key: str, folded: str) -> Route | None:
        end = len(key)
        while True:
            prefix = key[:end] or "/"
            route = self._exact.get((host, prefix)) or self._folded.get((host, folded[:end] or "/"))
            if route is not None:
                return route
            if end == 0:
                return None
            end = key.rfind("/", 0, end)
            if end < 0:
                return None
