"""Identity-header injection: a client's own X-User-Id never reaches the upstream, in any spelling."""

from __future__ import annotations

import jwt
import pytest
import sqlalchemy
from argon2 import PasswordHasher

from tests.conftest import make_gateway
from tests.security.attack import (
    login,
    no_identity,
    nothing_forwarded,
    only,
    request,
    signing_key,
    with_cookie,
)
from tests.security.conftest import security_routes

SPELLINGS = [
    "X-User-Id",
    "x-user-id",
    "X-USER-ID",
    "X_User_Id",
    "x.user.id",
    "X-User_Id",
]


@pytest.mark.parametrize("name", SPELLINGS, ids=lambda n: f"spelled {n}")
def test_forged_user_header_in_any_spelling_is_removed_on_a_public_route(gw, upstream, name):
    response = request(gw, "GET", "/page", [(name, "admin")])
    assert response.status == 200
    rec = only(upstream)
    assert no_identity(rec), rec.headers


def test_forged_roles_header_is_replaced_by_the_real_roles(gw, upstream, alice_token):
    token = alice_token
    forged = [("X-User-Roles", "admin"), ("x_user_roles", "admin"), with_cookie(gw, token)]
    response = request(gw, "GET", "/app/x", forged)
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-user-roles") == ["staff"]
    assert not any("_" in k or "." in k for k, _ in rec.headers)


def test_duplicate_user_headers_with_a_session_leave_exactly_ours(gw, upstream, alice_token):
    token = alice_token
    forged = [("X-User-Id", "bob"), ("X-User-Id", "admin"), with_cookie(gw, token)]
    response = request(gw, "GET", "/app/x", forged)
    assert response.status == 200
    assert only(upstream).header("x-user-id") == ["alice"]


def test_a_list_valued_user_header_is_removed(gw, upstream):
    response = request(gw, "GET", "/page", [("X-User-Id", "admin, alice")])
    assert response.status == 200
    assert no_identity(only(upstream))


def test_optional_route_anonymous_carries_no_forged_identity(gw, upstream):
    response = request(gw, "GET", "/opt/x", [("X-User-Id", "admin"), ("X-User-Roles", "admin")])
    assert response.status == 200
    assert no_identity(only(upstream))


def test_optional_route_with_a_bad_cookie_carries_no_identity_and_clears_it(gw, upstream):
    headers = [("Cookie", "gw_session=not.a.jwt"), ("X_User_Id", "admin")]
    response = request(gw, "GET", "/opt/x", headers)
    assert response.status == 200
    assert any(c.startswith("gw_session=;") for c in response.header("set-cookie"))
    assert no_identity(only(upstream))


def test_forged_header_without_a_session_on_a_required_route_reaches_nothing(gw, upstream):
    response = request(gw, "GET", "/app/x", [("X-User-Id", "alice")])
    assert response.status == 401
    assert nothing_forwarded(upstream)


def test_forged_assertion_header_is_replaced_by_a_signed_one(gw, upstream, alice_token):
    token = alice_token
    fake = jwt.encode({"sub": "admin"}, "k" * 32, algorithm="HS256")
    headers = [("X-Gateway-Assertion", fake), ("x_gateway_assertion", fake), with_cookie(gw, token)]
    response = request(gw, "GET", "/app/x", headers)
    assert response.status == 200
    values = only(upstream).header("x-gateway-assertion")
    assert len(values) == 1 and values[0] != fake
    assert jwt.decode(values[0], options={"verify_signature": False})["sub"] == "alice"


def _assertion_for(gw, upstream, token: str, target: str = "/app/x", forged=(), host=None):
    """The one assertion the upstream got for this request, decoded after its signature."""
    upstream.clear()
    response = request(gw, "GET", target, [*forged, with_cookie(gw, token)], host=host)
    assert response.status == 200
    (value,) = only(upstream).header("x-gateway-assertion")
    key = signing_key(gw)
    claims = jwt.decode(
        value, key.public, algorithms=[key.algorithm], audience=None, options={"verify_aud": False}
    )
    return value, claims


def test_another_users_reused_assertion_sent_by_a_client_is_replaced(
    gw, upstream, alice_token, bob_token
):
    """The assertion is now reused for a while: holding alice's (from a log, a proxy on the
    way) must not let bob pass it on as his, in any spelling, nor make it his next one."""
    stolen, _ = _assertion_for(gw, upstream, alice_token)
    spellings = [("X-Gateway-Assertion", stolen), ("x_gateway_assertion", stolen)]
    mine, claims = _assertion_for(gw, upstream, bob_token, forged=spellings)
    assert mine != stolen and claims["sub"] == "bob"
    assert _assertion_for(gw, upstream, bob_token)[0] == mine
    assert _assertion_for(gw, upstream, alice_token)[0] == stolen


def test_a_forged_assertion_never_becomes_the_reused_one(gw, upstream):
    """A forged copy sent on the request that mints the assertion is dropped, not kept."""
    token = login(gw, "alice")  # a session of its own: nothing is cached for it yet
    fake = jwt.encode({"sub": "admin", "aud": "app"}, "k" * 32, algorithm="HS256")
    first, claims = _assertion_for(gw, upstream, token, forged=[("X-Gateway-Assertion", fake)])
    assert first != fake and (claims["sub"], claims["aud"]) == ("alice", "app")
    assert _assertion_for(gw, upstream, token)[0] == first


def test_a_reused_assertion_never_crosses_to_another_route_on_the_same_path(
    gw, upstream, alice_token
):
    """ "crm" answers the same path on another host: its upstream gets an audience of its own."""
    on_app, app_claims = _assertion_for(gw, upstream, alice_token, "/app/x")
    forged = [("X-Gateway-Assertion", on_app)]
    on_crm, crm_claims = _assertion_for(
        gw, upstream, alice_token, "/app/x", forged=forged, host="crm.example.com"
    )
    assert on_crm != on_app
    assert (app_claims["aud"], crm_claims["aud"]) == ("app", "crm")


def test_route_strip_headers_are_removed_in_every_spelling(gw, upstream):
    headers = [("X-Debug-User", "root"), ("x_debug_user", "root"), ("X.Debug.User", "root")]
    response = request(gw, "GET", "/legacy/x", headers)
    assert response.status == 200
    rec = only(upstream)
    assert not {k.lower().replace("_", "-").replace(".", "-") for k, _ in rec.headers} & {
        "x-debug-user"
    }


def test_forward_auth_never_echoes_a_client_identity(gw, upstream):
    response = request(
        gw,
        "GET",
        "/.auth/verify",
        [("X-Forwarded-Uri", "/page"), ("X-Forwarded-Method", "GET"), ("X-User-Id", "admin")],
    )
    assert response.status == 200
    assert response.header("x-user-id") == []
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "user_id",
    [
        "eve\r\nX-User-Roles: admin\r\nX-Injected: yes",
        "eve\r\n\r\nGET /admin HTTP/1.1",
        "eve\nX-Injected: yes",
        "eve\x00",
        "e" * 257,
    ],
    ids=["CRLF headers", "CRLF request", "bare LF", "NUL", "too long"],
)
def test_a_source_id_that_is_not_one_line_of_text_never_signs_in(tmp_path, sec_upstream, user_id):
    # a legacy database where people choose their own names, returned as the id
    legacy = tmp_path / "legacy.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{legacy}")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE people (id TEXT, name TEXT, hash TEXT)"))
        conn.execute(
            sqlalchemy.text("INSERT INTO people VALUES (:id, 'eve', :h)"),
            {"id": user_id, "h": PasswordHasher().hash("eve-password-1")},
        )
    engine.dispose()
    extra = f"""
[auth]
users = "sql"

[auth.sql]
dsn = "sqlite:///{legacy}"
query = "SELECT id, hash, 'staff' FROM people WHERE name = :username"
"""
    sec_upstream.clear()
    gw = make_gateway(tmp_path / "gw", security_routes(sec_upstream), extra, users=None)
    try:
        with gw.client() as client:
            response = client.post(
                "/.auth/login", json={"username": "eve", "password": "eve-password-1"}
            )
            assert response.status_code == 401
            assert "gw_session" not in response.cookies
            assert client.get("/app/x").status_code == 401
        assert "not one line of text" in gw.logs()
        assert nothing_forwarded(sec_upstream)
    finally:
        gw.stop()


DEFAULT_NAMES = ["X-User-Id", "X-User-Roles", "X-User-Roles-Truncated", "X-Gateway-Assertion"]


def test_renamed_or_disabled_identity_headers_still_strip_clients_copies_of_the_defaults(
    tmp_path, sec_upstream
):
    # an upstream written for the default names must never read a client's copy as ours
    extra = """
[identity]
user_header = "X-Auth-Id"
roles_header = ""
assertion_header = ""
"""
    gw = make_gateway(tmp_path / "gw", security_routes(sec_upstream), extra)
    try:
        forged = [(name, "admin") for name in DEFAULT_NAMES]
        sec_upstream.clear()
        assert request(gw, "GET", "/page", forged).status == 200
        assert not any(
            k.lower() in {n.lower() for n in DEFAULT_NAMES} for k, _ in only(sec_upstream).headers
        )
        sec_upstream.clear()
        token = login(gw, "alice")
        assert request(gw, "GET", "/app/x", [*forged, with_cookie(gw, token)]).status == 200
        received = only(sec_upstream)
        assert received.header("x-auth-id") == ["alice"]
        assert not any(k.lower() in {n.lower() for n in DEFAULT_NAMES} for k, _ in received.headers)
    finally:
        gw.stop()


def test_every_header_legacy_stacks_or_other_auth_layers_trust_is_removed(gw, upstream):
    # nexthop.LEGACY: what IIS, Symfony, Grafana, Kubernetes, Kong, Azure and auth proxies
    # read as the user, the host, the path or the method, in each spelling a stack folds
    from gateway.core.nexthop import LEGACY

    names = sorted(n.decode() for n in LEGACY)
    forged = [(name, "forged") for name in names]
    forged += [(name.replace("-", "_"), "forged") for name in names if "-" in name]
    response = request(gw, "GET", "/page", forged)
    assert response.status == 200
    received = {canonical_name(k) for k, _ in only(upstream).headers}
    assert received.isdisjoint(names), sorted(received & set(names))


def canonical_name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
