"""Information leaks: errors name no trace, path or upstream; logs hold no secret; pages are hardened."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.security.attack import BROWSER, nothing_forwarded, request, with_cookie

SECRET_MARKERS = ("Traceback", 'File "', "/work/", "site-packages", "Exception", "127.0.0.1:")


def _clean(text: str, upstream) -> None:
    for marker in (*SECRET_MARKERS, str(upstream.port)):
        assert marker not in text, marker


def test_an_unreachable_upstream_is_a_bare_502(gw, upstream):
    response = request(gw, "GET", "/dead/x")
    assert response.status == 502
    _clean(response.body.decode(), upstream)
    assert "/dead" not in response.body.decode()


def test_a_slow_upstream_is_a_bare_504(gw, upstream):
    response = request(gw, "GET", "/slow/x")
    assert response.status == 504
    _clean(response.body.decode(), upstream)


@pytest.mark.parametrize(
    "method,target,body",
    [
        ("GET", "/a%2fb", b""),
        ("POST", "/.auth/login", b"{not json"),
        ("GET", "/.auth/nope", b""),
        ("POST", "/.auth/login", b"\xff\xfe\x00"),
    ],
    ids=["refused path", "bad JSON", "unknown endpoint", "binary body"],
)
def test_gateway_errors_carry_no_internals(gw, upstream, method, target, body):
    headers = [("Content-Type", "application/json")] if body else []
    response = request(gw, method, target, headers, body=body)
    assert 400 <= response.status < 500
    _clean(response.body.decode("latin-1"), upstream)
    assert nothing_forwarded(upstream)


def test_no_server_banner_is_sent(gw, upstream, alice_token):
    for response in (
        request(gw, "GET", "/page"),
        request(gw, "GET", "/app/x"),
        request(gw, "GET", "/.auth/login"),
    ):
        names = {k.lower() for k, _ in response.headers}
        assert "server" not in names and "x-powered-by" not in names


def test_logs_hold_no_password_token_or_cookie(gw, upstream):
    secret_password = "correct-horse-battery-staple-9"
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        client.post("/.auth/login", json={"username": "alice", "password": secret_password})
        good = client.post(
            "/.auth/login", json={"username": "alice", "password": "alice-password-1"}
        )
        token = good.cookies["gw_session"]
        client.get("/app/x")
        client.get("/app/x", headers={"authorization": f"Bearer {token}"})
    logs = gw.logs()
    assert secret_password not in logs and "alice-password-1" not in logs
    assert token not in logs and token.split(".")[2] not in logs


@pytest.mark.parametrize(
    "target,headers",
    [
        ("/.auth/login", []),
        ("/app/x", list(BROWSER.items())),
        ("/admin/x", [("Accept", "application/json")]),
    ],
    ids=["login page", "login redirect", "401 JSON"],
)
def test_gateway_pages_send_the_security_headers(gw, upstream, target, headers):
    response = request(gw, "GET", target, headers)
    assert response.status in (200, 302, 401)
    assert "no-store" in response.header("cache-control")[0]
    if response.status != 302:
        assert response.header("x-content-type-options") == ["nosniff"]
        assert response.header("referrer-policy")
        csp = response.header("content-security-policy")[0]
        assert "frame-ancestors 'none'" in csp
    assert nothing_forwarded(upstream)


def test_the_forbidden_page_is_hardened_html(gw, upstream, alice_token):
    response = request(gw, "GET", "/admin/x", [with_cookie(gw, alice_token), *BROWSER.items()])
    assert response.status == 403
    assert "frame-ancestors 'none'" in response.header("content-security-policy")[0]
    assert not re.search(rb"<script", response.body, re.I)
    assert nothing_forwarded(upstream)
