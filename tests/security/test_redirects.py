"""Open redirects and reflected XSS around `next`: only same-origin relative paths survive."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from tests.security.attack import BROWSER, nothing_forwarded, request

OPEN_REDIRECTS = [
    ("https://evil.example/", "absolute URL"),
    ("//evil.example/", "scheme-relative"),
    ("///evil.example/", "triple slash"),
    ("/\\evil.example/", "slash backslash"),
    ("\\/evil.example/", "backslash slash"),
    ("/\t/evil.example/", "tab between slashes"),
    ("/\n/evil.example/", "newline between slashes"),
    (" //evil.example/", "leading space"),
    ("http:evil.example", "scheme without slashes"),
    ("javascript:alert(1)", "javascript URL"),
    ("data:text/html,<script>alert(1)</script>", "data URL"),
    ("@evil.example", "userinfo trick"),
    ("evil.example", "bare host"),
]


def _csrf(client: httpx.Client, next_target: str | None = None) -> tuple[str, str]:
    params = {"next": next_target} if next_target is not None else {}
    page = client.get("/.auth/login", params=params)
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1), page.text


def _sign_in(client: httpx.Client, csrf: str, next_target: str) -> httpx.Response:
    """alice's form sign-in with this `next`."""
    data = {"username": "alice", "password": "alice-password-1", "csrf": csrf, "next": next_target}
    return client.post("/.auth/login", data=data)


@pytest.mark.parametrize("target,why", OPEN_REDIRECTS, ids=[w for _, w in OPEN_REDIRECTS])
def test_an_unsafe_next_sends_the_browser_to_our_root(gw, upstream, target, why):
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        csrf, page = _csrf(client, target)
        assert 'name="next" value="/"' in page, why
        response = _sign_in(client, csrf, target)
    assert response.status_code == 303
    assert response.headers["location"] == f"http://localhost:{gw.port}/"
    assert nothing_forwarded(upstream)


def test_duplicate_next_parameters_cannot_smuggle_an_unsafe_one(gw, upstream):
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        csrf, _ = _csrf(client)
        body = (
            f"username=alice&password=alice-password-1&csrf={csrf}"
            "&next=%2Fapp%2Fok&next=%2F%2Fevil.example"
        )
        response = client.post(
            "/.auth/login",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location in (f"http://localhost:{gw.port}/app/ok", f"http://localhost:{gw.port}/")
    assert nothing_forwarded(upstream)


def test_a_next_with_markup_is_escaped_on_the_login_page(gw, upstream):
    evil = '/x"><script>alert(1)</script>'
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        page = client.get("/.auth/login", params={"next": evil}).text
    assert "<script>alert(1)</script>" not in page
    assert html.escape(evil, quote=True) in page
    assert nothing_forwarded(upstream)


def test_a_username_with_markup_is_escaped_in_the_error_page(gw, upstream):
    evil = '"><img src=x onerror=alert(1)>'
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        csrf, _ = _csrf(client)
        response = client.post(
            "/.auth/login", data={"username": evil, "password": "wrong-one", "csrf": csrf}
        )
    assert response.status_code in (400, 401)
    assert "<img src=x" not in response.text
    assert nothing_forwarded(upstream)


def test_the_login_redirect_encodes_the_original_target(gw, upstream):
    target = '/app/x?q="><script>alert(1)</script>'
    response = request(gw, "GET", target.replace(" ", "%20"), list(BROWSER.items()))
    assert response.status == 302
    location = response.header("location")[0]
    assert location.startswith(f"http://localhost:{gw.port}/.auth/login?next=%2Fapp%2Fx%3Fq%3D")
    assert "<" not in location and '"' not in location
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "target,location",
    [("/Ā/x", "/%C4%80/x"), ("/é?q=ü", "/%C3%A9?q=%C3%BC"), ("/a%20b?c=d&e#f", "/a%20b?c=d&e#f")],
    ids=["beyond latin-1", "latin-1", "escapes and reserved kept"],
)
def test_a_non_ascii_next_is_percent_encoded_in_the_location(gw, upstream, target, location):
    # `/Ā` once failed to encode after the session was made: a 500 and no cookie
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        csrf, _ = _csrf(client, target)
        response = _sign_in(client, csrf, target)
    assert response.status_code == 303
    assert response.headers["location"] == f"http://localhost:{gw.port}{location}"
    assert response.cookies.get("gw_session")
    assert nothing_forwarded(upstream)
