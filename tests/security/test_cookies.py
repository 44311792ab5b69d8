"""Cookies and the session lifecycle: attributes, prefix, fixation, tossing, upstream overwrite."""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import ROOT, Gateway, make_gateway
from tests.security.attack import (
    assert_reason,
    fresh_ip,
    login,
    marked,
    nothing_forwarded,
    only,
    request,
    session_cookie,
    with_cookie,
)


def _attrs(set_cookie: str) -> dict[str, str]:
    out = {}
    for part in set_cookie.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        out[key.lower()] = value
    return out


def test_https_public_url_gives_a_host_prefixed_secure_httponly_cookie(trusted_gw, upstream):
    with httpx.Client(base_url=trusted_gw.url, trust_env=False) as client:
        response = client.post(
            "/.auth/login",
            json={"username": "alice", "password": "alice-password-1"},
            headers={"x-forwarded-for": fresh_ip()},
        )
    assert response.status_code == 200
    ours = [c for c in response.headers.get_list("set-cookie") if "gw_session=" in c]
    assert len(ours) == 1 and ours[0].startswith("__Host-gw_session=")
    attrs = _attrs(ours[0])
    assert {"secure", "httponly"} <= set(attrs) and attrs["path"] == "/"
    assert attrs["samesite"] == "Lax" and "domain" not in attrs
    assert not upstream.requests


def test_an_unprefixed_cookie_is_not_read_when_the_prefix_is_in_force(trusted_gw, upstream):
    token = login(trusted_gw, "user1", "user1-password", ip=fresh_ip())
    path = marked("/app/x")
    response = request(trusted_gw, "GET", path, [("Cookie", f"gw_session={token}")])
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(trusted_gw, path, None)  # not our cookie's name: never read


def test_login_issues_a_new_session_not_the_planted_one(gw, upstream):
    # a bob session of this test's own: signing in over it revokes it, and the shared
    # bob_token must stay valid for the tests after this one
    planted_token = login(gw, "bob")
    planted = jwt.decode(planted_token, options={"verify_signature": False})["sid"]
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        response = client.post(
            "/.auth/login",
            json={"username": "alice", "password": "alice-password-1"},
            headers={"cookie": f"gw_session={planted_token}"},
        )
    assert response.status_code == 200
    token = session_cookie(response.headers.get_list("set-cookie"))
    fresh = jwt.decode(token, options={"verify_signature": False})
    assert token != planted_token and fresh["sid"] != planted and fresh["sub"] == "alice"
    assert not upstream.requests


def test_two_session_cookies_in_one_header_are_refused(gw, upstream, alice_token, bob_token):
    cookie = f"gw_session={alice_token}; gw_session={bob_token}"
    path = marked("/app/x")
    response = request(gw, "GET", path, [("Cookie", cookie)])
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, None)  # neither token is read: no one of them is verified


def test_a_tossed_cookie_in_a_second_header_is_refused(gw, upstream, alice_token, bob_token):
    headers = [("Cookie", f"gw_session={alice_token}"), ("Cookie", f"gw_session={bob_token}")]
    path = marked("/admin/x")
    response = request(gw, "GET", path, headers)
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, None)


def test_our_cookie_is_removed_from_the_upstream_cookie_header_in_every_prefix(
    gw, upstream, alice_token
):
    cookie = (
        f"theme=dark; gw_session={alice_token}; __Host-gw_session=x; __Secure-gw_session=y; lang=en"
    )
    response = request(gw, "GET", "/app/x", [("Cookie", cookie)])
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("cookie") == ["theme=dark; lang=en"]
    assert all(alice_token not in v for _, v in rec.headers)


def test_an_upstream_cannot_set_or_clear_our_cookie(gw, upstream, alice_token):
    response = request(gw, "GET", "/cookies/x", [with_cookie(gw, alice_token)])
    assert response.status == 200
    set_cookies = response.header("set-cookie")
    names = [c.split("=", 1)[0] for c in set_cookies]
    assert names == ["a", "b", "c"]
    assert len(only(upstream).header("x-user-id")) == 1


def test_a_logged_out_token_is_refused_under_strict_revocation(trusted_gw, upstream):
    ip = fresh_ip()
    token = login(trusted_gw, "user2", "user2-password", ip=ip)
    cookie = ("Cookie", f"__Host-gw_session={token}")
    assert request(trusted_gw, "GET", "/app/x", [cookie]).status == 200
    upstream.clear()
    logout = request(trusted_gw, "POST", "/.auth/logout", [cookie, ("Accept", "application/json")])
    assert logout.status == 204
    assert any(c.startswith("__Host-gw_session=;") for c in logout.header("set-cookie"))
    time.sleep(1.1)  # strict mode may trust a good session for one second
    path = marked("/app/x")
    response = request(trusted_gw, "GET", path, [cookie])
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(trusted_gw, path, "revoked")


def test_a_cookie_with_a_different_case_name_is_not_ours(gw, upstream, alice_token):
    path = marked("/app/x")
    response = request(gw, "GET", path, [("Cookie", f"GW_SESSION={alice_token}")])
    assert response.status == 401
    assert nothing_forwarded(upstream)
    assert_reason(gw, path, None)


# -- every cookie the gateway sets, not the session cookie alone --------------------------------

# the gateway's cookies: `[session] cookie` + a suffix, in every prefix spelling a browser keeps
GATEWAY_COOKIES = [
    prefix + "gw_session" + suffix
    for suffix in ("", "_oidc", "_oidc_retry", "_mfa", "_csrf", "_handoff")
    for prefix in ("", "__Host-", "__Secure-")
]


class _HostileApp(BaseHTTPRequestHandler):
    """An app behind the gateway that plants (/plant) or clears (/clear) every gateway cookie,
    in the case it is named and upper-cased, beside a cookie of its own; it answers the Cookie
    header it received."""

    def do_GET(self) -> None:
        body = json.dumps({"cookie": self.headers.get_all("cookie") or []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for name in GATEWAY_COOKIES:
            for spelling in (name, name.upper()):
                if self.path.endswith("/clear"):
                    self.send_header("set-cookie", f"{spelling}=; Max-Age=0; Path=/")
                else:
                    self.send_header("set-cookie", f"{spelling}=attackers-handle; Path=/")
        self.send_header("set-cookie", "theme=dark; Path=/")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hostile_gw(tmp_path_factory) -> Iterator[Gateway]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileApp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "hostile"
        path = "/hostile"
        upstream = "http://127.0.0.1:{server.server_port}"
        auth = "required"

        [[routes]]
        name = "hostile-public"
        path = "/public"
        upstream = "http://127.0.0.1:{server.server_port}"
        auth = "public"
        """
    )
    gateway = make_gateway(tmp_path_factory.mktemp("hostile"), routes)
    try:
        yield gateway
    finally:
        gateway.stop()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path", ["/hostile/plant", "/hostile/clear", "/public/plant"])
def test_an_upstream_can_neither_set_nor_clear_any_gateway_cookie(hostile_gw, path):
    # a planted `gw_session_oidc` (the attacker's own flow handle) would sign the victim in as
    # the attacker at the callback; a planted `_mfa`, `_csrf` or `_handoff` is as much ours
    token = login(hostile_gw, "alice")
    response = request(hostile_gw, "GET", path, [("Cookie", f"gw_session={token}")])
    assert response.status == 200
    names = [c.split("=", 1)[0] for c in response.header("set-cookie")]
    assert names == ["theme"]


def test_no_gateway_cookie_reaches_the_upstream(hostile_gw):
    token = login(hostile_gw, "alice")
    theirs = [f"{name}=ours" for name in GATEWAY_COOKIES[1:]]
    cookie = "; ".join(["theme=dark", f"gw_session={token}", *theirs, "lang=en"])
    response = request(hostile_gw, "GET", "/hostile/x", [("Cookie", cookie)])
    assert response.status == 200
    assert json.loads(response.body)["cookie"] == ["theme=dark; lang=en"]


def test_every_cookie_the_gateway_sets_is_one_it_guards():
    """Each cookie name the gateway's code builds from `[session] cookie` is a guarded one."""
    from gateway.core.nexthop import COOKIE_SUFFIXES

    built = set()
    for source in (ROOT / "gateway").rglob("*.py"):
        text = Path(source).read_text()
        built |= set(re.findall(r"(?:cookie_name|session\.cookie) \+ \"(_\w+)\"", text))
    assert built, "no gateway cookie names found: the pattern is out of date"
    assert built <= set(COOKIE_SUFFIXES)
    assert {"_oidc", "_oidc_retry", "_mfa", "_csrf", "_handoff"} <= built
