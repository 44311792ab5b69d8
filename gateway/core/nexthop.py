"""Every header the next hop gets, for every mode: one owner, as oauth2-proxy's header injector.

The proxy's upstream, the app a middleware wraps and the front proxy asking `/verify` all get
their identity headers from `identity_headers`; the client's copies are removed by the same
canonical names; an answer can never set or clear our session cookie.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.config import Config, Route
from gateway.context import RequestContext
from gateway.headers import (
    FORWARDED,
    HOP_BY_HOP,
    LEGACY,
    Header,
    canonical,
    cookie_names,
    drop_cookie,
    identity_names,
    sets_our_cookie,
)
from gateway.tokens import Tokens

# forward-auth's answer: the client's Authorization carried our token, so the app gets none
BEARER_USED = b"x-gateway-bearer"


class _RouteHeaders:
    """The constant parts for one route: names to strip (canonical) and to inject."""

    __slots__ = ("app_strip", "assertion", "proxy_strip", "roles", "route", "user")

    def __init__(self, config: Config, route: Route) -> None:
        extra = {canonical(h.encode("latin-1")) for h in route.strip_headers}
        identity = identity_names(config)
        self.route = route
        self.proxy_strip = frozenset(HOP_BY_HOP | FORWARDED | LEGACY | identity | extra)
        # framing, Host and X-Forwarded-* stay as the app's own server set them: no hop between
        self.app_strip = frozenset(LEGACY | identity | extra)
        names = route.identity
        self.user = names.user_header.encode("latin-1").lower()
        self.roles = names.roles_header.encode("latin-1").lower()
        self.assertion = names.assertion_header.encode("latin-1").lower()


class NextHop:
    """What the upstream, the wrapped app or the front proxy receives for an allowed request."""

    def __init__(self, config: Config, tokens: Tokens) -> None:
        self.tokens = tokens
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
            out.append((names.roles, ",".join(identity.roles).encode("utf-8")))
        if names.assertion:
            assertion = self.tokens.mint_assertion(
                identity.sub, identity.roles, route.name, method, ctx.path, identity.amr
            )
            out.append((names.assertion, assertion.encode("ascii")))
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
        # the next hop never sees our session cookie, nor the bearer token that was ours
        if key == b"cookie":
            value = drop_cookie(value, self.cookie_names)
            return (key, value) if value else None
        if key == b"authorization" and used_bearer:
            return None
        return key, value

    def sets_our_cookie(self, set_cookie: bytes) -> bool:
        """True for a Set-Cookie value that would set or clear the gateway's session cookie."""
        return sets_our_cookie(set_cookie, self.cookie_names)

    def guard_response(self, headers: Iterable[Header]) -> list[Header]:
        """An app's response headers without a Set-Cookie for our cookie (any case)."""
        return [
            (k, v) for k, v in headers if k.lower() != b"set-cookie" or not self.sets_our_cookie(v)
        ]
