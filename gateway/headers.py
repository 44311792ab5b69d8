"""What the upstream receives: strip, drop hop-by-hop, decide forwarded values, inject identity."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.config import Config, Route

Header = tuple[bytes, bytes]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 7.6.1 hop-by-hop headers, plus the framing headers: the gateway frames the
# upstream request itself, so a client's Content-Length/Transfer-Encoding never pass as is
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
        b"http2-settings",
    }
)
# forwarded-for family: believed from nobody, re-set by the gateway
FORWARDED = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-forwarded-scheme",
        b"x-forwarded-ssl",
        b"x-forwarded-protocol",
        b"x-real-ip",
        b"x-client-ip",
        b"x-originating-ip",
        b"x-remote-ip",
        b"x-remote-addr",
        b"x-cluster-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-url-scheme",
        b"front-end-https",
        b"x-request-id",
    }
)
# headers legacy stacks route, authorize or log in on (IIS, Symfony, Rails, Apache, proxies)
LEGACY = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
        b"x-forwarded-prefix",
        b"x-forwarded-path",
        b"x-forwarded-uri",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"remote-user",
        b"x-remote-user",
        b"x-forwarded-user",
        b"x-forwarded-email",
        b"x-forwarded-preferred-username",
        b"x-forwarded-groups",
        b"x-forwarded-access-token",
        b"x-auth-request-user",
        b"x-auth-request-email",
        b"x-auth-request-groups",
        b"x-auth-request-access-token",
        b"x-authenticated-user",
        b"auth-user",
        b"remote-addr",
    }
)

_HOST = re.compile(rb"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


def canonical(name: bytes) -> bytes:
    """A header name as WSGI, CGI and PHP see it: case folded, `_` and `.` read as `-`."""
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


@dataclass(frozen=True)
class ClientView:
    """Who the client is and what it asked for, believing forwarded headers only from trust."""

    ip: str
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
    if not trusted or not _in(peer, trusted):
        return ClientView(peer, scheme, host_text, False, peer)
    chain = _values(headers, b"x-forwarded-for")
    ip = peer
    # right-most untrusted: each trusted hop vouches only for the address to its left
    for hop in reversed(chain):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        ip = hop
        if not _in(hop, trusted):
            break
    protos = _values(headers, b"x-forwarded-proto")
    if protos and protos[-1].lower() in ("http", "https"):
        scheme = protos[-1].lower()
    hosts = _values(headers, b"x-forwarded-host")
    if hosts and valid_host(hosts[-1]):
        host_text = hosts[-1].lower()
    forwarded_for = ", ".join([*chain, peer]) if chain else peer
    return ClientView(ip, scheme, host_text, True, forwarded_for)


def drop_cookie(value: bytes, names: frozenset[bytes]) -> bytes:
    """A Cookie header value without the gateway's own cookie(s)."""
    kept = []
    for pair in value.split(b";"):
        name = pair.split(b"=", 1)[0].strip()
        if name and name not in names:
            kept.append(pair.strip())
    return b"; ".join(kept)


_identity_names_memo: tuple[Config, frozenset[bytes]] | None = None


def identity_names(config: Config) -> frozenset[bytes]:
    """Every identity header name any route injects, canonical: stripped from all clients."""
    global _identity_names_memo
    memo = _identity_names_memo
    # built once per config, not once per route: 10,000 routes would make it quadratic
    if memo is not None and memo[0] is config:
        return memo[1]
    names = set()
    for item in (config.identity, *(r.identity for r in config.routes)):
        for name in (item.user_header, item.roles_header, item.assertion_header):
            if name:
                names.add(canonical(name.encode("latin-1")))
    _identity_names_memo = (config, frozenset(names))
    return _identity_names_memo[1]


class UpstreamHeaders:
    """Builds the upstream request headers for one route; the constant parts are built once."""

    def __init__(self, config: Config, route: Route) -> None:
        extra = {canonical(h.encode("latin-1")) for h in route.strip_headers}
        self.strip = frozenset(HOP_BY_HOP | FORWARDED | LEGACY | identity_names(config) | extra)
        self.cookie_names = cookie_names(config)
        self.route = route
        self.user_header = route.identity.user_header.encode("latin-1").lower()
        self.roles_header = route.identity.roles_header.encode("latin-1").lower()
        self.assertion_header = route.identity.assertion_header.encode("latin-1").lower()

    def build(
        self,
        client_headers: Iterable[Header],
        view: ClientView,
        request_id: str,
        *,
        strip_authorization: bool = False,
        identity: tuple[str, tuple[str, ...]] | None = None,
        assertion: str | None = None,
    ) -> list[Header]:
        """The headers to send upstream, in the client's order, with ours appended."""
        headers = list(client_headers)
        # a client may name our headers in Connection; drop its list before adding ours
        named: set[bytes] = set()
        for key, value in headers:
            if key == b"connection":
                named.update(canonical(t.strip()) for t in value.split(b",") if t.strip())
        out: list[Header] = []
        for key, value in headers:
            folded = canonical(key)
            if folded in self.strip or folded in named:
                continue
            if key == b"cookie":
                value = drop_cookie(value, self.cookie_names)
                if not value:
                    continue
            elif key == b"authorization" and strip_authorization:
                continue
            out.append((key, value))
        if self.route.preserve_host and view.host:
            out.append((b"host", view.host.encode("latin-1")))
        out.append((b"x-forwarded-for", view.forwarded_for.encode("latin-1")))
        out.append((b"x-forwarded-proto", view.scheme.encode("latin-1")))
        if view.host:
            out.append((b"x-forwarded-host", view.host.encode("latin-1")))
        out.append((b"x-request-id", request_id.encode("latin-1")))
        if identity is not None:
            sub, roles = identity
            out.append((self.user_header, sub.encode("utf-8")))
            if self.roles_header:
                out.append((self.roles_header, ",".join(roles).encode("utf-8")))
            if self.assertion_header and assertion:
                out.append((self.assertion_header, assertion.encode("ascii")))
        return out


def cookie_names(config: Config) -> frozenset[bytes]:
    """Every spelling of the gateway's session cookie name, prefixed or not."""
    base = config.session.cookie.encode("latin-1")
    return frozenset({base, b"__Host-" + base, b"__Secure-" + base})


def sets_our_cookie(set_cookie: bytes, ours: frozenset[bytes]) -> bool:
    """True for a Set-Cookie value that would set or clear the gateway's cookie, in any case."""
    return set_cookie.split(b"=", 1)[0].strip().lower() in {n.lower() for n in ours}


def response_headers(
    raw: Iterable[Header], ours: frozenset[bytes], *, bodiless: bool = False
) -> list[Header]:
    """Upstream headers for the client: no hop-by-hop or Connection-named one, no Set-Cookie
    for our cookie, and no Content-Length on a `bodiless` (204, 304) response."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for key, value in raw:
        name = key.lower()
        if name in RESPONSE_HOP_BY_HOP:
            if name == b"connection" and value.lower() not in PLAIN_CONNECTION:
                tokens = {t.strip() for t in value.lower().split(b",")}
                named = tokens if named is None else named | tokens
            continue
        # an upstream must not set, replace or clear the gateway's session
        if name == b"set-cookie" and sets_our_cookie(value, ours):
            continue
        # a 204 must not carry one (RFC 9110 8.6), and uvicorn raises mid-response when the
        # body a 304's Content-Length announces never comes
        if bodiless and name == b"content-length":
            continue
        out.append((name, value))
    if named is not None:
        # headers the upstream names in Connection are for this hop alone (RFC 9110 7.6.1)
        out = [(name, value) for name, value in out if name not in named]
    return out


RESPONSE_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# the Connection values nearly every upstream sends: they name no other header
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
