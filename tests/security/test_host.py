"""Host header attacks: every URL the gateway builds comes from public_url, never from Host."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.security.attack import BROWSER, nothing_forwarded, only, raw, request


def _origin(gw) -> str:
    return f"http://localhost:{gw.port}"


@pytest.mark.parametrize(
    "headers,host",
    [
        ([], "evil.example"),
        ([("X-Forwarded-Host", "evil.example")], None),
        ([("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")], None),
        ([("Forwarded", "host=evil.example")], None),
    ],
    ids=["Host", "X-Forwarded-Host", "X-Forwarded-Host and Proto", "Forwarded host"],
)
def test_login_redirect_is_built_from_public_url(gw, upstream, headers, host):
    response = request(gw, "GET", "/app/x", [*BROWSER.items(), *headers], host=host)
    assert response.status == 302
    location = response.header("location")[0]
    assert location.startswith(_origin(gw) + "/.auth/login?next=")
    assert "evil" not in location
    assert nothing_forwarded(upstream)


def test_login_success_redirect_ignores_host(gw, upstream):
    with httpx.Client(base_url=gw.url, trust_env=False, headers={"host": "evil.example"}) as c:
        page = c.get("/.auth/login", params={"next": "/app/x"})
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        response = c.post(
            "/.auth/login",
            data={
                "username": "alice",
                "password": "alice-password-1",
                "csrf": csrf,
                "next": "/app/x",
            },
        )
    assert response.status_code == 303
    assert response.headers["location"] == _origin(gw) + "/app/x"
    assert not upstream.requests


def test_logout_redirect_ignores_host(gw, upstream):
    response = request(gw, "POST", "/.auth/logout", [], host="evil.example")
    assert response.status == 303
    assert response.header("location") == [_origin(gw) + "/.auth/login"]
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "host",
    ["crm.example.com", "CRM.Example.COM", "crm.example.com:80", "crm.example.com."],
    ids=["exact", "case", "with port", "trailing dot"],
)
def test_a_host_route_is_not_escaped_by_spelling_the_host_differently(gw, upstream, host):
    response = request(gw, "GET", "/page", [], host=host)
    assert response.status == 401
    assert nothing_forwarded(upstream)


# the route `ops` is host = "ops.example.com:8443", required, beside the public `/` of no host
@pytest.mark.parametrize(
    "host",
    [
        "ops.example.com:8443",
        "OPS.Example.com:8443",
        "ops.example.com:08443",
        "ops.example.com.:8443",
    ],
    ids=["exact", "case", "leading zero", "trailing dot"],
)
def test_a_host_route_with_a_port_is_not_escaped_by_spelling_the_port_differently(
    gw, upstream, host
):
    response = request(gw, "GET", "/page", [], host=host)
    assert response.status == 401
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "host",
    ["ops.example.com", "ops.example.com:9999", "OPS.example.com.:1"],
    ids=["no port", "another port", "another port, trailing dot"],
)
def test_a_host_route_on_another_port_is_refused_not_passed_to_the_routes_without_a_host(
    gw, upstream, host
):
    # the client writes the port in Host: the public `/` must not be reached by choosing one
    response = request(gw, "GET", "/page", [], host=host)
    assert response.status == 404
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "host",
    ["ops.example.com", "ops.example.com:08443", "ops.example.com.:8443", "ops.example.com:1"],
)
def test_forward_auth_judges_a_host_route_with_a_port_whatever_its_spelling(trusted_gw, host):
    # nginx's $host carries no port; Traefik and Caddy pass the client's Host as written
    response = request(
        trusted_gw,
        "GET",
        "/.auth/verify",
        [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/page"), ("X-Forwarded-Host", host)],
    )
    assert response.status in (401, 403, 404), (response.status, response.body[:200])
    assert not response.header("x-user-id")


def test_duplicate_host_headers_are_refused(gw, upstream):
    data = (
        f"GET /page HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nHost: crm.example.com\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    response = raw(gw, data)
    assert response.status == 400
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "host",
    ["evil.example/path", "user@evil.example", "evil.example x"],
    ids=["path", "userinfo", "space"],
)
def test_a_malformed_host_is_never_passed_on(gw, upstream, host):
    response = request(gw, "GET", "/page", [], host=host)
    if response.status == 200:
        rec = only(upstream)
        assert not any("evil" in v for _, v in rec.headers)
    else:
        assert response.status == 400
        assert nothing_forwarded(upstream)
