"""The pure decisions, table-driven, without a server: route policy, CSRF, who the client is,
framing, forward-auth URIs, and every header the next hop gets.

Each table row is one case; its id says what the gateway must do. The next-hop tables run
against a real Config and real keys (in a temporary directory), never a mock.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import jwt
import pytest

from gateway.config import Route, build_config
from gateway.core.context import Identity, RequestContext
from gateway.core.csrf import allowed_origins, cross_site
from gateway.core.ingress import ClientView, client_view, read_framing
from gateway.core.nexthop import response_headers
from gateway.core.policy import Decision, Outcome, decide
from gateway.core.routing import BadPath, normalize_forwarded_uri
from gateway.runtime import Runtime, build_runtime

UPSTREAM = "http://127.0.0.1:9"
PUBLIC_URL = "https://gw.example"
PROXIES = ["10.0.0.0/8", "::1/128"]
CLIENT = "203.0.113.9"  # a client on the internet, talking to the gateway directly
PROXY = "10.0.0.1"  # a trusted front proxy


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def text(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


# -- route policy: decide(identity, route, method) ----------------------------------------


def route(auth: str = "required", **fields) -> Route:
    return Route(name="r", path="/r", upstream=UPSTREAM, auth=auth, **fields)


ALICE = Identity("alice", ("staff",), "sid-alice", 0.0, "cookie")
BOB = Identity("bob", ("admin", "staff"), "sid-bob", 0.0, "bearer")
ROLELESS = Identity("carol", (), "sid-carol", 0.0, "cookie")
ALLOW = Decision(Outcome.ALLOW)
LOGIN = Decision(Outcome.LOGIN)
FORBIDDEN = Decision(Outcome.FORBIDDEN)
GET_ONLY = frozenset({"GET"})


@pytest.mark.parametrize(
    ("identity", "rule", "method", "expected"),
    [
        pytest.param(None, route("public"), "GET", ALLOW, id="anyone may read a public route"),
        pytest.param(
            None, route("optional"), "POST", ALLOW, id="anyone may post to an optional route"
        ),
        pytest.param(None, route(), "GET", LOGIN, id="a stranger on a required route must sign in"),
        pytest.param(ALICE, route(), "GET", ALLOW, id="a signed-in user reaches a required route"),
        pytest.param(ROLELESS, route(), "POST", ALLOW, id="a route naming no role takes any user"),
        pytest.param(
            ALICE,
            route(roles=("admin",)),
            "GET",
            FORBIDDEN,
            id="a user without the role is forbidden",
        ),
        pytest.param(
            BOB, route(roles=("admin",)), "GET", ALLOW, id="a user with the role is let in"
        ),
        pytest.param(
            ALICE,
            route(roles=("ops", "staff")),
            "GET",
            ALLOW,
            id="one of the route's roles is enough",
        ),
        pytest.param(
            Identity("eve", ("Admin",), "sid-eve", 0.0, "cookie"),
            route(roles=("admin",)),
            "GET",
            FORBIDDEN,
            id="roles compare exactly: Admin is not admin",
        ),
        pytest.param(
            None,
            route(roles=("admin",)),
            "GET",
            LOGIN,
            id="a stranger on a role route signs in first",
        ),
        pytest.param(
            ALICE,
            route(methods=frozenset({"GET", "HEAD"})),
            "DELETE",
            Decision(Outcome.METHOD, ("GET", "HEAD")),
            id="a method the route does not take is refused, naming the ones it takes",
        ),
        pytest.param(
            None,
            route("public", methods=GET_ONLY),
            "POST",
            Decision(Outcome.METHOD, ("GET",)),
            id="the method rule holds on a public route too",
        ),
        pytest.param(
            None,
            route(methods=GET_ONLY),
            "POST",
            Decision(Outcome.METHOD, ("GET",)),
            id="the method is judged before sign-in",
        ),
        pytest.param(
            ALICE,
            route(methods=GET_ONLY),
            "get",
            Decision(Outcome.METHOD, ("GET",)),
            id="methods are case-sensitive: get is not GET",
        ),
        pytest.param(ALICE, route(methods=GET_ONLY), "GET", ALLOW, id="a listed method passes"),
    ],
)
def test_route_policy(identity, rule, method, expected):
    assert decide(identity, rule, method) == expected


LAN = (ipaddress.ip_network("10.0.0.0/8"),)
OFFICE = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("identity", "rule", "method", "client", "outcome", "why"),
    [
        (ALICE, route(users=("alice",)), "GET", "", Outcome.ALLOW, "users: alice is listed"),
        (BOB, route(users=("alice",)), "GET", "", Outcome.FORBIDDEN, "users/roles: bob"),
        (BOB, route(users=("alice",), roles=("admin",)), "GET", "", Outcome.ALLOW, "roles: bob"),
        (None, route(users=("alice",)), "GET", "", Outcome.LOGIN, "not signed in"),
        (ALICE, route(networks=LAN), "GET", "10.9.8.7", Outcome.ALLOW, "any signed-in"),
        (ALICE, route(networks=LAN), "GET", "11.0.0.1", Outcome.FORBIDDEN, "networks: 11.0.0.1"),
        (None, route("public", networks=LAN), "GET", "8.8.8.8", Outcome.FORBIDDEN, "networks"),
        (None, route("public", networks=OFFICE), "GET", "2001:db8::1", Outcome.ALLOW, "anyone"),
        (None, route(networks=LAN), "GET", "", Outcome.FORBIDDEN, "no address"),
        (None, route(networks=LAN), "GET", "not-an-ip", Outcome.FORBIDDEN, "networks"),
        (None, route(bypass_networks=LAN), "GET", "10.1.1.1", Outcome.ALLOW, "bypass"),
        (None, route(bypass_networks=LAN), "GET", "11.1.1.1", Outcome.LOGIN, "not signed in"),
        (
            None,
            route(roles=("admin",), bypass_networks=LAN),
            "GET",
            "10.1.1.1",
            Outcome.ALLOW,
            "bypass",
        ),
        (
            ROLELESS,
            route(roles=("admin",), bypass_networks=LAN),
            "GET",
            "10.1.1.1",
            Outcome.ALLOW,
            "bypass",
        ),
        (None, route("deny"), "GET", "10.1.1.1", Outcome.FORBIDDEN, 'auth = "deny"'),
        (BOB, route("deny"), "GET", "", Outcome.FORBIDDEN, 'auth = "deny"'),
        (BOB, route("deny", methods=GET_ONLY), "POST", "", Outcome.FORBIDDEN, "deny"),
        (
            None,
            route(networks=LAN, methods=GET_ONLY),
            "POST",
            "8.8.8.8",
            Outcome.FORBIDDEN,
            "networks",
        ),
        (
            None,
            route(networks=LAN, methods=GET_ONLY),
            "POST",
            "10.0.0.1",
            Outcome.METHOD,
            "methods",
        ),
        (
            None,
            route(bypass_networks=LAN, methods=GET_ONLY),
            "POST",
            "10.0.0.1",
            Outcome.METHOD,
            "methods",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_route_rules_in_their_order(identity, rule, method, client, outcome, why):
    # README "Route rules": deny, networks, methods, public/optional, bypass, signed in, who
    decision = decide(identity, rule, method, client)
    assert decision.outcome is outcome
    assert why in decision.rule


# -- CSRF: cross_site(headers, allowed) and allowed_origins -------------------------------


@pytest.mark.parametrize(
    ("public_url", "extra", "expected"),
    [
        pytest.param(PUBLIC_URL, (), {PUBLIC_URL}, id="our own origin is allowed"),
        pytest.param(
            "https://GW.example:8443/base/",
            ("https://partner.example",),
            {"https://gw.example:8443", "https://partner.example"},
            id="the public URL counts by its origin alone, lower-cased, plus the listed ones",
        ),
    ],
)
def test_allowed_origins(public_url, extra, expected):
    assert allowed_origins(public_url, extra) == frozenset(expected)


ALLOWED = allowed_origins(PUBLIC_URL, ("https://partner.example",))


@pytest.mark.parametrize(
    ("request_headers", "expected"),
    [
        pytest.param([], False, id="neither Origin nor Referer: not from a page, let through"),
        pytest.param([("origin", PUBLIC_URL)], False, id="our own origin is same-site"),
        pytest.param(
            [("origin", "HTTPS://GW.EXAMPLE")], False, id="an origin in upper case is ours"
        ),
        pytest.param(
            [("origin", f" {PUBLIC_URL} ")], False, id="spaces around the origin are ignored"
        ),
        pytest.param(
            [("origin", "https://partner.example")], False, id="an allowed partner is not"
        ),
        pytest.param([("origin", "https://evil.example")], True, id="another site's origin is"),
        pytest.param([("origin", "null")], True, id="the null origin of a sandboxed frame is"),
        pytest.param(
            [("origin", "http://gw.example")], True, id="our host over http is another origin"
        ),
        pytest.param(
            [("origin", "https://gw.example:444")], True, id="our host on another port is"
        ),
        pytest.param(
            [("origin", "https://gw.example.evil.com")], True, id="a host that begins like ours is"
        ),
        pytest.param(
            [("origin", "https://evil.example"), ("referer", f"{PUBLIC_URL}/app")],
            True,
            id="Origin decides even when the Referer is ours",
        ),
        pytest.param(
            [("origin", PUBLIC_URL), ("referer", "https://evil.example/")],
            False,
            id="Origin decides even when the Referer is another site",
        ),
        pytest.param(
            [("origin", "https://evil.example"), ("origin", PUBLIC_URL)],
            True,
            id="the first Origin counts: a second cannot launder it",
        ),
        pytest.param(
            [("referer", f"{PUBLIC_URL}/app/form?x=1")], False, id="without Origin, our Referer"
        ),
        pytest.param(
            [("referer", "https://evil.example/gw.example")],
            True,
            id="without Origin, a foreign Referer",
        ),
        pytest.param([("referer", "not a url")], True, id="a Referer that is no URL is not ours"),
    ],
)
def test_cross_site(request_headers, expected):
    assert cross_site(headers(*request_headers), ALLOWED) is expected


# -- who the client is: client_view(scope, trusted) ---------------------------------------

TRUSTED = [ipaddress.ip_network(net) for net in PROXIES]


def scope(peer: str, *pairs: tuple[str, str], scheme: str = "http") -> dict:
    return {"client": (peer, 40000), "headers": headers(*pairs), "scheme": scheme}


HOST = ("host", "gw.example")
SPOOFED = [
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
]


@pytest.mark.parametrize(
    ("trusted", "request_scope", "expected"),
    [
        pytest.param(
            [],
            scope(CLIENT, HOST, *SPOOFED),
            ClientView(CLIENT, "http", "gw.example", False, CLIENT),
            id="with no trusted proxy every X-Forwarded header is ignored",
        ),
        pytest.param(
            TRUSTED,
            scope(CLIENT, HOST, *SPOOFED),
            ClientView(CLIENT, "http", "gw.example", False, CLIENT),
            id="an untrusted peer's X-Forwarded headers are ignored",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-for", "198.51.100.7")),
            ClientView("198.51.100.7", "http", "gw.example", True, f"198.51.100.7, {PROXY}"),
            id="a trusted proxy names the client",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")),
            ClientView(
                "198.51.100.7",
                "http",
                "gw.example",
                True,
                f"6.6.6.6, 198.51.100.7, 10.0.0.2, {PROXY}",
            ),
            id="the chain is read right to left up to the first untrusted hop",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")),
            ClientView(
                "198.51.100.7", "http", "gw.example", True, f"6.6.6.6, 198.51.100.7, {PROXY}"
            ),
            id="a chain split over two headers is read as one",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-for", "198.51.100.7, not-an-address")),
            ClientView("", "http", "gw.example", True, f"198.51.100.7, not-an-address, {PROXY}"),
            id="a hop that is no address makes the client unknown, not the proxy",
        ),
        pytest.param(
            TRUSTED,
            scope(
                PROXY, HOST, ("x-forwarded-for", "6.6.6.6, 198.51.100.7:5555, [2001:db8::7]:443")
            ),
            ClientView(
                "2001:db8::7",
                "http",
                "gw.example",
                True,
                f"6.6.6.6, 198.51.100.7:5555, 2001:db8::7, {PROXY}",
            ),
            id="ip:port and [v6]:port hops are read without the port",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-for", "10.0.0.3, 10.0.0.2")),
            ClientView("10.0.0.3", "http", "gw.example", True, f"10.0.0.3, 10.0.0.2, {PROXY}"),
            id="a chain of trusted hops ends at its left-most address",
        ),
        pytest.param(
            TRUSTED,
            scope("::1", HOST, ("x-forwarded-for", "2001:db8::7")),
            ClientView("2001:db8::7", "http", "gw.example", True, "2001:db8::7, ::1"),
            id="an IPv6 proxy and client are read the same way",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-proto", "http, https")),
            ClientView(PROXY, "https", "gw.example", True, PROXY),
            id="the last X-Forwarded-Proto of a trusted proxy sets the scheme",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-proto", "gopher")),
            ClientView(PROXY, "http", "gw.example", True, PROXY),
            id="a scheme other than http or https is ignored",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-host", "App.Example:8443")),
            ClientView(PROXY, "http", "app.example:8443", True, PROXY),
            id="a trusted proxy's X-Forwarded-Host names the host, lower-cased",
        ),
        pytest.param(
            TRUSTED,
            scope(PROXY, HOST, ("x-forwarded-host", "evil.example/path")),
            ClientView(PROXY, "http", "gw.example", True, PROXY),
            id="an X-Forwarded-Host that is no plain host is ignored",
        ),
        pytest.param(
            [],
            scope(CLIENT, ("host", "user@gw.example")),
            ClientView(CLIENT, "http", "", False, CLIENT),
            id="a Host with userinfo is no host at all",
        ),
        pytest.param(
            [],
            scope(CLIENT, ("host", "GW.Example:8080")),
            ClientView(CLIENT, "http", "gw.example:8080", False, CLIENT),
            id="the Host is lower-cased",
        ),
        pytest.param(
            [],
            scope(CLIENT, HOST, scheme="wss"),
            ClientView(CLIENT, "https", "gw.example", False, CLIENT),
            id="a websocket over TLS counts as https",
        ),
    ],
)
def test_client_view(trusted, request_scope, expected):
    assert client_view(request_scope, trusted) == expected


# -- framing: read_framing(headers), the refusal it names ---------------------------------


@pytest.mark.parametrize(
    ("request_headers", "expected"),
    [
        pytest.param([HOST], None, id="a plain request is well framed"),
        pytest.param([HOST, ("content-length", "5")], None, id="one Content-Length is fine"),
        pytest.param(
            [("content-length", "5"), ("content-length", "5")],
            None,
            id="the same length twice is one length",
        ),
        pytest.param([("content-length", " 5 ")], None, id="spaces around the length are allowed"),
        pytest.param([("transfer-encoding", "Chunked")], None, id="chunked in any case is fine"),
        pytest.param(
            [HOST, ("host", "evil.example")],
            "more than one Host header",
            id="two Host headers are refused",
        ),
        pytest.param(
            [("content-length", "5"), ("transfer-encoding", "chunked")],
            "both Content-Length and Transfer-Encoding",
            id="a length and chunked together are refused",
        ),
        pytest.param(
            [("content-length", "5"), ("content-length", "6")],
            "conflicting Content-Length headers",
            id="two different lengths are refused",
        ),
        pytest.param(
            [("content-length", "5, 5")],
            "conflicting Content-Length headers",
            id="a list of lengths in one header is refused",
        ),
        pytest.param(
            [("content-length", "-1")], "invalid Content-Length", id="a negative length is refused"
        ),
        pytest.param(
            [("content-length", "+5")], "invalid Content-Length", id="a signed length is refused"
        ),
        pytest.param(
            [("content-length", "0x10")], "invalid Content-Length", id="a hex length is refused"
        ),
        pytest.param(
            [("transfer-encoding", "gzip, chunked")],
            "unsupported Transfer-Encoding",
            id="an encoding other than chunked is refused",
        ),
        pytest.param(
            [("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
            "unsupported Transfer-Encoding",
            id="two Transfer-Encoding headers are refused",
        ),
    ],
)
def test_framing_problem(request_headers, expected):
    framing = read_framing(headers(*request_headers))
    problem = framing if isinstance(framing, str) else None
    assert problem == expected


# -- forward-auth URIs: normalize_forwarded_uri(uri) ---------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        pytest.param("/app/x", "/app/x", id="a canonical path is taken as it is"),
        pytest.param("/app/x?next=/../admin", "/app/x", id="the query is not part of the path"),
        pytest.param("/app/", "/app/", id="a trailing slash is kept"),
        pytest.param("/app/caf%C3%A9", "/app/café", id="an encoded non-ASCII letter is decoded"),
        pytest.param("/app/a%20b", "/app/a b", id="an encoded space is decoded"),
        pytest.param("/app/x#/../admin", BadPath, id="a raw # is refused"),
        pytest.param("/app/../admin", BadPath, id="a dot-dot segment is refused"),
        pytest.param("/app/./x", BadPath, id="a dot segment is refused"),
        pytest.param("/app/..;x/admin", BadPath, id="a dot-dot segment with parameters is refused"),
        pytest.param("/app//x", BadPath, id="an empty segment is refused"),
        pytest.param("//admin", BadPath, id="a leading double slash is refused"),
        pytest.param("/%61dmin", BadPath, id="an encoded letter is refused"),
        pytest.param("/app/%2e%2e/admin", BadPath, id="encoded dots are refused"),
        pytest.param("/app/%2fadmin", BadPath, id="an encoded slash is refused"),
        pytest.param("/app/x y", BadPath, id="a raw space is refused"),
        pytest.param("/app/caf\u00e9", BadPath, id="a raw non-ASCII letter is refused"),
        pytest.param("app/x", BadPath, id="a path without its leading slash is refused"),
    ],
)
def test_normalize_forwarded_uri(uri, expected):
    result = normalize_forwarded_uri(uri)
    if expected is BadPath:
        assert isinstance(result, BadPath), result
    else:
        assert result == expected


# -- next-hop headers: NextHop over a real Config and real keys ---------------------------


@pytest.fixture(scope="module")
def rt(tmp_path_factory) -> Runtime:
    """A runtime for https://gw.example behind 10.0.0.0/8, keys in a temporary directory."""
    raw = {
        "server": {"public_url": PUBLIC_URL, "trusted_proxies": PROXIES},
        "keys": {"dir": "keys"},
        "store": {"url": "memory://"},
        "routes": [
            {"name": "app", "path": "/app", "upstream": UPSTREAM},
            {"name": "hosted", "path": "/hosted", "upstream": UPSTREAM, "preserve_host": True},
            {
                "name": "legacy",
                "path": "/legacy",
                "upstream": UPSTREAM,
                "strip_headers": ["X-Debug-User"],
            },
            # names a header of its own: no client may send it to any route
            {
                "name": "login",
                "path": "/login",
                "upstream": UPSTREAM,
                "user_header": "X-Remote-Login",
                "assertion_header": "",
            },
        ],
    }
    directory: Path = tmp_path_factory.mktemp("core")
    return build_runtime(build_config(raw, directory, env={}))


ASSERTION = "<assertion>"
# the identity headers a default route's upstream gets for alice
ALICE_HEADERS = [
    ("x-user-id", "alice"),
    ("x-user-roles", "staff"),
    ("x-gateway-assertion", ASSERTION),
]


def context(
    rt: Runtime,
    route_name: str,
    peer: str,
    client: list[tuple[str, str]],
    identity: Identity | None = ALICE,
    used_bearer: bool = False,
    path: str = "/app/x",
) -> RequestContext:
    chosen = next(r for r in rt.config.routes if r.name == route_name)
    view = client_view(scope(peer, *client), rt.config.server.trusted_proxies)
    return RequestContext(
        "req-1", path, view, route=chosen, identity=identity, used_bearer=used_bearer
    )


def masked(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The headers as text, with the (freshly signed) assertion replaced by a placeholder."""
    return [(k, ASSERTION if k == "x-gateway-assertion" else v) for k, v in text(raw)]


def ours(ip: str = CLIENT, host: str = "gw.example", proto: str = "http") -> list[tuple[str, str]]:
    """What the gateway appends for alice: forwarded-for family, request id, identity."""
    out = [("x-forwarded-for", ip), ("x-forwarded-proto", proto)]
    if host:
        out.append(("x-forwarded-host", host))
    return [*out, ("x-request-id", "req-1"), *ALICE_HEADERS]


COOKIES = "theme=dark; gw_session=t1; __Host-gw_session=t2; __Secure-gw_session=t3; lang=en"


@pytest.mark.parametrize(
    ("route_name", "peer", "client", "used_bearer", "expected"),
    [
        pytest.param(
            "app",
            CLIENT,
            [("x-b", "2"), HOST, ("accept", "*/*"), ("x-a", "1")],
            False,
            [("x-b", "2"), ("accept", "*/*"), ("x-a", "1"), *ours()],
            id="the client's headers keep their order and ours are appended",
        ),
        pytest.param(
            "app",
            CLIENT,
            [
                HOST,
                ("X-User-Id", "mallory"),
                ("x_user_id", "mallory"),
                ("X_User_Id", "mallory"),
                ("x.user.id", "mallory"),
                ("X-USER-ROLES", "admin"),
                ("x-gateway-assertion", "forged"),
                ("x-remote-login", "mallory"),
                ("accept", "*/*"),
            ],
            False,
            [("accept", "*/*"), *ours()],
            id="identity headers are stripped in every spelling, another route's names too",
        ),
        pytest.param(
            "app",
            CLIENT,
            [
                HOST,
                ("connection", "x-user-id, X-Custom, x-forwarded-for"),
                ("x-custom", "1"),
                ("x-kept", "1"),
            ],
            False,
            [("x-kept", "1"), *ours()],
            id="Connection-named headers are dropped before ours are added",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("cookie", COOKIES)],
            False,
            [("cookie", "theme=dark; lang=en"), *ours()],
            id="our cookie is removed from Cookie in every prefix",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("cookie", "gw_session=t1")],
            False,
            ours(),
            id="a Cookie holding only ours is dropped",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("authorization", "Bearer our-token")],
            True,
            ours(),
            id="Authorization is dropped when it carried our bearer token",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("authorization", "Basic dXBzdHJlYW06cGFzcw==")],
            False,
            [("authorization", "Basic dXBzdHJlYW06cGFzcw=="), *ours()],
            id="Authorization for the upstream itself passes",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, *SPOOFED, ("x-real-ip", "6.6.6.6"), ("forwarded", "for=6.6.6.6")],
            False,
            ours(),
            id="an untrusted client's forwarded headers are replaced by ours",
        ),
        pytest.param(
            "app",
            PROXY,
            [
                HOST,
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example"),
            ],
            False,
            ours(ip=f"6.6.6.6, 198.51.100.7, {PROXY}", host="app.example", proto="https"),
            id="a trusted proxy's chain is passed on with the proxy appended",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("x-original-url", "/admin"), ("x-http-method-override", "DELETE")],
            False,
            ours(),
            id="headers legacy stacks route or authorize on are dropped",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST, ("content-length", "5"), ("te", "trailers"), ("upgrade", "h2c")],
            False,
            ours(),
            id="hop-by-hop and framing headers are dropped",
        ),
        pytest.param(
            "legacy",
            CLIENT,
            [HOST, ("x-debug-user", "admin"), ("X_Debug_User", "admin"), ("x-debug", "1")],
            False,
            [("x-debug", "1"), *ours()],
            id="a route's strip_headers are stripped in every spelling",
        ),
        pytest.param(
            "app",
            CLIENT,
            [HOST],
            False,
            ours(),
            id="Host is not passed on without preserve_host",
        ),
        pytest.param(
            "hosted",
            CLIENT,
            [("host", "GW.example")],
            False,
            [("host", "gw.example"), *ours()],
            id="Host is passed on with preserve_host",
        ),
        pytest.param(
            "hosted",
            CLIENT,
            [("host", "user@gw.example")],
            False,
            ours(host=""),
            id="an invalid Host is not passed on even with preserve_host",
        ),
    ],
)
def test_upstream_headers(rt, route_name, peer, client, used_bearer, expected):
    ctx = context(rt, route_name, peer, client, used_bearer=used_bearer)
    assert masked(rt.nexthop.upstream_headers(ctx, headers(*client), "GET")) == expected


def test_upstream_headers_for_a_stranger_carry_no_identity(rt):
    client = [HOST, ("x-user-id", "mallory")]
    ctx = context(rt, "app", CLIENT, client, identity=None)
    names = [k for k, _ in text(rt.nexthop.upstream_headers(ctx, headers(*client), "GET"))]
    assert names == ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"]


@pytest.mark.parametrize(
    ("route_name", "method", "path"),
    [
        pytest.param("app", "GET", "/app/x", id="the assertion is for the route it was minted on"),
        pytest.param(
            "hosted", "POST", "/hosted/form", id="another route gets an audience of its own"
        ),
    ],
)
def test_the_assertion_names_the_route_as_its_audience(rt, route_name, method, path):
    ctx = context(rt, route_name, CLIENT, [HOST], identity=BOB, path=path)
    sent = dict(text(rt.nexthop.upstream_headers(ctx, headers(HOST), method)))
    key = rt.keyring.active
    claims = jwt.decode(
        sent["x-gateway-assertion"],
        key.public,
        algorithms=[key.algorithm],
        audience=route_name,
        issuer=PUBLIC_URL,
    )
    assert (claims["aud"], claims["sub"], claims["roles"]) == (
        route_name,
        "bob",
        ["admin", "staff"],
    )
    assert "method" not in claims and "path" not in claims  # not bound by default
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(jwt.InvalidAudienceError):  # never the session audience
        jwt.decode(
            sent["x-gateway-assertion"], key.public, algorithms=[key.algorithm], audience=PUBLIC_URL
        )


@pytest.mark.parametrize(
    ("client", "used_bearer", "expected"),
    [
        pytest.param(
            [("host", "app.local"), ("x-forwarded-proto", "https"), ("x.user.id", "mallory")],
            False,
            [("host", "app.local"), ("x-forwarded-proto", "https")],
            id="the wrapped app keeps Host and X-Forwarded-* but loses forged identity",
        ),
        pytest.param(
            [("cookie", COOKIES), ("authorization", "Bearer our-token")],
            True,
            [("cookie", "theme=dark; lang=en")],
            id="the wrapped app never sees our cookie or our bearer token",
        ),
        pytest.param(
            [("x-original-url", "/admin"), ("content-length", "0")],
            False,
            [("content-length", "0")],
            id="the wrapped app keeps framing but loses legacy routing headers",
        ),
    ],
)
def test_app_headers(rt, client, used_bearer, expected):
    ctx = context(rt, "app", CLIENT, client, used_bearer=used_bearer)
    assert masked(rt.nexthop.app_headers(ctx, headers(*client), "GET")) == [
        *expected,
        *ALICE_HEADERS,
    ]


@pytest.mark.parametrize(
    ("identity", "used_bearer", "expected"),
    [
        pytest.param(None, False, [], id="forward-auth tells the proxy nothing about a stranger"),
        pytest.param(
            ALICE,
            False,
            ALICE_HEADERS,
            id="forward-auth names the user to the proxy",
        ),
        pytest.param(
            BOB,
            True,
            [
                ("x-user-id", "bob"),
                ("x-user-roles", "admin,staff"),
                ("x-gateway-assertion", ASSERTION),
                ("x-gateway-bearer", "used"),
            ],
            id="forward-auth says when Authorization carried our token",
        ),
    ],
)
def test_verdict_headers(rt, identity, used_bearer, expected):
    ctx = context(rt, "app", CLIENT, [HOST], identity=identity, used_bearer=used_bearer)
    assert masked(rt.nexthop.verdict_headers(ctx, "GET")) == expected


def test_a_route_with_its_own_user_header_and_no_assertion(rt):
    ctx = context(rt, "login", CLIENT, [HOST], path="/login/x")
    assert text(rt.nexthop.identity_headers(ctx, "GET")) == [
        ("x-remote-login", "alice"),
        ("x-user-roles", "staff"),
    ]


# -- what the client gets back: response_headers and guard_response -----------------------

OUR_COOKIES = frozenset({b"gw_session", b"__Host-gw_session", b"__Secure-gw_session"})
THEIR_COOKIE = ("set-cookie", "theme=dark; Path=/")


@pytest.mark.parametrize(
    "set_cookie",
    [
        pytest.param("gw_session=forged; Path=/", id="set"),
        pytest.param("gw_session=; Max-Age=0", id="cleared"),
        pytest.param("GW_SESSION=forged", id="in upper case"),
        pytest.param("__Host-gw_session=forged; Secure; Path=/", id="with the __Host- prefix"),
        pytest.param(
            "__secure-GW_Session=forged; Secure", id="with the __Secure- prefix in mixed case"
        ),
        pytest.param(" gw_session =forged", id="with spaces around the name"),
    ],
)
def test_an_upstream_cannot_set_our_cookie(rt, set_cookie):
    raw = headers(("Set-Cookie", set_cookie), THEIR_COOKIE)
    assert text(response_headers(raw, rt.nexthop.cookie_names)) == [THEIR_COOKIE]
    assert text(rt.nexthop.guard_response(raw)) == [THEIR_COOKIE]


@pytest.mark.parametrize(
    ("raw", "bodiless", "expected"),
    [
        pytest.param(
            [("Content-Type", "text/plain"), ("Content-Length", "2")],
            False,
            [("content-type", "text/plain"), ("content-length", "2")],
            id="names are lower-cased and the length kept",
        ),
        pytest.param(
            [("content-length", "2"), ("etag", '"x"')],
            True,
            [("etag", '"x"')],
            id="a bodiless answer loses its Content-Length",
        ),
        pytest.param(
            [
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("trailer", "x-sum"),
                ("upgrade", "h2c"),
                ("proxy-authenticate", "Basic"),
                ("x-app", "1"),
            ],
            False,
            [("x-app", "1")],
            id="hop-by-hop headers are dropped",
        ),
        pytest.param(
            [("connection", "X-Internal, close"), ("x-internal", "secret"), ("x-app", "1")],
            False,
            [("x-app", "1")],
            id="headers the upstream names in Connection are dropped",
        ),
        pytest.param(
            [("set-cookie", "gw_session=forged"), THEIR_COOKIE],
            False,
            [THEIR_COOKIE],
            id="the upstream's Set-Cookie for our cookie is dropped, others kept",
        ),
    ],
)
def test_response_headers(raw, bodiless, expected):
    assert text(response_headers(headers(*raw), OUR_COOKIES, bodiless=bodiless)) == expected
