"""The gateway end to end: a real gateway process in front of a recording upstream."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest import Gateway
from tests.upstream import RecordingUpstream

BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def echo(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def headers_of(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo(response)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# -- login ------------------------------------------------------------------------------


def test_json_login_sets_a_cookie_and_me_reports_the_user(gateway: Gateway):
    client = gateway.client()
    response = client.post(
        "/.auth/login", json={"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["sub"] == "alice" and body["roles"] == ["staff"] and body["sid"]
    me = client.get("/.auth/me").json()
    assert me["sub"] == "alice" and me["roles"] == ["staff"] and me["sid"] == body["sid"]


def test_login_cookie_attributes(gateway: Gateway):
    response = gateway.client().post(
        "/.auth/login", json={"username": "alice", "password": "alice-password-1"}
    )
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith("gw_session=")]
    assert len(cookies) == 1
    attrs = [a.strip().lower() for a in cookies[0].split(";")[1:]]
    assert "httponly" in attrs and "path=/" in attrs and "samesite=lax" in attrs
    # public_url is http://localhost: Secure would make the browser drop it
    assert "secure" not in attrs
    assert not any(a.startswith("domain") for a in attrs)


def test_form_login_with_csrf_token_redirects_to_next(gateway: Gateway):
    client = gateway.client()
    page = client.get("/.auth/login", params={"next": "/app/page?x=1"})
    assert page.status_code == 200
    assert "<form" in page.text and 'name="password"' in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert 'value="/app/page?x=1"' in page.text
    response = client.post(
        "/.auth/login",
        data={
            "username": "alice",
            "password": "alice-password-1",
            "csrf": csrf,
            "next": "/app/page?x=1",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"http://localhost:{gateway.port}/app/page?x=1"
    assert headers_of(client.get("/app/page"))["x-user-id"] == ["alice"]


def test_form_login_without_csrf_token_is_refused(gateway: Gateway):
    response = gateway.client().post(
        "/.auth/login", data={"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 403
    assert "gw_session=" not in response.headers.get("set-cookie", "")


def test_wrong_password_and_unknown_user_get_the_same_answer(gateway: Gateway):
    client = gateway.client()
    wrong = client.post("/.auth/login", json={"username": "alice", "password": "nope-nope"})
    unknown = client.post("/.auth/login", json={"username": "nobody-here", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_form_login_error_is_shown_on_the_page(gateway: Gateway):
    client = gateway.client()
    page = client.get("/.auth/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/.auth/login", data={"username": "alice", "password": "wrong", "csrf": csrf}
    )
    assert response.status_code == 401
    assert "Wrong username or password" in response.text
    assert 'value="alice"' in response.text


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "",
    ],
    ids=[
        "absolute",
        "scheme-relative",
        "slash-backslash",
        "backslashes",
        "tab",
        "javascript",
        "scheme-only",
        "empty",
    ],
)
def test_unsafe_next_falls_back_to_root(gateway: Gateway, target: str):
    client = gateway.client()
    response = client.post(
        "/.auth/login",
        json={"username": "alice", "password": "alice-password-1", "next": target},
        headers={"accept": "text/html", "content-type": "application/json"},
    )
    # JSON login answers 200; the form flow is what redirects: use it
    page = client.get("/.auth/login", params={"next": target})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert 'name="next" value="/"' in page.text
    response = client.post(
        "/.auth/login",
        data={"username": "alice", "password": "alice-password-1", "csrf": csrf, "next": target},
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"http://localhost:{gateway.port}/"


def test_logout_clears_the_cookie_and_the_session(gateway: Gateway):
    client = gateway.login("alice")
    response = client.post("/.auth/logout", headers={"accept": "application/json"})
    assert response.status_code == 204
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert client.get("/.auth/me").status_code == 401


def test_health(gateway: Gateway):
    assert gateway.client().get("/.auth/health").json() == {"status": "ok"}
    assert gateway.client().get("/.auth/ready").json()["status"] == "ready"


# -- policy -----------------------------------------------------------------------------


def test_public_route_forwards_anonymous_without_identity(
    gateway: Gateway, upstream: RecordingUpstream
):
    seen = headers_of(gateway.client().get("/hello"))
    assert (
        "x-user-id" not in seen and "x-user-roles" not in seen and "x-gateway-assertion" not in seen
    )


def test_optional_route_forwards_identity_when_present(gateway: Gateway):
    assert "x-user-id" not in headers_of(gateway.client().get("/opt/x"))
    seen = headers_of(gateway.login("alice").get("/opt/x"))
    assert seen["x-user-id"] == ["alice"] and seen["x-user-roles"] == ["staff"]


def test_required_route_browser_is_redirected_to_login_with_next(gateway: Gateway):
    response = gateway.client().get("/app/page?a=1&b=2", headers=BROWSER)
    assert response.status_code == 302
    assert response.headers["location"] == (
        f"http://localhost:{gateway.port}/.auth/login?next=%2Fapp%2Fpage%3Fa%3D1%26b%3D2"
    )


def test_required_route_api_call_gets_401_json(gateway: Gateway):
    response = gateway.client().get("/app/data", headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    post = gateway.client().post("/app/data", headers=BROWSER)
    assert post.status_code == 401


def test_missing_role_is_403_and_present_role_passes(gateway: Gateway):
    assert gateway.login("alice").get("/admin/x").status_code == 403
    seen = headers_of(gateway.login("bob").get("/admin/x"))
    assert seen["x-user-id"] == ["bob"] and seen["x-user-roles"] == ["admin,staff"]


def test_method_not_in_route_methods_is_405_with_allow(gateway: Gateway):
    client = gateway.login("alice")
    assert client.get("/readonly/x").status_code == 200
    response = client.post("/readonly/x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_bearer_token_works_like_the_cookie(gateway: Gateway):
    client = gateway.login("alice")
    token = client.cookies["gw_session"]
    seen = headers_of(gateway.client().get("/app/x", headers={"authorization": f"Bearer {token}"}))
    assert seen["x-user-id"] == ["alice"]
    # our token is a credential: it is not handed to the upstream
    assert "authorization" not in seen


# -- what the upstream receives -----------------------------------------------------------

SPOOFS = [
    ("X-User-Id", "mallory"),
    ("x-user-id", "mallory"),
    ("X_User_Id", "mallory"),
    ("x.user.id", "mallory"),
    ("X-USER-ID", "mallory"),
    ("X-User-Roles", "admin"),
    ("x_user_roles", "admin"),
    ("X-Gateway-Assertion", "forged"),
    ("Remote-User", "mallory"),
    ("X-Forwarded-User", "mallory"),
    ("X-Original-URL", "/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
]


@pytest.mark.parametrize(
    "route", ["/pub", "/opt/x", "/app/x"], ids=["public", "optional", "required"]
)
@pytest.mark.parametrize("name,value", SPOOFS, ids=[s[0] for s in SPOOFS])
def test_client_identity_headers_never_reach_the_upstream(
    gateway: Gateway, upstream: RecordingUpstream, route: str, name: str, value: str
):
    client = gateway.login("alice") if route != "/pub" else gateway.client()
    upstream.clear()
    response = client.get(route, headers={name: value})
    assert response.status_code == 200
    raw = upstream.raw[-1].decode("latin-1").lower()
    assert value.lower() not in raw
    if route != "/pub":
        assert upstream.last().header("x-user-id") == ["alice"]


def test_connection_header_cannot_make_the_gateway_drop_its_own_headers(
    gateway: Gateway, upstream: RecordingUpstream
):
    client = gateway.login("alice")
    upstream.clear()
    client.get("/app/x", headers={"connection": "close, X-User-Id, X-User-Roles, X-Forwarded-For"})
    rec = upstream.last()
    assert rec.header("x-user-id") == ["alice"]
    assert rec.header("x-user-roles") == ["staff"]
    assert rec.header("x-forwarded-for") == ["127.0.0.1"]
    assert "connection: close, x-user-id" not in upstream.raw[-1].decode().lower()


def test_client_hop_by_hop_headers_are_dropped(gateway: Gateway, upstream: RecordingUpstream):
    upstream.clear()
    gateway.client().get(
        "/pub",
        headers={
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-custom": "1",
            "connection": "x-custom",
        },
    )
    rec = upstream.last()
    assert not rec.header("keep-alive") and not rec.header("te") and not rec.header("x-custom")


def test_session_cookie_is_removed_and_other_cookies_pass(
    gateway: Gateway, upstream: RecordingUpstream
):
    client = gateway.login("alice")
    token = client.cookies["gw_session"]
    upstream.clear()
    client.get("/app/x", headers={"cookie": f"theme=dark; gw_session={token}; lang=en"})
    rec = upstream.last()
    assert token not in upstream.raw[-1].decode("latin-1")
    assert rec.header("cookie") == ["theme=dark; lang=en"]


def test_forwarded_headers_are_set_and_client_copies_ignored(
    gateway: Gateway, upstream: RecordingUpstream
):
    upstream.clear()
    gateway.client().get(
        "/pub",
        headers={
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=6.6.6.6",
            "x-real-ip": "6.6.6.6",
            "x-request-id": "chosen-by-client",
        },
    )
    rec = upstream.last()
    assert rec.header("x-forwarded-for") == ["127.0.0.1"]
    assert rec.header("x-forwarded-proto") == ["http"]
    assert rec.header("x-forwarded-host") == [f"127.0.0.1:{gateway.port}"]
    assert not rec.header("forwarded") and not rec.header("x-real-ip")
    (request_id,) = rec.header("x-request-id")
    assert request_id != "chosen-by-client" and len(request_id) >= 16
    # the upstream sees its own host
    assert rec.header("host") == [f"127.0.0.1:{upstream.port}"]


def test_assertion_header_is_a_jwt_for_the_route(gateway: Gateway, upstream: RecordingUpstream):
    import jwt

    client = gateway.login("alice")
    upstream.clear()
    client.get("/app/x")
    (token,) = upstream.last().header("x-gateway-assertion")
    jwks = gateway.client().get("/.auth/jwks.json").json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key, algorithms=["EdDSA"], audience="app", issuer=f"http://localhost:{gateway.port}"
    )
    assert claims["sub"] == "alice" and "method" not in claims and "path" not in claims
    assert claims["exp"] - claims["iat"] == 60


def test_strip_prefix_and_upstream_base_path(gateway: Gateway, upstream: RecordingUpstream):
    client = gateway.login("alice")
    upstream.clear()
    client.get("/strip/a/b?q=1")
    assert upstream.last().target == "/base/a/b?q=1"
    client.get("/strip")
    assert upstream.last().target == "/base/"


def test_every_upstream_set_cookie_passes_except_ours(gateway: Gateway):
    response = gateway.login("alice").get("/cookies")
    cookies = response.headers.get_list("set-cookie")
    assert [c.split("=")[0] for c in cookies] == ["a", "b", "c"]


def test_refused_upstream_is_502_json(gateway: Gateway):
    response = gateway.client().get("/dead/x")
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"
    assert "127.0.0.1" not in response.text


def test_slow_upstream_is_504_json(gateway: Gateway):
    response = gateway.client().get("/slow", timeout=10)
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"


def test_request_body_and_query_are_forwarded(gateway: Gateway, upstream: RecordingUpstream):
    client = gateway.login("alice")
    response = client.post(
        "/app/form?x=1&y=%20z", content=b"hello=world", headers={"content-type": "text/plain"}
    )
    body = echo(response)
    assert body["request_line"] == "POST /app/form?x=1&y=%20z HTTP/1.1"
    assert body["body"] == "hello=world"


def test_no_route_is_404(gateway_factory, upstream):
    routes = (
        f'[[routes]]\nname = "only"\npath = "/only"\nupstream = "{upstream.url}"\nauth = "public"\n'
    )
    gw = gateway_factory(routes=routes, users=None)
    response = gw.client().get("/other")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "No route matches this path."}
    assert gw.client().get("/onlyx").status_code == 404
    assert gw.client().get("/only/x").status_code == 200


def test_json_error_bodies_are_json(gateway: Gateway):
    response = gateway.client().get("/app/x")
    assert response.headers["content-type"] == "application/json"
    json.loads(response.text)


def test_a_lone_surrogate_in_a_json_login_is_400_not_a_crash(gateway: Gateway):
    body = b'{"username": "\\ud800", "password": "\\udfff"}'
    response = gateway.client().post(
        "/.auth/login", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_a_hand_edited_hash_in_the_users_file_is_a_failed_login(gateway: Gateway):
    users = gateway.directory / "users.toml"
    original = users.read_text()
    users.write_text(original + '\n[users.mallory]\nhash = "plaintext-password"\nroles = []\n')
    try:
        response = gateway.client().post(
            "/.auth/login", json={"username": "mallory", "password": "plaintext-password"}
        )
        assert response.status_code == 401
        assert "unrecognised password hash format" in gateway.logs()
        assert gateway.client().get("/.auth/health").status_code == 200
    finally:
        users.write_text(original)


def test_verify_sends_a_non_latin1_user_id_as_utf8(gateway: Gateway):
    import time

    from gateway.auth.tokens import Keyring, Tokens
    from gateway.config import load_config

    config = load_config(gateway.config)
    tokens = Tokens(Keyring(config.keys), config.server.public_url, 900, time.time)
    token, _ = tokens.mint_session("zoë-李", ("staff",), "sid-utf8")
    response = gateway.client(cookies={"gw_session": token}).get(
        "/.auth/verify", headers={"x-forwarded-uri": "/app/x", "x-forwarded-method": "GET"}
    )
    assert response.status_code == 200
    assert dict(response.headers.raw)[b"x-user-id"] == "zoë-李".encode()


def test_verify_answers_each_method_as_a_front_proxy_expects(gateway: Gateway):
    """/verify is pure ASGI (no router): GET, HEAD and POST get a verdict, HEAD without a
    body; another method is 405 in the error shape; a check that names no target is 403."""
    client = gateway.login("alice")
    check = {"x-forwarded-uri": "/app/x", "x-forwarded-method": "GET"}
    for method in ("GET", "POST", "HEAD"):
        response = client.request(method, "/.auth/verify", headers=check)
        assert response.status_code == 200, (method, response.text)
        assert response.headers["x-user-id"] == "alice"
        assert response.headers["cache-control"] == "no-store"
        assert response.content == b""
    anonymous = gateway.client().head("/.auth/verify", headers=check)
    assert anonymous.status_code == 401 and anonymous.content == b""
    refused = client.put("/.auth/verify", headers=check)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD, POST"
    assert refused.json()["error"] == "method_not_allowed"
    unnamed = client.get("/.auth/verify", headers={"x-forwarded-method": "GET"})
    assert unnamed.status_code == 403 and unnamed.json()["error"] == "bad_request"
    # two methods: one of them is a client's (a proxy sets one); judged by either, the request
    # might go out with the other
    both = client.get("/.auth/verify", headers=[*check.items(), ("x-forwarded-method", "DELETE")])
    assert both.status_code == 403 and "X-Forwarded-Method" in both.json()["detail"]
    same = client.get("/.auth/verify", headers=[*check.items(), ("x-forwarded-method", "get")])
    assert same.status_code == 200
