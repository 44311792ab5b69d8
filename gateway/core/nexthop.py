"""Every header the next hop gets, for every mode: one owner, as oauth2-proxy's header injector.

The proxy's upstream, the app a middleware wraps and the front proxy asking `/verify` all get
their identity headers from `identity_headers`; the client's copies are removed by the same
canonical names; an answer can never set or clear a cookie of ours (`cookie_names`).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.auth.assertions import AssertionCache
from gateway.auth.tokens import Tokens
from gateway.config import Config, IdentityConfig, Route
from gateway.core.context import RequestContext
from gateway.core.ingress import Header

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
        # what other auth layers hand the apps they front: Grafana's auth proxy, Kubernetes'
        # request-header authentication, Kong, Azure App Service, oauth2-proxy
        b"x-webauth-user",
        b"x-remote-group",
        b"x-authenticated-userid",
        b"x-consumer-username",
        b"x-consumer-id",
        b"x-ms-client-principal",
        b"x-ms-client-principal-name",
        b"x-ms-client-principal-id",
        b"x-auth-request-preferred-username",
        # the original host, path or method as a front proxy (or a client) claims it
        b"x-original-host",
        b"x-host",
        b"x-http-host-override",
        b"x-envoy-original-path",
        b"x-original-method",
    }
)


def canonical(name: bytes) -> bytes:
    """A header name as WSGI, CGI and PHP see it: case folded, `_` and `.` read as `-`."""
    return name.lower().replace(b"_", b"-").replace(b".", b"-")


def drop_cookie(value: bytes, names: frozenset[bytes]) -> bytes:
    """A Cookie header value without the gateway's own cookies."""
    kept = []
    for pair in value.split(b";"):
        name = pair.split(b"=", 1)[0].strip()
        if name and name not in names:
            kept.append(pair.strip())
    return b"; ".join(kept)


def truncated_header(roles_header: str) -> str:
    """The header telling the next hop the roles header holds only some roles ("": roles off)."""
    return f"{roles_header}-Truncated" if roles_header else ""


def whole_roles(roles: tuple[str, ...], limit: int) -> bytes:
    """The roles comma-joined, in order, as many whole ones as fit in `limit` bytes."""
    kept: list[bytes] = []
    size = -1  # no comma before the first
    for role in roles:
        piece = role.encode("utf-8")
        if size + 1 + len(piece) > limit:
            break
        kept.append(piece)
        size += 1 + len(piece)
    return b",".join(kept)


_identity_names_memo: tuple[Config, frozenset[bytes]] | None = None


def identity_names(config: Config) -> frozenset[bytes]:
    """Every identity header name any route injects, canonical: stripped from all clients.

    The default names are stripped too when a header is renamed or turned off: an upstream
    written for the defaults must never read a client's copy of one as ours.
    """
    global _identity_names_memo
    memo = _identity_names_memo
    # built once per config, not once per route: 10,000 routes would make it quadratic
    if memo is not None and memo[0] is config:
        return memo[1]
    names = set()
    for item in (IdentityConfig(), config.identity, *(r.identity for r in config.routes)):
        truncated = truncated_header(item.roles_header)
        for name in (item.user_header, item.roles_header, truncated, item.assertion_header):
            if name:
                names.add(canonical(name.encode("latin-1")))
    _identity_names_memo = (config, frozenset(names))
    return _identity_names_memo[1]


# every cookie the gateway sets is `[session] cookie` (prefixed when Secure) plus one of these:
# the session itself, the OIDC flow handle and its retry note (gateway.endpoints.oidc), the
# pending second factor (gateway.mfa.pending), the forms' CSRF token (login, mfa) and the
# hand-off state (gateway.endpoints.handoff). A new gateway cookie must be added here, or an
# app behind the gateway could plant or clear it in the browser (a planted OIDC flow handle
# signs the victim in as the attacker) and would receive it.
COOKIE_SUFFIXES = ("", "_oidc", "_oidc_retry", "_mfa", "_csrf", "_handoff")
COOKIE_PREFIXES = ("", "__Host-", "__Secure-")


def cookie_names(config: Config) -> frozenset[bytes]:
    """Every spelling of every cookie the gateway sets (the session cookie, the OIDC flow,
    MFA, CSRF and hand-off cookies), prefixed or not: an upstream or a wrapped app can
    neither set nor clear one, and never receives one."""
    base = config.session.cookie.encode("latin-1")
    return frozenset(
        prefix.encode("latin-1") + base + suffix.encode("latin-1")
        for suffix in COOKIE_SUFFIXES
        for prefix in COOKIE_PREFIXES
    )


def sets_our_cookie(set_cookie: bytes, ours: frozenset[bytes]) -> bool:
    """True for a Set-Cookie value that would set or clear a gateway cookie, in any case."""
    return set_cookie.split(b"=", 1)[0].strip().lower() in {n.lower() for n in ours}


def response_headers(
    raw: Iterable[Header], ours: frozenset[bytes], *, bodiless: bool = False
) -> list[Header]:
    """Upstream headers for the client: no hop-by-hop or Connection-named one, no Set-Cookie
    for a cookie of ours, and no Content-Length on a `bodiless` (204, 304) response."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for key, value in raw:
        name = key.lower()
        if name in RESPONSE_HOP_BY_HOP:
            if name == b"connection" and value.lower() not in PLAIN_CONNECTION:
                tokens = {t.strip() for t in value.lower().split(b",")}
                named = tokens if named is None else named | tokens
            continue
        # an upstream must not set, replace or clear the gateway's session or other cookies
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


# forward-auth's answer: the client's Authorization carried our token, so the app gets none
BEARER_USED = b"x-gateway-bearer"


class _RouteHeaders:
    """The constant parts for one route: names to strip (canonical) and to inject."""

    __slots__ = (
        "access",
        "access_bearer",
        "app_strip",
        "assertion",
        "binds_request",
        "proxy_strip",
        "roles",
        "roles_limit",
        "route",
        "truncated",
        "user",
    )

    def __init__(self, config: Config, route: Route) -> None:
        extra = {canonical(h.encode("latin-1")) for h in route.strip_headers}
        # pass_access_token: the provider's access token goes in this header, and only it
        self.access = b""
        self.access_bearer = False
        if route.pass_access_token:
            self.access = route.access_token_header.encode("latin-1").lower()
            self.access_bearer = self.access == b"authorization"
            extra.add(canonical(self.access))
        identity = identity_names(config)
        self.route = route
        self.proxy_strip = frozenset(HOP_BY_HOP | FORWARDED | LEGACY | identity | extra)
        # framing, Host and X-Forwarded-* stay as the app's own server set them: no hop between
        self.app_strip = frozenset(LEGACY | identity | extra)
        names = route.identity
        self.user = names.user_header.encode("latin-1").lower()
        self.roles = names.roles_header.encode("latin-1").lower()
        self.roles_limit = names.roles_header_limit
        self.truncated = truncated_header(names.roles_header).encode("latin-1").lower()
        self.assertion = names.assertion_header.encode("latin-1").lower()
        # method and path in the assertion (one signature per distinct request) or not (one
        # per session and route): `assertion_binds_request`, per route or in [identity]
        self.binds_request = names.assertion_binds_request


class NextHop:
    """What the upstream, the wrapped app or the front proxy receives for an allowed request."""

    def __init__(self, config: Config, tokens: Tokens) -> None:
        self.tokens = tokens
        # signed once per session and route (and roles, amr, key), reused while fresh
        self.assertions = AssertionCache(tokens)
        self.cookie_names = cookie_names(config)
        self._routes = {route.name: _RouteHeaders(config, route) for route in config.routes}

    def identity_headers(self, ctx: RequestContext, method: str) -> list[Header]:
        """The identity headers for this request (lower-case names); none when anonymous."""
        identity, route = ctx.identity, ctx.route
        if identity is None or route is None:
            return []
        names = self._routes[route.name]
        # UTF-8, as a SQL user id need not be Latin-1
        out = [(names.user, identity.sub.encode("utf-8"))]
        if names.roles:
            roles = ",".join(identity.roles).encode("utf-8")
            if len(roles) <= names.roles_limit:
                out.append((names.roles, roles))
            else:
                # upstreams refuse big header lines (nginx: 8 KB): some whole roles, said so;
                # the assertion below carries every one
                out.append((names.roles, whole_roles(identity.roles, names.roles_limit)))
                out.append((names.truncated, b"true"))
        if names.assertion:
            if names.binds_request:
                value = self.assertions.assertion(
                    identity.sid,
                    identity.sub,
                    identity.roles,
                    route.name,
                    identity.amr,
                    method,
                    ctx.path,
                )
            else:
                value = self.assertions.assertion(
                    identity.sid, identity.sub, identity.roles, route.name, identity.amr
                )
            out.append((names.assertion, value))
        if names.access and ctx.access_token:
            token = ctx.access_token.encode("latin-1")
            out.append((names.access, b"Bearer " + token if names.access_bearer else token))
        return out

    def verdict_headers(self, ctx: RequestContext, method: str) -> list[Header]:
        """What forward-auth's 200 tells the front proxy to put on the request to the app."""
        out = self.identity_headers(ctx, method)
        if ctx.used_bearer:
            # the front proxy passes Authorization on by itself; this says it was our token
            out.append((BEARER_USED, b"used"))
        return out

    def removed(self, route: Route, name: bytes) -> bool:
        """True for a client header the wrapped app must not see (in any case or spelling)."""
        return canonical(name) in self._routes[route.name].app_strip

    def app_headers(
        self, ctx: RequestContext, client: Iterable[Header], method: str
    ) -> list[Header]:
        """The wrapped app's request headers: client copies removed, then the identity added."""
        route = ctx.route
        assert route is not None
        strip = self._routes[route.name].app_strip
        out: list[Header] = []
        for key, value in client:
            if canonical(key) in strip:
                continue
            kept = self._client_header(key, value, ctx.used_bearer)
            if kept is not None:
                out.append(kept)
        out.extend(self.identity_headers(ctx, method))
        return out

    def upstream_headers(
        self, ctx: RequestContext, client: Iterable[Header], method: str
    ) -> list[Header]:
        """The upstream's request headers, in the client's order, with ours appended."""
        route = ctx.route
        assert route is not None
        headers = list(client)
        # a client may name our headers in Connection; drop its list before adding ours
        named: set[bytes] = set()
        for key, value in headers:
            if key == b"connection":
                named.update(canonical(t.strip()) for t in value.split(b",") if t.strip())
        strip = self._routes[route.name].proxy_strip
        out: list[Header] = []
        for key, value in headers:
            folded = canonical(key)
            if folded in strip or folded in named:
                continue
            kept = self._client_header(key, value, ctx.used_bearer)
            if kept is not None:
                out.append(kept)
        view = ctx.view
        if route.preserve_host and view.host:
            out.append((b"host", view.host.encode("latin-1")))
        out.append((b"x-forwarded-for", view.forwarded_for.encode("latin-1")))
        out.append((b"x-forwarded-proto", view.scheme.encode("latin-1")))
        if view.host:
            out.append((b"x-forwarded-host", view.host.encode("latin-1")))
        out.append((b"x-request-id", ctx.request_id.encode("latin-1")))
        out.extend(self.identity_headers(ctx, method))
        return out

    def _client_header(self, key: bytes, value: bytes, used_bearer: bool) -> Header | None:
        # the next hop never sees our cookies (session, OIDC flow, MFA, CSRF, hand-off), nor
        # the bearer token that was ours
        if key == b"cookie":
            value = drop_cookie(value, self.cookie_names)
            return (key, value) if value else None
        if key == b"authorization" and used_bearer:
            return None
        return key, value

    def sets_our_cookie(self, set_cookie: bytes) -> bool:
        """True for a Set-Cookie value that would set or clear a cookie of the gateway's."""
        return sets_our_cookie(set_cookie, self.cookie_names)

    def guard_response(self, headers: Iterable[Header]) -> list[Header]:
        """An app's response headers without a Set-Cookie for a cookie of ours (any case)."""
        return [
            (k, v) for k, v in headers if k.lower() != b"set-cookie" or not self.sets_our_cookie(v)
        ]
