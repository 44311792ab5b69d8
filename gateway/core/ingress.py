"""What a request is, judged once: framing (smuggling), and who the client is (trust)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Header = tuple[bytes, bytes]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST = re.compile(rb"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
# an X-Forwarded-For hop with a port (RFC 7239 node syntax): `[v6]`, `[v6]:port`, `v4:port`
_NODE = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?|([0-9.]+):([0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class Framing:
    """How the request's body is delimited, once its framing is judged unambiguous."""

    length: int | None  # Content-Length, when the request has one
    chunked: bool  # Transfer-Encoding: chunked


NO_BODY = Framing(None, False)


def read_framing(headers: Sequence[tuple[bytes, bytes]]) -> Framing | str:
    """The request's body framing, or why it is ambiguous (a smuggling vector)."""
    hosts = 0
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    # one pass over the headers: this runs for every request
    for key, value in headers:
        if key == b"host":
            hosts += 1
        elif key == b"content-length":
            lengths.append(value)
        elif key == b"transfer-encoding":
            encodings.append(value)
    # two Host headers: the route may be matched on one and the upstream read the other
    if hosts > 1:
        return "more than one Host header"
    if not lengths and not encodings:
        return NO_BODY
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding"
    if len(set(lengths)) > 1 or any(b"," in v for v in lengths):
        return "conflicting Content-Length headers"
    if lengths and not lengths[0].strip().isdigit():
        return "invalid Content-Length"
    if encodings and (len(encodings) > 1 or encodings[0].strip().lower() != b"chunked"):
        return "unsupported Transfer-Encoding"
    return Framing(int(lengths[0]), False) if lengths else Framing(None, True)


@dataclass(frozen=True)
class ClientView:
    """Who the client is and what it asked for, believing forwarded headers only from trust."""

    ip: str  # "" when unknown: no peer address, or a forwarded hop that names no address
    scheme: str
    host: str
    trusted: bool
    forwarded_for: str  # the X-Forwarded-For value to send upstream


def _in(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _with_port(hop: str) -> Address | None:
    """The address of a hop written `v4:port`, `[v6]:port` or `[v6]` (Azure Application
    Gateway writes ip:port); None for anything else: `unknown`, an obfuscated `_name`, a zone
    id, garbage."""
    match = _NODE.fullmatch(hop)
    if match is None:
        return None
    v6, v6_port, v4, v4_port = match.groups()
    port = v6_port or v4_port
    if port is not None and int(port) > 65535:
        return None
    try:
        return ipaddress.IPv6Address(v6) if v6 is not None else ipaddress.IPv4Address(v4)
    except ValueError:
        return None


def _values(headers: Iterable[Header], name: bytes) -> list[str]:
    out: list[str] = []
    for key, value in headers:
        if key == name:
            out.extend(part.strip() for part in value.decode("latin-1").split(","))
    return [v for v in out if v]


def valid_host(value: bytes | str) -> bool:
    """True for a plain `host[:port]` (no userinfo, path or spaces)."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return bool(_HOST.match(raw)) and len(raw) <= 255


def peer_trusted(scope: dict, trusted: Sequence[Network]) -> bool:
    """True when the connection's peer is a trusted proxy (whose forwarded headers count)."""
    client = scope.get("client")
    return bool(trusted) and bool(client) and _in(client[0], trusted)


def client_view(scope: dict, trusted: Sequence[Network]) -> ClientView:
    """Decide client address, scheme and host; X-Forwarded-* count only from a trusted peer."""
    client = scope.get("client")
    peer = client[0] if client else ""
    headers = scope["headers"]
    host = b""
    for key, value in headers:
        if key == b"host":
            host = value
            break
    host_text = host.decode("latin-1").lower() if valid_host(host) else ""
    scheme = scope.get("scheme", "http")
    if scheme == "ws":
        scheme = "http"
    elif scheme == "wss":
        scheme = "https"
    if not peer_trusted(scope, trusted):
        return ClientView(peer, scheme, host_text, False, peer)
    chain = _values(headers, b"x-forwarded-for")
    ip = peer
    # right-most untrusted: each trusted hop vouches only for the address to its left
    for index in range(len(chain) - 1, -1, -1):
        hop = chain[index]
        try:
            address: Address | None = ipaddress.ip_address(hop)
        except ValueError:
            address = _with_port(hop)
            if address is not None:
                hop = chain[index] = str(address)  # sent upstream without the port
        if address is None or "%" in hop:
            # a hop we cannot read (a zone id is no client's address either): the client is
            # unknown, inside no network, and never the trusted proxy that wrote the hop
            ip = ""
            break
        ip = hop
        if not any(address in net for net in trusted):
            break
    protos = _values(headers, b"x-forwarded-proto")
    if protos and protos[-1].lower() in ("http", "https"):
        scheme = protos[-1].lower()
    hosts = _values(headers, b"x-forwarded-host")
    if hosts and valid_host(hosts[-1]):
        host_text = hosts[-1].lower()
    forwarded_for = ", ".join([*chain, peer]) if chain else peer
    return ClientView(ip, scheme, host_text, True, forwarded_for)
