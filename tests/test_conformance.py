"""Conformance: one table of (config x request) cases, run through all four modes.

The gateway offers one authentication core four ways: the proxy (`gateway run` in front of an
upstream), the ASGI middleware (a Starlette app under uvicorn), the WSGI middleware (a WSGI app
under werkzeug's server) and forward-auth (real nginx from examples/nginx.conf asking a
`gateway run` at /.auth/verify). Every mode here is a real server on 127.0.0.1 with the same
config (`ROUTES`: public, optional, required, a role, a method rule, a host route and a route
with `bearer = false`), and a recorder of what the upstream (or the wrapped app) received.

`CASES` is the table: one row per rule, with who is signed in and how (cookie or bearer), the
method, path, Host and extra headers (forged identity headers in every spelling, a cross-site
Origin, a garbage token), and what must happen: the status (302 with its Location, 401, 403,
405 with the JSON error code, or 200), and for an allowed request exactly which identity the
upstream was told, with no client-forged identity header in any spelling, no gateway session
cookie and no bearer token reaching it. `test_conformance` runs every row in every mode.

Every mode is checked against the same expected values in the row, so the table itself is the
cross-mode comparison: when all pass, all four modes reached the same decision and handed the
upstream the same identity headers. Where a mode cannot speak a status (nginx's `auth_request`
only passes 401 and 403 on), `MODE_STATUS` says so, once, with the reason; where a mode really
differs from the others, the row's `differs` names the mode and why: a strict xfail for that
(row, mode) alone, so the difference stays visible and fixing it turns the run red until the
row says so.

Logins are slow (argon2): each mode logs alice (staff) and bob (admin, staff) in once, with a
JSON POST to its own /.auth/login, and reuses the token as cookie or bearer. Requests go out as
raw bytes (tests.rawhttp), so header spellings reach each server exactly as written.

A new mode or a new rule is one row more: a mode is one entry in `MODES` (and its fixture
branch), a rule is one `Case` in `CASES`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import asgi, wsgi
from tests.conftest import USERS, add_users, free_port, start_gateway, write_config
from tests.rawhttp import RawResponse, raw_request
from tests.services import need
from tests.test_forward_auth import nginx_binary, nginx_config, start_nginx, stop
from tests.test_middleware import UvicornServer, WerkzeugServer
from tests.upstream import RecordingUpstream

# -- the one config ---------------------------------------------------------------------------

# the middleware modes read the same file: they accept `upstream` and ignore it
ROUTES = """
[[routes]]
name = "site"
path = "/"
upstream = "{upstream}"
auth = "public"

[[routes]]
name = "opt"
path = "/opt"
upstream = "{upstream}"
auth = "optional"

[[routes]]
name = "app"
path = "/app"
upstream = "{upstream}"
auth = "required"

[[routes]]
name = "admin"
path = "/admin"
upstream = "{upstream}"
auth = "required"
roles = ["admin"]

[[routes]]
name = "readonly"
path = "/readonly"
upstream = "{upstream}"
auth = "required"
methods = ["GET"]

[[routes]]
name = "intranet"
host = "intranet.example"
path = "/"
upstream = "{upstream}"
auth = "required"

[[routes]]
name = "nobearer"
path = "/nobearer"
upstream = "{upstream}"
auth = "required"
bearer = false

[[routes]]
name = "team"
path = "/team"
upstream = "{upstream}"
users = ["ALICE"]

[[routes]]
name = "lan"
path = "/lan"
upstream = "{upstream}"
networks = ["127.0.0.0/8"]

[[routes]]
name = "wan"
path = "/wan"
upstream = "{upstream}"
auth = "public"
networks = ["10.0.0.0/8", "192.168.0.0/16"]

[[routes]]
name = "status"
path = "/status"
upstream = "{upstream}"
roles = ["admin"]
bypass_networks = ["127.0.0.1/32"]

[[routes]]
name = "closed"
path = "/closed"
upstream = "{upstream}"
auth = "deny"
"""

MODES = ["proxy", "asgi", "wsgi", "forward-auth"]

# -- request pieces -----------------------------------------------------------------------------

BROWSER = (("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),)
API = (("Accept", "application/json"),)
SELF = "{public_url}"  # replaced by the mode's own origin
EVIL = "http://evil.example"
# a client naming itself, in every spelling WSGI, CGI and PHP fold together, and duplicated.
# Some never get past a mode's server (werkzeug drops names with `_`, nginx those with `_` or
# `.`); the property checked is the same everywhere: no spelling of them reaches the app.
FORGED = (
    ("X-User-Id", "mallory"),
    ("x-user-id", "mallory"),
    ("x_user_id", "mallory"),
    ("X.User.Id", "mallory"),
    ("X-User-Roles", "admin,mallory"),
    ("X_User_Roles", "admin,mallory"),
    ("X-Gateway-Assertion", "mallory.forged.assertion"),
)
# the headers legacy stacks log users in on; the gateway removes them too (DESIGN.md)
FORGED_LEGACY = (
    ("Remote-User", "mallory"),
    ("X-Forwarded-User", "mallory"),
    ("X-Forwarded-Email", "mallory@evil.example"),
)
FORGED_VALUE = "mallory"
GARBAGE_BEARER = (("Authorization", "Bearer not-a-jwt"),)
APP_AUTHORIZATION = (("Authorization", "Basic YXBwOnNlY3JldA=="),)  # the app's own scheme
# what the upstream must never get from a client, whatever the spelling (see fold)
IDENTITY_NAMES = {
    "x-user-id",
    "x-user-roles",
    "x-gateway-assertion",
    "remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
}
OWN_COOKIE = "theme=dark"  # every request carries it; it must reach the app untouched


def fold(name: str) -> str:
    """A header name as WSGI, CGI and PHP read it: case, `_` and `.` folded onto `-`."""
    return name.lower().replace("_", "-").replace(".", "-")


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One request and what every mode must do with it.

    user/cred: who is signed in and how the token travels ("cookie", "bearer" or None).
    headers: extra request headers; `{public_url}`, `{token:USER}` (a JWT) and `{cookie:USER}`
      (name=JWT) are filled in per mode.
    status/code: the answer, and the JSON `error` code for 401/403/405.
    sees: the user the upstream is told about (X-User-Id, X-User-Roles, assertion), or None.
    forwards: client headers that must reach the upstream as sent.
    differs: (mode, why) where that mode really differs: a strict xfail for that mode only.
    """

    id: str
    route: str
    user: str | None
    cred: str | None
    method: str
    path: str
    status: int
    code: str | None = None
    sees: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    forwards: tuple[tuple[str, str], ...] = ()
    differs: tuple[tuple[str, str], ...] = ()


# fmt: off
CASES = [
    # public
    Case("public: an anonymous caller gets in, with no identity",
         "site", None, None, "GET", "/pub", 200),
    Case("public: forged identity headers in every spelling never reach the upstream",
         "site", None, None, "GET", "/pub", 200, headers=FORGED),
    Case("public: forged legacy identity headers (Remote-User, X-Forwarded-*) never reach it",
         "site", None, None, "GET", "/pub", 200, headers=FORGED_LEGACY),
    Case("public: a signed-in caller is named to the upstream, the forged copies dropped",
         "site", "alice", "cookie", "GET", "/pub", 200, sees="alice", headers=FORGED),
    Case("public: a garbage bearer token is just anonymous",
         "site", None, None, "GET", "/pub", 200, headers=GARBAGE_BEARER),
    Case("public: a garbage session cookie is anonymous and does not reach the upstream",
         "site", None, None, "GET", "/pub", 200, headers=(("Cookie", "gw_session=not-a-jwt"),)),
    # optional
    Case("optional: anonymous gets in with no identity",
         "opt", None, None, "GET", "/opt", 200),
    Case("optional: anonymous with forged identity headers is still anonymous",
         "opt", None, None, "GET", "/opt/x", 200, headers=FORGED),
    Case("optional: a cookie names the user",
         "opt", "alice", "cookie", "GET", "/opt", 200, sees="alice"),
    Case("optional: a signed-in caller's forged headers are replaced by the gateway's",
         "opt", "bob", "cookie", "GET", "/opt/x", 200, sees="bob", headers=FORGED),
    Case("optional: a bearer token names the user and is not forwarded",
         "opt", "bob", "bearer", "GET", "/opt", 200, sees="bob"),
    # required
    Case("required: an anonymous browser is sent to the sign-in page",
         "app", None, None, "GET", "/app/page", 302, headers=BROWSER),
    Case("required: an anonymous API call gets 401 JSON",
         "app", None, None, "GET", "/app/page", 401, "unauthenticated"),
    Case("required: an anonymous POST from a browser is 401, not a redirect",
         "app", None, None, "POST", "/app/form", 401, "unauthenticated", headers=BROWSER),
    Case("required: forged identity headers do not sign anyone in",
         "app", None, None, "GET", "/app/page", 401, "unauthenticated",
         headers=FORGED + FORGED_LEGACY),
    Case("required: a garbage session cookie is anonymous",
         "app", None, None, "GET", "/app/page", 401, "unauthenticated",
         headers=(("Cookie", "gw_session=not-a-jwt"),)),
    Case("required: the cookie lets alice in",
         "app", "alice", "cookie", "GET", "/app/page", 200, sees="alice"),
    Case("required: alice's forged identity headers are replaced by the gateway's",
         "app", "alice", "cookie", "GET", "/app/page", 200, sees="alice", headers=FORGED),
    Case("required: alice's forged legacy identity headers never reach the upstream",
         "app", "alice", "cookie", "GET", "/app/page", 200, sees="alice",
         headers=FORGED_LEGACY),
    Case("required: a bearer token lets alice in and is not forwarded",
         "app", "alice", "bearer", "GET", "/app/api", 200, sees="alice"),
    Case("required: a bearer token wins over another user's cookie",
         "app", "bob", "bearer", "GET", "/app/api", 200, sees="bob",
         headers=(("Cookie", "{cookie:alice}"),)),
    Case("required: a garbage bearer token is refused, never retried from the cookie",
         "app", "alice", "cookie", "GET", "/app/api", 401, "unauthenticated",
         headers=GARBAGE_BEARER),
    # cross-site unsafe requests
    Case("csrf: a cross-site POST with the cookie is refused",
         "app", "alice", "cookie", "POST", "/app/form", 403, "cross_site",
         headers=(("Origin", EVIL),)),
    Case("csrf: a cross-site POST with the cookie, Referer only, is refused",
         "app", "alice", "cookie", "POST", "/app/form", 403, "cross_site",
         headers=(("Referer", EVIL + "/page"),)),
    Case("csrf: a same-origin POST with the cookie passes",
         "app", "alice", "cookie", "POST", "/app/form", 200, sees="alice",
         headers=(("Origin", SELF),)),
    Case("csrf: a POST with the cookie and neither Origin nor Referer passes (no browser page)",
         "app", "alice", "cookie", "POST", "/app/form", 200, sees="alice"),
    Case("csrf: a cross-site POST with a bearer token passes (the rule is for cookies)",
         "app", "alice", "bearer", "POST", "/app/form", 200, sees="alice",
         headers=(("Origin", EVIL),)),
    # roles
    Case("roles: anonymous gets 401",
         "admin", None, None, "GET", "/admin/users", 401, "unauthenticated"),
    Case("roles: alice without the role gets 403",
         "admin", "alice", "cookie", "GET", "/admin/users", 403, "forbidden"),
    Case("roles: a forged X-User-Roles does not lift the role check",
         "admin", "alice", "cookie", "GET", "/admin/users", 403, "forbidden", headers=FORGED),
    Case("roles: the rule matches whatever the case of the path",
         "admin", "alice", "cookie", "GET", "/ADMIN/users", 403, "forbidden"),
    Case("roles: bob with the role gets in",
         "admin", "bob", "cookie", "GET", "/admin/users", 200, sees="bob"),
    Case("roles: bob's bearer token carries the role",
         "admin", "bob", "bearer", "GET", "/admin/users", 200, sees="bob"),
    # methods
    Case("methods: GET is listed",
         "readonly", "alice", "cookie", "GET", "/readonly", 200, sees="alice"),
    Case("methods: POST is not listed: 405",
         "readonly", "alice", "cookie", "POST", "/readonly", 405, "method_not_allowed",
         headers=(("Origin", SELF),)),
    Case("methods: the method rule comes before sign-in: anonymous DELETE is 405",
         "readonly", None, None, "DELETE", "/readonly", 405, "method_not_allowed"),
    # hosts
    Case("host: the host route is required: an anonymous API call gets 401",
         "intranet", None, None, "GET", "/pub", 401, "unauthenticated",
         host="intranet.example"),
    Case("host: an anonymous browser is sent to public_url's sign-in page, never Host's",
         "intranet", None, None, "GET", "/pub", 302, host="intranet.example", headers=BROWSER),
    Case("host: any case and a port still pick the host route",
         "intranet", None, None, "GET", "/pub", 401, "unauthenticated",
         host="INTRANET.Example:8080"),
    Case("host: alice with the cookie gets in on the host route",
         "intranet", "alice", "cookie", "GET", "/pub", 200, sees="alice",
         host="intranet.example"),
    Case("host: the host route's own page may POST with the cookie (its origin is ours)",
         "intranet", "alice", "cookie", "POST", "/form", 200, sees="alice",
         host="intranet.example", headers=(("Origin", "http://intranet.example"),)),
    Case("host: another host's page may not",
         "intranet", "alice", "cookie", "POST", "/form", 403, "cross_site",
         host="intranet.example", headers=(("Origin", "http://other.example"),)),
    # bearer = false
    Case("no bearer: a bearer token is refused on a bearer = false route",
         "nobearer", "alice", "bearer", "GET", "/nobearer", 401, "unauthenticated"),
    Case("no bearer: the cookie still works",
         "nobearer", "alice", "cookie", "GET", "/nobearer", 200, sees="alice"),
    Case("no bearer: the cookie decides, another user's bearer token is not read",
         "nobearer", "alice", "cookie", "GET", "/nobearer", 200, sees="alice",
         headers=(("Authorization", "Bearer {token:bob}"),)),
    Case("no bearer: the app's own Authorization scheme reaches it",
         "nobearer", "alice", "cookie", "GET", "/nobearer", 200, sees="alice",
         headers=APP_AUTHORIZATION, forwards=APP_AUTHORIZATION),
    # users = [...]: any of them, in the canonical spelling
    Case("users: alice is listed (as ALICE in the config) and gets in",
         "team", "alice", "cookie", "GET", "/team", 200, sees="alice"),
    Case("users: bob is not listed: 403, whatever his roles",
         "team", "bob", "cookie", "GET", "/team", 403, "forbidden"),
    Case("users: a forged X-User-Id does not make bob alice",
         "team", "bob", "bearer", "GET", "/team", 403, "forbidden", headers=FORGED),
    Case("users: anonymous signs in first",
         "team", None, None, "GET", "/team", 401, "unauthenticated"),
    # networks = [...]: the client address must be inside, for everyone
    Case("networks: a client inside gets the route's normal rule",
         "lan", "alice", "cookie", "GET", "/lan", 200, sees="alice"),
    Case("networks: a client outside is refused before sign-in",
         "wan", None, None, "GET", "/wan", 403, "forbidden"),
    Case("networks: outside is outside, signed in or not",
         "wan", "bob", "cookie", "GET", "/wan", 403, "forbidden"),
    Case("networks: a forged X-Forwarded-For from an untrusted peer moves nobody inside",
         "wan", None, None, "GET", "/wan", 403, "forbidden",
         headers=(("X-Forwarded-For", "10.1.2.3"),),
         differs=(
             ("forward-auth", "the test client shares trusted nginx's address 127.0.0.1, so "
              "the forged hop is the right-most untrusted one; a client with its own address "
              "is judged by it (tests/security/test_forwarded.py)"),
             ("asgi", "uvicorn's default proxy_headers trusts X-Forwarded-For from 127.0.0.1 "
              "and rewrites scope['client'] before any middleware runs: under uvicorn the "
              "server decides the client address (--forwarded-allow-ips)"),
         )),
    # bypass_networks = [...]: no sign-in from inside; identity only when signed in
    Case("bypass: anonymous from inside reaches a role route, named to nobody",
         "status", None, None, "GET", "/status", 200),
    Case("bypass: anonymous forged identity headers from inside still never reach it",
         "status", None, None, "GET", "/status", 200, headers=FORGED),
    Case("bypass: a signed-in user from inside is named to the upstream",
         "status", "alice", "cookie", "GET", "/status", 200, sees="alice"),
    # auth = "deny"
    Case("deny: nobody reaches the route, signed in or not",
         "closed", "bob", "cookie", "GET", "/closed/x", 403, "forbidden"),
    Case("deny: anonymous gets 403, not 401",
         "closed", None, None, "GET", "/closed", 403, "forbidden"),
]
# fmt: on

# A status a mode cannot give, and what it gives instead (status, JSON code or None).
MODE_STATUS: dict[tuple[str, int], tuple[int, str | None]] = {
    # nginx's auth_request passes only 401 and 403 on (any other verdict becomes 500), so
    # /.auth/verify answers a method the route does not list with 403; nginx then serves its
    # own 403 page (HTML): no JSON code
    ("forward-auth", 405): (403, None),
    # a 403 verdict is passed on as nginx's own 403 page, the gateway's JSON body is not
    ("forward-auth", 403): (403, None),
    # 401: the example's @gateway_login answers {"error": "unauthenticated", ...} itself, and
    # 302 carries the gateway's Location: both as the other modes
}

# -- what the upstream saw ------------------------------------------------------------------------

NOT_WSGI = object()


@dataclass
class Seen:
    """One request as the upstream or the wrapped app received it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    remote_user: object = NOT_WSGI  # WSGI only: environ["REMOTE_USER"] (None when unset)


def record_starlette(seen: list[Seen]) -> Starlette:
    """A tiny Starlette app: records every request, answers 200 JSON."""

    async def record(request: Request) -> JSONResponse:
        await request.body()
        seen.append(
            Seen(
                request.method,
                request.url.path,
                request.scope["query_string"].decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
            )
        )
        return JSONResponse({"ok": True})

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{rest:path}", record, methods=methods)])


def record_wsgi(seen: list[Seen]):
    """A tiny WSGI app: records the HTTP_* environ keys as header names, answers 200 JSON."""

    def app(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)
        headers = [
            (key[5:].lower().replace("_", "-"), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        seen.append(
            Seen(
                environ["REQUEST_METHOD"],
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                headers,
                environ.get("REMOTE_USER"),
            )
        )
        body = b'{"ok": true}'
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def from_upstream(upstream: RecordingUpstream) -> list[Seen]:
    out = []
    for rec in list(upstream.requests):
        path, _, query = rec.target.partition("?")
        out.append(Seen(rec.method, path, query, rec.headers))
    return out


# -- the modes ------------------------------------------------------------------------------------


@dataclass
class Mode:
    """One way of running the gateway, with where to send requests and what the app saw."""

    name: str
    port: int
    public_url: str
    seen: Callable[[], list[Seen]]
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    _jwks: jwt.PyJWKSet | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def login(self, user: str) -> tuple[str, str]:
        """(cookie name, token) for the user; one JSON login per user and mode (argon2 is slow)."""
        if user not in self.tokens:
            response = httpx.post(
                f"{self.url}/.auth/login",
                json={"username": user, "password": USERS[user][0]},
                trust_env=False,
            )
            assert response.status_code == 200, response.text
            ((name, value),) = response.cookies.items()
            self.tokens[user] = (name, value)
        return self.tokens[user]

    def jwks(self) -> jwt.PyJWKSet:
        if self._jwks is None:
            response = httpx.get(f"{self.url}/.auth/jwks.json", trust_env=False)
            assert response.status_code == 200, response.text
            self._jwks = jwt.PyJWKSet.from_dict(response.json())
        return self._jwks

    def reached(self, marker: str) -> list[Seen]:
        """Every request the upstream received carrying this marker in its query."""
        return [s for s in self.seen() if f"m={marker}" in s.query]


def gateway_config(directory: Path, port: int, public_url: str, upstream: str, extra: str = ""):
    extra = f'[server]\npublic_url = "{public_url}"\n{extra}'
    config = write_config(
        directory, port, ROUTES.replace("{upstream}", upstream), extra, "memory://"
    )
    add_users(directory / "users.toml")
    return config


@pytest.fixture(scope="module", params=MODES)
def mode(request, tmp_path_factory) -> Iterator[Mode]:
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    if name == "proxy":
        upstream = RecordingUpstream()
        gw = start_gateway(gateway_config(directory, port, public_url, upstream.url), port)
        try:
            yield Mode(name, port, public_url, lambda: from_upstream(upstream))
        finally:
            gw.stop()
            upstream.close()
    elif name == "asgi":
        seen: list[Seen] = []
        config = gateway_config(directory, port, public_url, "http://127.0.0.1:9")
        server = UvicornServer(asgi.GatewayMiddleware(record_starlette(seen), config), port)
        try:
            yield Mode(name, port, public_url, lambda: list(seen))
        finally:
            server.stop()
    elif name == "wsgi":
        seen = []
        config = gateway_config(directory, port, public_url, "http://127.0.0.1:9")
        middleware = wsgi.GatewayMiddleware(record_wsgi(seen), config)
        server = WerkzeugServer(middleware, port)
        try:
            yield Mode(name, port, public_url, lambda: list(seen))
        finally:
            server.stop()
            middleware.close()
    else:
        need("nginx", nginx_binary() is not None, "no nginx binary (apt-get install nginx)")
        upstream = RecordingUpstream()
        gw_port = free_port()
        gw_dir = directory / "gateway"
        gw_dir.mkdir()
        config = gateway_config(
            gw_dir, gw_port, public_url, upstream.url, 'trusted_proxies = ["127.0.0.1/32"]'
        )
        gw = start_gateway(config, gw_port)
        proc = None
        try:
            app = upstream.url.removeprefix("http://")
            proc = start_nginx(nginx_config(directory, port, gw_port, app), port)
            yield Mode(name, port, public_url, lambda: from_upstream(upstream))
        finally:
            if proc is not None:
                stop(proc)
            gw.stop()
            upstream.close()


# -- sending one row --------------------------------------------------------------------------------


def fill(value: str, mode: Mode) -> str:
    """A row's header value for this mode: its origin, and tokens or cookies of its users."""
    value = value.replace(SELF, mode.public_url)
    for user in USERS:
        if f":{user}}}" in value:  # log in only for a user the row names
            name, token = mode.login(user)
            value = value.replace(f"{{token:{user}}}", token)
            value = value.replace(f"{{cookie:{user}}}", f"{name}={token}")
    return value


def send(mode: Mode, case: Case, marker: str) -> RawResponse:
    """The row's request, byte for byte (header spellings as written), on a fresh connection."""
    headers = [("Host", case.host or f"127.0.0.1:{mode.port}"), ("Connection", "close")]
    extra = [(k, fill(v, mode)) for k, v in case.headers]
    if not any(k.lower() == "accept" for k, _ in extra):
        headers += API
    cookies = [OWN_COOKIE]
    if case.cred == "cookie":
        cookies.append("=".join(mode.login(case.user)))
    cookies += [v for k, v in extra if k.lower() == "cookie"]
    headers.append(("Cookie", "; ".join(cookies)))
    if case.cred == "bearer":
        headers.append(("Authorization", f"Bearer {mode.login(case.user)[1]}"))
    headers += [(k, v) for k, v in extra if k.lower() != "cookie"]
    body = b"x=1" if case.method in ("POST", "PUT", "PATCH") else b""
    if case.method not in ("GET", "HEAD"):
        headers += [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", str(len(body))),
        ]
    head = f"{case.method} {case.path}?m={marker} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return raw_request(mode.port, head.encode("latin-1") + body)


def expected(mode: Mode, case: Case) -> tuple[int, str | None]:
    return MODE_STATUS.get((mode.name, case.status), (case.status, case.code))


def check_identity(mode: Mode, case: Case, seen: Seen) -> None:
    """Exactly the gateway's identity headers for `case.sees`, or none; nothing forged."""
    found = [(name, value) for name, value in seen.headers if fold(name) in IDENTITY_NAMES]
    if case.sees is None:
        assert found == [], f"an anonymous request reached the upstream with {found}"
    else:
        roles = ",".join(USERS[case.sees][1])
        names = sorted(name.lower() for name, _ in found)
        # one copy of each, spelled as the gateway spells it: no forged copy in any spelling
        assert names == ["x-gateway-assertion", "x-user-id", "x-user-roles"], found
        values = {name.lower(): value for name, value in found}
        assert (values["x-user-id"], values["x-user-roles"]) == (case.sees, roles)
        assertion = values["x-gateway-assertion"]
        key = mode.jwks()[jwt.get_unverified_header(assertion)["kid"]]
        claims = jwt.decode(
            assertion,
            key.key,
            algorithms=[key.algorithm_name],
            audience=case.route,
            issuer=mode.public_url,
        )
        assert (claims["sub"], claims["roles"]) == (case.sees, list(USERS[case.sees][1]))
        # one assertion per session and route (assertion_binds_request defaults to false)
        assert "method" not in claims and "path" not in claims
    leaked = [(n, v) for n, v in seen.headers if FORGED_VALUE in v]
    assert leaked == [], f"client-forged values reached the upstream: {leaked}"
    if seen.remote_user is not NOT_WSGI:
        assert seen.remote_user == case.sees


def check_cookie_and_token(case: Case, seen: Seen) -> None:
    """No session cookie (the app's own cookie passes), no bearer token we used."""
    cookies = [
        part.strip()
        for name, value in seen.headers
        if name.lower() == "cookie"
        for part in value.split(";")
        if part.strip()
    ]
    # gw_session, or __Host-gw_session with a Secure cookie
    assert not [c for c in cookies if c.split("=", 1)[0].endswith("gw_session")], cookies
    assert OWN_COOKIE in cookies, cookies
    authorization = [v for n, v in seen.headers if fold(n) == "authorization"]
    if case.cred == "bearer":
        assert authorization == [], "the bearer token was forwarded to the upstream"
    for name, value in case.forwards:
        assert value in [v for n, v in seen.headers if fold(n) == fold(name)], seen.headers


def case_param(case: Case):
    return pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_conformance(mode: Mode, case: Case, request) -> None:
    why = dict(case.differs).get(mode.name)
    if why is not None:
        # per (row, mode), so added here; strict: a fixed difference fails until the row says so
        request.node.add_marker(
            pytest.mark.xfail(strict=True, reason=f"{mode.name} differs: {why}")
        )
    marker = uuid.uuid4().hex
    response = send(mode, case, marker)
    status, code = expected(mode, case)
    body = response.body.decode("utf-8", "replace")
    assert response.status == status, body
    if status == 302:
        # from a host route `next` names the host too, so the portal can send the browser back
        where = f"http://{case.host}" if case.host else ""
        target = quote(f"{where}{case.path}?m={marker}", safe="")
        assert response.header("location") == [f"{mode.public_url}/.auth/login?next={target}"]
    if code is not None:
        assert "json" in "".join(response.header("content-type")), body
        assert json.loads(body)["error"] == code
    if status == 405:
        assert response.header("allow") == ["GET, HEAD"]  # the route lists GET: HEAD comes with it
    reached = mode.reached(marker)
    if status != 200:
        assert reached == [], f"a refused request reached the upstream: {reached}"
        return
    assert len(reached) == 1, reached
    (seen,) = reached
    assert (seen.method, seen.path) == (case.method, case.path)
    check_identity(mode, case, seen)
    check_cookie_and_token(case, seen)


def test_the_table_covers_every_route_and_verdict() -> None:
    """Every route of the config has rows, every verdict appears, and row ids are unique."""
    routes = {line.split('"')[1] for line in ROUTES.splitlines() if line.startswith("name = ")}
    assert {c.route for c in CASES} == routes
    assert {c.status for c in CASES} == {200, 302, 401, 403, 405}
    assert len({c.id for c in CASES}) == len(CASES)
    assert {name for c in CASES for name, _ in c.differs} <= set(MODES)
