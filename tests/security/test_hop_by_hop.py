"""Hop-by-hop abuse: a client's Connection list can drop its own headers, never the gateway's."""

from __future__ import annotations

import pytest

from tests.security.attack import only, raw, request, with_cookie


def test_connection_naming_the_user_header_does_not_drop_our_identity(gw, upstream, alice_token):
    token = alice_token
    headers = [("Connection", "close, X-User-Id, X-User-Roles"), with_cookie(gw, token)]
    response = request(gw, "GET", "/app/x", headers)
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-user-id") == ["alice"]
    assert rec.header("x-user-roles") == ["staff"]


def test_connection_naming_the_assertion_header_does_not_drop_it(gw, upstream, alice_token):
    token = alice_token
    response = request(
        gw, "GET", "/app/x", [("Connection", "X-Gateway-Assertion"), with_cookie(gw, token)]
    )
    assert response.status == 200
    assert len(only(upstream).header("x-gateway-assertion")) == 1


@pytest.mark.parametrize(
    "named",
    ["X-Forwarded-For", "x_forwarded_for", "X-Forwarded-Proto", "X-Request-Id"],
    ids=lambda n: f"naming {n}",
)
def test_connection_naming_forwarded_headers_does_not_drop_ours(gw, upstream, named):
    response = request(gw, "GET", "/page", [("Connection", named)])
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-forwarded-for") == ["127.0.0.1"]
    assert rec.header("x-forwarded-proto") == ["http"]
    assert len(rec.header("x-request-id")) == 1


def test_headers_the_client_names_in_connection_are_dropped(gw, upstream):
    response = request(gw, "GET", "/page", [("Connection", "X-Custom"), ("X-Custom", "1")])
    assert response.status == 200
    assert "x-custom" not in only(upstream).names()


@pytest.mark.parametrize(
    "name,value",
    [
        ("Keep-Alive", "timeout=600"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-User-Id"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic YWRtaW46YWRtaW4="),
        ("HTTP2-Settings", "AAMAAABkAARAAAAA"),
    ],
    ids=lambda v: v if ":" not in v else "",
)
def test_client_hop_by_hop_headers_are_not_forwarded(gw, upstream, name, value):
    response = request(gw, "GET", "/page", [(name, value)])
    assert response.status == 200
    assert name.lower() not in only(upstream).names()


def test_expect_continue_is_answered_by_the_gateway_not_forwarded(gw, upstream):
    data = (
        f"POST /page HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nExpect: 100-continue\r\n"
        "Content-Length: 3\r\nConnection: close\r\n\r\nabc"
    ).encode()
    response = raw(gw, data)
    assert response.status in (100, 200)
    rec = only(upstream)
    assert "expect" not in rec.names()
    assert rec.body == b"abc"
