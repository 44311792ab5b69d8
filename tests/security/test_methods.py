"""Method rules: the method the policy judged is the method the upstream gets."""

from __future__ import annotations

import pytest

from tests.security.attack import nothing_forwarded, only, raw, request, with_cookie

OVERRIDES = [
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "x_http_method_override",
]


@pytest.mark.parametrize("name", OVERRIDES, ids=lambda n: f"override via {n}")
def test_method_override_headers_never_reach_a_get_only_route(gw, upstream, alice_token, name):
    response = request(
        gw, "GET", "/readonly/item", [(name, "DELETE"), with_cookie(gw, alice_token)]
    )
    assert response.status == 200
    rec = only(upstream)
    assert rec.method == "GET"
    assert not {k.lower().replace("_", "-") for k in rec.names()} & {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "PATCH", "PROPFIND"])
def test_a_method_the_route_does_not_list_is_405(gw, upstream, alice_token, method):
    response = request(gw, method, "/readonly/item", [with_cookie(gw, alice_token)])
    assert response.status == 405
    assert response.header("allow") == ["GET, HEAD"]
    assert nothing_forwarded(upstream)


def test_a_lower_case_method_is_not_read_as_get(gw, upstream, alice_token):
    response = request(gw, "get", "/readonly/item", [with_cookie(gw, alice_token)])
    assert response.status in (400, 405)
    assert nothing_forwarded(upstream)


def test_connect_is_refused(gw, upstream):
    data = f"CONNECT 127.0.0.1:{gw.port} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
    response = raw(gw, data)
    assert response.status == 400
    assert nothing_forwarded(upstream)


def test_head_on_a_required_route_is_refused_without_reaching_the_upstream(gw, upstream):
    data = f"HEAD /app/x HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nConnection: close\r\n\r\n"
    response = raw(gw, data.encode())
    assert response.status == 401
    assert nothing_forwarded(upstream)


def test_trace_never_echoes_the_session_cookie_or_token(gw, upstream, alice_token):
    headers = [with_cookie(gw, alice_token), ("Authorization", f"Bearer {alice_token}")]
    response = request(gw, "TRACE", "/page", headers)
    assert alice_token.encode() not in response.body
    if response.status == 200:
        rec = only(upstream)
        assert "cookie" not in rec.names() and "authorization" not in rec.names()
    else:
        assert nothing_forwarded(upstream)
