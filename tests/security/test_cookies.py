"""Cookies and the session lifecycle: attributes, prefix, fixation, tossing, upstream overwrite."""

from __future__ import annotations

import time

import httpx
import jwt

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
