"""Path normalization attacks: what is matched is exactly what the upstream receives."""

from __future__ import annotations

import pytest

from tests.security.attack import BROWSER, nothing_forwarded, only, raw, request, with_cookie

# each of these is /admin (required, role admin) in disguise: it must meet that policy
DISGUISED_ADMIN = [
    ("/ADMIN/users", "upper case"),
    ("/Admin/users", "mixed case"),
    ("/page/../admin/users", "dot-dot segment"),
    ("/page/%2e%2e/admin/users", "encoded dot-dot"),
    ("/page/%2E%2E/admin/users", "upper-case encoded dot-dot"),
    ("/page/.%2e/admin/users", "half-encoded dot-dot"),
    ("/./admin/users", "dot segment"),
    ("//admin/users", "repeated slash"),
    ("/admin;jsessionid=x/users", "servlet ; parameter"),
    ("/%61dmin/users", "encoded letter"),
]

REFUSED = [
    ("/admin%2fusers", "encoded slash"),
    ("/page%2F..%2Fadmin", "encoded slash dot-dot"),
    ("/page%5c..%5cadmin", "encoded backslash"),
    ("/page\\..\\admin", "raw backslash"),
    ("/admin%00.html", "encoded NUL"),
    ("/admin%3f.css", "encoded question mark"),
    ("/admin%23.css", "encoded hash"),
    ("/%252e%252e/admin", "double encoding"),
    ("/page/..;/admin", "dot-dot with ; parameter"),
    # servlet stacks read `/;x/admin` as `//admin`, then `/admin`: judged under `/` otherwise
    ("/;/admin/users", "empty segment with ;"),
    ("/;x/admin/users", "empty segment with a ; parameter"),
    ("/;a;b/admin", "empty segment with two ; parameters"),
    ("/%3b/admin/users", "encoded ; as an empty segment"),
    ("/%3bx/admin/users", "encoded ; parameter as an empty segment"),
    ("/page/;/../admin", "empty segment with ; before dot-dot"),
    ("/admin%0d%0aX-User-Id:%20admin", "encoded CRLF"),
    ("/admin%ff", "invalid UTF-8"),
    ("/admin%zz", "invalid percent escape"),
]


@pytest.mark.parametrize("target,why", DISGUISED_ADMIN, ids=[w for _, w in DISGUISED_ADMIN])
def test_a_disguised_admin_path_meets_the_admin_policy(gw, upstream, alice_token, target, why):
    anonymous = request(gw, "GET", target)
    assert anonymous.status == 401, why
    staff = request(gw, "GET", target, [with_cookie(gw, alice_token)])
    assert staff.status == 403, why
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize("target,why", REFUSED, ids=[w for _, w in REFUSED])
def test_an_ambiguous_path_is_refused_before_any_route(gw, upstream, target, why):
    response = request(gw, "GET", target)
    assert response.status == 400, why
    assert nothing_forwarded(upstream)


def test_the_normalized_path_is_what_the_upstream_receives(gw, upstream, bob_token):
    token = bob_token
    response = request(gw, "GET", "//admin/./a/../b//c%20d?x=%2F", [with_cookie(gw, token)])
    assert response.status == 200
    assert only(upstream).target == "/admin/b/c%20d?x=%2F"


def test_strip_prefix_forwards_the_normalized_remainder(gw, upstream, alice_token):
    token = alice_token
    response = request(gw, "GET", "/STRIP/x/../y", [with_cookie(gw, token)])
    assert response.status == 200
    assert only(upstream).target == "/base/y"


def test_absolute_form_target_is_matched_by_its_path_only(gw, upstream):
    response = request(gw, "GET", f"http://127.0.0.1:{gw.port}/admin/users", [])
    assert response.status == 401
    response = request(gw, "GET", "http://evil.example/admin/users", list(BROWSER.items()))
    assert response.status == 302
    assert response.header("location")[0].startswith(f"http://localhost:{gw.port}/.auth/login")
    assert nothing_forwarded(upstream)


def test_absolute_form_on_a_public_route_forwards_origin_form(gw, upstream):
    response = request(gw, "GET", "http://evil.example/page?q=1")
    assert response.status == 200
    assert only(upstream).request_line == b"GET /page?q=1 HTTP/1.1"


@pytest.mark.parametrize(
    "target", ["*", "page", "127.0.0.1:22"], ids=["asterisk", "relative", "authority form"]
)
def test_targets_without_a_leading_slash_are_refused(gw, upstream, target):
    response = request(gw, "GET", target)
    assert response.status == 400
    assert nothing_forwarded(upstream)


def test_raw_non_ascii_byte_in_the_path_is_refused(gw, upstream):
    data = f"GET /admin\xe9 HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n"
    response = raw(gw, data.encode("latin-1"))
    assert response.status == 400
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize("target", ["/;jsessionid=x", "/app/;jsessionid=x", "/app/;x/"])
def test_a_last_empty_segment_with_a_parameter_names_nothing_more_and_passes(
    gw, upstream, bob_token, target
):
    # servlet URL rewriting puts `;jsessionid=` on the root: nothing after it to disguise
    response = request(gw, "GET", target, [with_cookie(gw, bob_token)])
    assert response.status == 200
    assert only(upstream).target == target


@pytest.mark.parametrize("uri", ["/;/admin/users", "/;x/admin/users", "/%3b/admin/users"])
def test_forward_auth_refuses_an_empty_segment_with_a_parameter(trusted_gw, uri):
    # nginx and Caddy hand the app the raw URI: a servlet app reads `/;x/admin` as `/admin`
    response = request(
        trusted_gw,
        "GET",
        "/.auth/verify",
        [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", uri)],
    )
    assert response.status == 403, (response.status, response.body[:200])
    assert not response.header("x-user-id")
