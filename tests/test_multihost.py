"""One sign-in for many hosts: the `[session] domain` cookie, and the hand-off to other domains.

A real gateway whose portal is `login.corp.test`, with host routes `wiki.corp.test` and
`crm.corp.test` (under the cookie domain) and `app.other.test` and `tools.other.test` (outside
it). Every name is sent to 127.0.0.1 at the gateway's port, with its own Host header (httpx
through `Loopback`; Chromium through `--host-resolver-rules`).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import pytest

from gateway.config import ConfigError, build_config
from tests.conftest import (
    USERS,
    Gateway,
    add_users,
    free_port,
    start_gateway,
    wait_port,
    write_config,
)
from tests.security.attack import signing_key
from tests.services import need
from tests.upstream import RecordingUpstream

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PORTAL = "login.corp.test"
WIKI, CRM = "wiki.corp.test", "crm.corp.test"
OTHER, TOOLS = "app.other.test", "tools.other.test"
PASSWORD = USERS["alice"][0]
GREETING = re.compile(r'id="user">([^<]*)<')


# -- helpers: a gateway for corp.test, and a client that resolves every name to loopback -----


class Loopback(httpx.HTTPTransport):
    """Connects every URL to 127.0.0.1 at its port; the Host header keeps the name."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        # httpx sets response.request back to `request`: cookies are judged by the real name
        return super().handle_request(inner)


def corp_routes(app: str, site: str) -> str:
    """A public catch-all, two host routes under corp.test and two outside it."""
    hosts = {"wiki": WIKI, "crm": CRM, "other": OTHER, "tools": TOOLS}
    routes = f'[[routes]]\nname = "site"\npath = "/"\nupstream = "{site}"\nauth = "public"\n'
    for name, host in hosts.items():
        routes += (
            f'\n[[routes]]\nname = "{name}"\npath = "/"\nhost = "{host}"\n'
            f'upstream = "{app}"\nauth = "required"\n'
        )
    return routes


def corp_gateway(directory: Path, app: str, site: str, public_url: str = "") -> Gateway:
    """A gateway for corp.test (strict revocation); public_url defaults to the portal over http."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    public = public_url or f"http://{PORTAL}:{port}"
    secure = "true" if public.startswith("https://") else "false"
    extra = f"""
        [server]
        public_url = "{public}"

        [session]
        domain = "corp.test"
        secure = {secure}
        revocation = "strict"

        [audit]
        file = "audit.log"
        """
    config = write_config(directory, port, corp_routes(app, site), extra)
    add_users(directory / "users.toml")
    return start_gateway(config, port)


def at(gw: Gateway, host: str, path: str = "/") -> str:
    """The URL of `path` on `host`, at the gateway's port."""
    return f"http://{host}:{gw.port}{path}"


def browser_client() -> httpx.Client:
    """A cookie-keeping client that navigates like a browser (Accept: text/html)."""
    return httpx.Client(
        transport=Loopback(),
        follow_redirects=False,
        trust_env=False,
        headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
        timeout=10.0,
    )


def csrf_of(page: str) -> str:
    """The CSRF token of a sign-in form."""
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def hidden_next(page: str) -> str:
    """The `next` the sign-in form carries, unescaped."""
    return html.unescape(re.search(r'name="next" value="([^"]*)"', page).group(1))


def form_sign_in(gw: Gateway, client: httpx.Client, next_target: str | None) -> httpx.Response:
    """The sign-in form on the portal, filled in and sent: the 303 it answers."""
    params = {"next": next_target} if next_target is not None else {}
    page = client.get(at(gw, PORTAL, "/.auth/login"), params=params)
    assert page.status_code == 200, page.text
    response = client.post(
        at(gw, PORTAL, "/.auth/login"),
        data={
            "username": "alice",
            "password": PASSWORD,
            "csrf": csrf_of(page.text),
            "next": hidden_next(page.text),
        },
    )
    assert response.status_code == 303, response.text
    return response


def json_sign_in(gw: Gateway, client: httpx.Client, user: str = "alice") -> None:
    """Sign in at the portal with JSON: the client holds the domain cookie after."""
    response = client.post(
        at(gw, PORTAL, "/.auth/login"), json={"username": user, "password": USERS[user][0]}
    )
    assert response.status_code == 200, response.text


def follow(client: httpx.Client, response: httpx.Response, limit: int = 10) -> httpx.Response:
    """Follow 30x answers as a browser would (GET), up to `limit` hops."""
    for _ in range(limit):
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        response = client.get(response.headers["location"])
    raise AssertionError(f"more than {limit} redirects, last to {response.headers['location']}")


def greeted(response: httpx.Response) -> str | None:
    """The user the legacy app greets on this page, or None."""
    found = GREETING.search(response.text) if response.status_code == 200 else None
    return found.group(1) if found else None


def me(gw: Gateway, client: httpx.Client, host: str) -> httpx.Response:
    return client.get(at(gw, host, "/.auth/me"), headers={"accept": "application/json"})


def cookie_header(name: str, value: str) -> dict[str, str]:
    return {"cookie": f"{name}={value}"}


def set_cookies(response: httpx.Response, name: str = "gw_session") -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith(name + "=")]


def token_of(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def attrs_of(set_cookie: str) -> dict[str, str]:
    out = {}
    for part in set_cookie.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        out[key.lower()] = value
    return out


class HandoffSteps:
    """The hand-off to app.other.test, one hop at a time, from a browser signed in at the portal."""

    def __init__(self, gw: Gateway, client: httpx.Client, host: str = OTHER) -> None:
        self.gw, self.client, self.host = gw, client, host
        # the portal, asked for a page on a host its cookie does not reach
        target = quote(at(gw, host, "/page?x=1"), safe="")
        first = client.get(at(gw, PORTAL, f"/.auth/login?next={target}"))
        assert first.status_code == 303
        assert first.headers["location"] == at(gw, host, "/.auth/handoff?next=%2Fpage%3Fx%3D1")
        # that host sets its state cookie and sends the browser back to the portal
        start = client.get(first.headers["location"])
        assert start.status_code == 303, start.text
        self.state = start.cookies["gw_session_handoff"]
        portal = urlsplit(start.headers["location"])
        assert portal.netloc == f"{PORTAL}:{gw.port}" and portal.path == "/.auth/login"
        # the portal mints the code for that host and session
        minted = client.get(start.headers["location"])
        assert minted.status_code == 303, minted.text
        self.redeem_url = minted.headers["location"]
        assert self.redeem_url.startswith(at(gw, host, "/.auth/handoff?code="))
        self.code = parse_qs(urlsplit(self.redeem_url).query)["code"][0]

    def redeem(
        self, url: str | None = None, host: str | None = None, state: str | None = None
    ) -> httpx.Response:
        """The trade: the code (on `host`, with the `state` cookie) for a host cookie."""
        url = url or self.redeem_url
        if host is not None:
            url = url.replace(f"//{self.host}:", f"//{host}:")
        headers = {"accept": "application/json"}
        if state is not None or self.state:
            headers["cookie"] = f"gw_session_handoff={state if state is not None else self.state}"
        # a fresh client: only the cookies named here are sent
        with browser_client() as fresh:
            return fresh.get(url, headers=headers)


def forged_code(gw: Gateway, code: str, **override: object) -> str:
    """`code` re-signed with the gateway's own key after changing some claims."""
    payload = jwt.decode(code, options={"verify_signature": False})
    payload.update(override)
    key = signing_key(gw)
    return jwt.encode(
        payload,
        key.private,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": "gateway-handoff+jwt"},
    )


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_app() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo", "legacy", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def corp(
    tmp_path_factory: pytest.TempPathFactory, legacy_app: int, upstream: RecordingUpstream
) -> Iterator[Gateway]:
    gateway = corp_gateway(
        tmp_path_factory.mktemp("corp"), f"http://127.0.0.1:{legacy_app}", upstream.url
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def secure_corp(
    tmp_path_factory: pytest.TempPathFactory, legacy_app: int, upstream: RecordingUpstream
) -> Iterator[Gateway]:
    gateway = corp_gateway(
        tmp_path_factory.mktemp("secure-corp"),
        f"http://127.0.0.1:{legacy_app}",
        upstream.url,
        public_url=f"https://{PORTAL}",
    )
    yield gateway
    gateway.stop()


# -- config --------------------------------------------------------------------------------

ROUTE = {"name": "site", "path": "/", "upstream": "http://127.0.0.1:9"}
BAD_DOMAINS = [
    (".corp.test", "starts with a dot"),
    ("test", "single label"),
    ("corp.test.", "not a DNS name"),
    ("corp.test:8443", "not a DNS name"),
    ("https://corp.test", "not a DNS name"),
    ("corp test", "not a DNS name"),
    ("-corp.test", "not a DNS name"),
    ("corp..test", "not a DNS name"),
    ("bücher.test", "not ASCII"),
    ("10.0.0.1", "IP address"),
    (5, "must be a string"),
]


def _config(domain: object, public_url: str = "https://login.corp.test") -> list[str]:
    doc = {
        "server": {"public_url": public_url},
        "session": {"domain": domain},
        "routes": [dict(ROUTE)],
    }
    try:
        build_config(doc, Path("."), env={})
    except ConfigError as exc:
        return exc.errors
    return []


@pytest.mark.parametrize(("domain", "why"), BAD_DOMAINS, ids=[str(d) for d, _ in BAD_DOMAINS])
def test_a_bad_cookie_domain_is_refused_naming_the_field(domain: object, why: str) -> None:
    errors = _config(domain)
    assert len(errors) == 1 and errors[0].startswith("session.domain: "), errors
    assert why in errors[0]


@pytest.mark.parametrize(
    ("public_url", "ok"),
    [
        ("https://login.corp.test", True),
        ("https://corp.test:8443", True),
        ("https://login.corp.test.", True),
        ("https://login.other.test", False),
        ("https://evilcorp.test", False),
        ("http://localhost:8000", False),
    ],
)
def test_public_url_must_be_on_the_cookie_domain(public_url: str, ok: bool) -> None:
    errors = _config("corp.test", public_url)
    assert (not errors) == ok, errors
    if not ok:
        assert errors[0].startswith("session.domain: 'corp.test' does not cover server.public_url")


def test_a_cookie_domain_is_kept_in_lower_case_and_renames_the_cookie(tmp_path: Path) -> None:
    doc = {
        "server": {"public_url": "https://login.corp.test"},
        "session": {"domain": "Corp.Test"},
        "routes": [dict(ROUTE)],
    }
    config = build_config(doc, tmp_path, env={})
    assert config.session.domain == "corp.test"
    assert config.cookie_name == "__Secure-gw_session"
    del doc["session"]
    assert build_config(doc, tmp_path, env={}).cookie_name == "__Host-gw_session"


# -- the domain cookie ---------------------------------------------------------------------


def test_the_cookie_takes_the_domain_and_the_secure_prefix(secure_corp: Gateway) -> None:
    with browser_client() as client:
        response = client.post(
            f"http://127.0.0.1:{secure_corp.port}/.auth/login",
            json={"username": "alice", "password": PASSWORD},
            headers={"host": PORTAL},
        )
    assert response.status_code == 200, response.text
    ours = set_cookies(response, "__Secure-gw_session")
    assert len(ours) == 1, response.headers.get_list("set-cookie")
    attrs = attrs_of(ours[0])
    assert attrs["domain"] == "corp.test" and attrs["path"] == "/"
    assert {"secure", "httponly"} <= set(attrs) and attrs["samesite"] == "Lax"
    assert not set_cookies(response, "__Host-gw_session")


def test_one_sign_in_reaches_every_host_under_the_domain(corp: Gateway) -> None:
    with browser_client() as client:
        landed = follow(client, form_sign_in(corp, client, at(corp, WIKI, "/page")))
        assert str(landed.url) == at(corp, WIKI, "/page")
        assert greeted(landed) == "alice"
        assert greeted(client.get(at(corp, CRM, "/reports"))) == "alice"
        sids = {me(corp, client, host).json()["sid"] for host in (PORTAL, WIKI, CRM)}
        assert len(sids) == 1
        # outside the domain the cookie is not sent: that host asks to sign in
        refused = client.get(at(corp, OTHER, "/page"))
        assert refused.status_code == 302


def test_a_signed_in_browser_sent_to_the_portal_goes_straight_back(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        target = at(corp, CRM, "/x?y=1")
        response = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": target})
        assert response.status_code == 303 and response.headers["location"] == target
        # a hostile next is no reason to leave: the form, with next = /
        response = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": "http://e.test/"})
        assert response.status_code == 200 and hidden_next(response.text) == "/"


# -- the hand-off --------------------------------------------------------------------------


def test_the_hand_off_gives_another_domain_a_cookie_of_the_same_session(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        portal_sid = me(corp, client, PORTAL).json()["sid"]
        steps = HandoffSteps(corp, client)
        redeemed = client.get(steps.redeem_url)
        assert redeemed.status_code == 303, redeemed.text
        assert redeemed.headers["location"] == at(corp, OTHER, "/page?x=1")
        host_cookie = set_cookies(redeemed)
        assert len(host_cookie) == 1 and "domain" not in attrs_of(host_cookie[0])
        landed = client.get(redeemed.headers["location"])
        assert greeted(landed) == "alice"
        assert me(corp, client, OTHER).json()["sid"] == portal_sid
        # the code is not a session token, and a session token is not a code
        code_as_cookie = client.get(
            at(corp, TOOLS, "/.auth/me"), headers=cookie_header("gw_session", steps.code)
        )
        assert code_as_cookie.status_code == 401
        token = token_of(host_cookie[0])
        as_code = steps.redeem(steps.redeem_url.replace(steps.code, token))
        assert as_code.status_code == 400 and as_code.json()["error"] == "handoff_invalid"


def test_signing_in_with_a_next_on_another_domain_ends_there(corp: Gateway) -> None:
    with browser_client() as client:
        response = form_sign_in(corp, client, at(corp, OTHER, "/welcome"))
        assert response.headers["location"] == at(corp, OTHER, "/.auth/handoff?next=%2Fwelcome")
        landed = follow(client, response)
        assert str(landed.url) == at(corp, OTHER, "/welcome")
        assert greeted(landed) == "alice"


def test_a_replayed_code_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        steps = HandoffSteps(corp, client)
        assert steps.redeem().status_code == 303
        # the same code with the same state cookie: only the single-use mark stops it
        replay = steps.redeem()
        assert replay.status_code == 403 and replay.json()["error"] == "handoff_used"
        assert not set_cookies(replay)
        sid = me(corp, client, PORTAL).json()["sid"]
    # the trade and the refused replay are audit events; the code itself is in neither
    log = (corp.directory / "audit.log").read_text()
    assert steps.code not in log
    seen = [json.loads(line) for line in log.splitlines()]
    traded = [e for e in seen if e["event"] == "session.handoff" and e.get("session") == sid]
    assert len(traded) == 1 and traded[0]["host"] == OTHER and traded[0]["user"] == "alice"
    refused = [e for e in seen if e["event"] == "handoff.refused"]
    assert refused and refused[-1]["reason"] == "handoff_used"
    assert refused[-1]["host"] == OTHER


def test_an_expired_code_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        steps = HandoffSteps(corp, client)
        now = int(time.time())
        old = forged_code(corp, steps.code, iat=now - 40, nbf=now - 40, exp=now - 10, jti="old-1")
        refused = steps.redeem(steps.redeem_url.replace(steps.code, old))
        assert refused.status_code == 403 and refused.json()["error"] == "handoff_expired"
        # the same forgery with fresh times is accepted: only the expiry refused it
        fresh = forged_code(corp, steps.code, jti="fresh-1")
        assert steps.redeem(steps.redeem_url.replace(steps.code, fresh)).status_code == 303
        # and a code may not be minted to live longer than 30 s
        long = forged_code(corp, steps.code, exp=now + 300, jti="long-1")
        refused = steps.redeem(steps.redeem_url.replace(steps.code, long))
        assert refused.status_code == 400 and refused.json()["error"] == "handoff_invalid"


def test_a_code_for_another_host_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        steps = HandoffSteps(corp, client)
        for host in (TOOLS, WIKI):
            refused = steps.redeem(host=host)
            assert refused.status_code == 403, host
            assert refused.json()["error"] == "handoff_wrong_host"
        # refused there, it was never counted: its own host still takes it
        assert steps.redeem().status_code == 303


def test_a_code_after_sign_out_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        steps = HandoffSteps(corp, client)
        out = client.post(at(corp, PORTAL, "/.auth/logout"), headers={"accept": "application/json"})
        assert out.status_code == 204
        refused = steps.redeem()
        assert refused.status_code == 403 and refused.json()["error"] == "handoff_session_ended"


def test_a_code_in_another_browser_is_refused(corp: Gateway) -> None:
    """Login CSRF: a code of the attacker's own session, opened in the victim's browser."""
    with browser_client() as attacker:
        json_sign_in(corp, attacker)
        steps = HandoffSteps(corp, attacker)
    for state in ("", "x" * 43):
        refused = steps.redeem(state=state)
        assert refused.status_code == 403 and refused.json()["error"] == "handoff_state"
    with browser_client() as victim:
        page = victim.get(steps.redeem_url)
        assert page.status_code == 403 and "another browser" in page.text
        assert not set_cookies(page)
        assert me(corp, victim, OTHER).status_code == 401


def test_a_forged_or_broken_code_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        steps = HandoffSteps(corp, client)
        header, body, signature = steps.code.split(".")
        cases = {
            "truncated": steps.code[:-3],
            "bad signature": f"{header}.{body}.{signature[::-1]}",
            "not a jwt": "abc",
            "another audience": forged_code(corp, steps.code, aud=f"http://{PORTAL}:{corp.port}"),
            # signed with our key: a NaN exp compares false with every clock (never expires)
            "NaN exp": forged_code(corp, steps.code, exp=float("nan")),
            "NaN iat": forged_code(corp, steps.code, iat=float("nan")),
            "line break in sub": forged_code(corp, steps.code, sub="alice\r\nX-Injected: 1"),
        }
        for why, code in cases.items():
            refused = steps.redeem(steps.redeem_url.replace(steps.code, quote(code, safe="")))
            assert refused.status_code == 400, why
            assert refused.json()["error"] == "handoff_invalid", why


def test_the_hand_off_start_serves_only_route_hosts(corp: Gateway) -> None:
    with browser_client() as client:
        refused = client.get(
            at(corp, "evil.test", "/.auth/handoff?next=/x"), headers={"accept": "application/json"}
        )
        assert refused.status_code == 400 and refused.json()["error"] == "handoff_host"
        # a hostile next on a route host becomes / there
        start = client.get(at(corp, OTHER, "/.auth/handoff"), params={"next": "//evil.test/"})
        back = parse_qs(urlsplit(start.headers["location"]).query)["next"][0]
        assert back == at(corp, OTHER, "/")


# -- sign-out ends the session on every host -------------------------------------------------


def test_sign_out_on_any_host_ends_the_session_everywhere(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        domain_cookie = client.cookies.get("gw_session", domain=".corp.test")
        steps = HandoffSteps(corp, client)
        redeemed = client.get(steps.redeem_url)
        host_cookie = token_of(set_cookies(redeemed)[0])
        assert (
            greeted(client.get(at(corp, WIKI))) == greeted(client.get(at(corp, OTHER))) == "alice"
        )
        # sign out on the other domain, from its own page (Origin: that host)
        out = client.post(
            at(corp, OTHER, "/.auth/logout"), headers={"origin": f"http://{OTHER}:{corp.port}"}
        )
        assert out.status_code == 303, out.text
        clear = set_cookies(out)
        assert len(clear) == 1 and "domain" not in attrs_of(clear[0])
    # every host refuses what the browser held: /me says 401, a page sends it to sign in
    held = [(host, domain_cookie) for host in (PORTAL, WIKI, CRM)] + [(OTHER, host_cookie)]
    for host, token in held:
        with browser_client() as old:
            cookie = cookie_header("gw_session", token)
            response = old.get(
                at(corp, host, "/.auth/me"), headers={"accept": "application/json", **cookie}
            )
            assert response.status_code == 401, host
            if host != PORTAL:
                assert old.get(at(corp, host, "/page"), headers=cookie).status_code == 302, host


def test_sign_out_from_a_page_of_another_site_is_refused(corp: Gateway) -> None:
    with browser_client() as client:
        json_sign_in(corp, client)
        out = client.post(at(corp, WIKI, "/.auth/logout"), headers={"origin": "http://evil.test"})
        assert out.status_code == 403
        assert me(corp, client, WIKI).status_code == 200


# -- `next` carrying the host ------------------------------------------------------------------


def test_an_unsigned_browser_on_a_host_route_is_sent_to_sign_in_with_the_full_url(
    corp: Gateway,
) -> None:
    with browser_client() as client:
        response = client.get(at(corp, CRM, "/page?x=1"))
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert (location.netloc, location.path) == (f"{PORTAL}:{corp.port}", "/.auth/login")
    assert parse_qs(location.query)["next"] == [at(corp, CRM, "/page?x=1")]


# -- Chromium ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium(corp: Gateway) -> Iterator[object]:
    need("chromium", CHROMIUM.exists(), f"no browser at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    names = (PORTAL, WIKI, CRM, OTHER, TOOLS)
    # every URL carries the gateway's port: the names only need to resolve to loopback
    rules = ", ".join(f"MAP {name} 127.0.0.1" for name in names)
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--host-resolver-rules={rules}",
    ]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=args, headless=True
        )
        yield browser
        browser.close()


def _sign_in_page(page: object, shot: Path | None = None) -> None:
    from playwright.sync_api import expect

    expect(page).to_have_title("Sign in")
    expect(page.get_by_label("Username")).to_be_focused()
    if shot is not None:
        page.screenshot(path=str(shot))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def test_chromium_signs_in_once_for_three_hosts_and_signs_out_everywhere(
    chromium, corp: Gateway
) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1024, "height": 700})
    context.set_default_timeout(10_000)
    page = context.new_page()
    wiki, crm, other = at(corp, WIKI, "/page"), at(corp, CRM, "/reports"), at(corp, OTHER, "/app")
    try:
        # the wiki's "sign in" link: the portal, with the page to come back to
        page.goto(at(corp, PORTAL, f"/.auth/login?next={quote(wiki, safe='')}"))
        expect(page.locator(".sub")).to_have_text(f"to continue to {WIKI}:{corp.port}")
        _sign_in_page(page, ARTIFACTS / "multihost-login.png")
        page.wait_for_url(wiki)
        expect(page.locator("#user")).to_have_text("alice")
        # one sign-in: the crm, another host under corp.test, knows the browser already
        page.goto(crm)
        expect(page.locator("#user")).to_have_text("alice")
        cookies = {(c["name"], c["domain"]) for c in context.cookies()}
        assert ("gw_session", ".corp.test") in cookies
        # app.other.test, another domain: the portal hands the session over, no password
        page.goto(at(corp, PORTAL, f"/.auth/login?next={quote(other, safe='')}"))
        page.wait_for_url(other)
        expect(page.locator("#user")).to_have_text("alice")
        jar = {(c["name"], c["domain"]): c["value"] for c in context.cookies()}
        assert ("gw_session", OTHER) in jar
        page.screenshot(path=str(ARTIFACTS / "multihost-other.png"))
        sids = set()
        for host in (WIKI, CRM, OTHER):
            page.goto(at(corp, host, "/.auth/me"))
            sids.add(re.search(r'"sid":\s*"([^"]+)"', page.locator("body").inner_text()).group(1))
        assert len(sids) == 1

        # sign out on the crm with the app's own button
        page.goto(crm)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/.auth/login")
        assert ("gw_session", ".corp.test") not in {
            (c["name"], c["domain"]) for c in context.cookies()
        }
        # every other host refuses what the browser held: sent to sign in again
        for url in (wiki, other):
            page.goto(url)
            assert urlsplit(page.url).path == "/.auth/login", url
    finally:
        context.close()
    for (name, domain), token in jar.items():
        if name != "gw_session":
            continue
        for host in (WIKI, CRM, OTHER):
            with browser_client() as old:
                refused = old.get(at(corp, host, "/page"), headers=cookie_header(name, token))
                assert refused.status_code == 302, (domain, host)


def test_chromium_signs_in_straight_into_another_domain(chromium, corp: Gateway) -> None:
    """The form's redirect chain (portal, hand-off, portal, hand-off, page) passes its CSP."""
    from playwright.sync_api import expect

    context = chromium.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        other = at(corp, OTHER, "/welcome?from=portal")
        page.goto(at(corp, PORTAL, f"/.auth/login?next={quote(other, safe='')}"))
        _sign_in_page(page)
        page.wait_for_url(other)
        expect(page.locator("#user")).to_have_text("alice")
        names = {(c["name"], c["domain"]) for c in context.cookies()}
        assert {("gw_session", ".corp.test"), ("gw_session", OTHER)} <= names
        assert not any(name.endswith("_handoff") for name, _ in names)
    finally:
        context.close()


def test_chromium_lands_back_on_the_host_route_it_started_from(chromium, corp: Gateway) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context()
    context.set_default_timeout(5_000)
    page = context.new_page()
    try:
        crm, other = at(corp, CRM, "/page?x=1"), at(corp, OTHER, "/page")
        page.goto(crm)
        _sign_in_page(page)
        page.wait_for_url(crm)
        expect(page.locator("#user")).to_have_text("alice")
        page.goto(other)
        page.wait_for_url(other)
        expect(page.locator("#user")).to_have_text("alice")
    finally:
        context.close()
