"""Cross-site request forgery: an unsafe request with our cookie must come from our own origin."""

from __future__ import annotations

import pytest

from tests.security.attack import nothing_forwarded, only, request, with_cookie
from tests.security.conftest import PARTNER


def _ours(gw) -> str:
    return f"http://localhost:{gw.port}"


CROSS_SITE = [
    ([("Origin", "https://evil.example")], "foreign Origin"),
    ([("Origin", "null")], "null Origin"),
    ([("Referer", "https://evil.example/page")], "foreign Referer without Origin"),
    ([("Origin", "https://evil.example"), ("Referer", "http://localhost/")], "Origin wins"),
    ([("Origin", "http://localhost.evil.example")], "look-alike origin"),
]


@pytest.mark.parametrize("headers,why", CROSS_SITE, ids=[w for _, w in CROSS_SITE])
def test_cross_site_post_with_the_cookie_is_refused(gw, upstream, alice_token, headers, why):
    response = request(gw, "POST", "/app/x", [with_cookie(gw, alice_token), *headers], body=b"a=1")
    assert response.status == 403, why
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_every_unsafe_method_is_guarded(gw, upstream, alice_token, method):
    headers = [with_cookie(gw, alice_token), ("Origin", "https://evil.example")]
    response = request(gw, method, "/app/x", headers)
    assert response.status == 403
    assert nothing_forwarded(upstream)


def test_our_own_origin_may_post(gw, upstream, alice_token):
    headers = [with_cookie(gw, alice_token), ("Origin", _ours(gw))]
    response = request(gw, "POST", "/app/x", headers, body=b"a=1")
    assert response.status == 200
    assert only(upstream).body == b"a=1"


def test_an_allowed_origin_may_post(gw, upstream, alice_token):
    response = request(gw, "POST", "/app/x", [with_cookie(gw, alice_token), ("Origin", PARTNER)])
    assert response.status == 200
    assert only(upstream).method == "POST"


def test_a_bearer_client_is_not_judged_by_origin(gw, upstream, alice_token):
    headers = [("Authorization", f"Bearer {alice_token}"), ("Origin", "https://evil.example")]
    response = request(gw, "POST", "/app/x", headers)
    assert response.status == 200
    assert only(upstream).header("x-user-id") == ["alice"]


def test_a_cross_site_get_is_a_navigation_and_passes(gw, upstream, alice_token):
    headers = [with_cookie(gw, alice_token), ("Origin", "https://evil.example")]
    response = request(gw, "GET", "/app/x", headers)
    assert response.status == 200
    assert only(upstream).method == "GET"


def test_cross_site_logout_is_refused(gw, upstream, alice_token):
    headers = [with_cookie(gw, alice_token), ("Origin", "https://evil.example")]
    response = request(gw, "POST", "/.auth/logout", headers)
    assert response.status == 403
    assert response.header("set-cookie") == []
    assert request(gw, "GET", "/app/x", [with_cookie(gw, alice_token)]).status == 200
