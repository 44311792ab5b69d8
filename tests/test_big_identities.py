"""Big identities: a user with 300 roles signs in, keeps a cookie under 4 KB and reaches apps.

The roles that do not fit in the cookie live in the store (gateway/auth/roles.py), the roles
header is capped per route with `X-User-Roles-Truncated: true` saying so, and the assertion
carries every role. Driven as users meet it: Chromium at the sign-in page, a real nginx with
its default header buffers in front of the echo upstream, nginx `auth_request` in front of
`/verify`, the ASGI and WSGI middleware, and `gateway check`.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from gateway import asgi, wsgi
from gateway.auth.keys import ensure_key
from gateway.auth.roles import SessionRoles
from gateway.auth.tokens import Keyring, TokenError, Tokens
from gateway.config import KeysConfig, load_config
from gateway.core.nexthop import canonical
from gateway.sources.file import set_user
from gateway.store import open_store
from tests.conftest import (
    USERS,
    Gateway,
    add_users,
    free_port,
    make_gateway,
    start_gateway,
    write_config,
)
from tests.test_browser import browser  # noqa: F401  (the Chromium fixture)
from tests.test_cli import gateway_cmd
from tests.test_forward_auth import (
    BROWSER,
    nginx_config,
    proxy_available,
    running_front,
    start_nginx,
    stop,
)
from tests.test_middleware import UvicornServer, WerkzeugServer, flask_app, starlette_app
from tests.upstream import Recorded, RecordingUpstream

T = TypeVar("T")
ROLES = tuple(f"group-{i:04d}-team" for i in range(300))
BIG = ("big", "big-password-1")
USERS_WITH_BIG = {**USERS, BIG[0]: (BIG[1], ROLES)}
COOKIE_LIMIT = 4096  # what browsers keep of one cookie (name and value)
ROLES_LIMIT = 4096  # [identity] roles_header_limit's default
FORGED_TRUNCATED = [
    ("X-User-Roles-Truncated", "true"),
    ("x_user_roles_truncated", "true"),
    ("X.User.Roles.Truncated", "true"),
]

# nginx in front of the echo upstream, its header buffers left as they come (large client
# header buffers: 4 x 8k, one header line at most 8 KB)
ECHO_SITE = """
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://{app};
    }}
}}
"""


def marker() -> str:
    return uuid.uuid4().hex


def reached(upstream: RecordingUpstream, m: str) -> Recorded:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for rec in list(upstream.requests):
            if m in rec.target:
                return rec
        time.sleep(0.01)
    raise AssertionError(f"the upstream never received {m}")


def unverified(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def verified_assertion(client: httpx.Client, token: str, route: str) -> dict:
    """The assertion's claims, checked against the keys the gateway publishes."""
    keys = jwt.PyJWKSet.from_dict(client.get("/.auth/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    return jwt.decode(token, key.key, algorithms=["EdDSA"], audience=route)


def sign_in(client: httpx.Client, user: tuple[str, str] = BIG) -> httpx.Response:
    response = client.post("/.auth/login", json={"username": user[0], "password": user[1]})
    assert response.status_code == 200, response.text
    return response


def assert_capped(rec: Recorded, limit: int = ROLES_LIMIT, roles: tuple[str, ...] = ROLES):
    """Some whole roles, in order, under the limit, and the truncation header saying so."""
    (value,) = rec.header("x-user-roles")
    assert 0 < len(value.encode()) <= limit
    sent = value.split(",")
    assert tuple(sent) == roles[: len(sent)]  # whole roles only, never part of a name
    assert len(sent) < len(roles)
    assert rec.header("x-user-roles-truncated") == ["true"]


@pytest.fixture(scope="module")
def nginx_echo(tmp_path_factory, upstream: RecordingUpstream) -> Iterator[str]:
    proxy_available("nginx")
    directory = tmp_path_factory.mktemp("nginx-echo")
    port = free_port()
    app = upstream.url.removeprefix("http://")
    # nginx_config's main config around a plain proxy site instead of the forward-auth example
    site = ECHO_SITE.format(port=port, app=app)
    config = nginx_config(directory, port, 0, app, lambda _example: site)
    proc = start_nginx(config, port)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def big_routes(upstream: str, nginx: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "site"
        path = "/"
        upstream = "{upstream}"
        auth = "public"

        [[routes]]
        name = "app"
        path = "/app"
        upstream = "{nginx}"
        auth = "required"
        roles = ["group-0299-team"]

        [[routes]]
        name = "echo"
        path = "/echo"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "narrow"
        path = "/narrow"
        upstream = "{upstream}"
        auth = "required"
        roles_header_limit = 256
        """
    )


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream: RecordingUpstream, nginx_echo: str) -> Iterator[Gateway]:
    routes = big_routes(upstream.url, nginx_echo)
    gateway = make_gateway(tmp_path_factory.mktemp("big"), routes, users=USERS_WITH_BIG)
    yield gateway
    gateway.stop()


# -- the browser --------------------------------------------------------------------------


def test_a_user_with_300_roles_signs_in_in_a_browser_and_stays_signed_in(
    browser,  # noqa: F811
    gw: Gateway,
    upstream: RecordingUpstream,
) -> None:
    from playwright.sync_api import expect

    site = f"http://localhost:{gw.port}"
    m = marker()
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{site}/app/report?m={m}")
        assert urlsplit(page.url).path == "/.auth/login"
        expect(page.get_by_label("Username")).to_be_focused()
        page.get_by_label("Username").fill(BIG[0])
        page.get_by_label("Password").fill(BIG[1])
        page.get_by_role("button", name="Sign in", exact=True).click()
        # the route wants group-0299-team, past what the roles header can hold
        page.wait_for_url(f"{site}/app/report?m={m}")
        seen = json.loads(page.locator("body").inner_text())
        assert [v for k, v in seen["headers"] if k.lower() == "x-user-id"] == ["big"]
        cookie = next(c for c in context.cookies() if c["name"] == "gw_session")
        size = len(cookie["name"]) + len(cookie["value"])
        print(f"\nbrowser cookie: {size} bytes")
        assert size < COOKIE_LIMIT
        # what nginx passed on, its default header buffers notwithstanding
        rec = reached(upstream, m)
        assert rec.header("x-user-id") == ["big"]
        assert_capped(rec)

        # no sign-in loop: the browser sent the cookie back and the gateway took it
        m = marker()
        response = page.goto(f"{site}/app/next?m={m}")
        assert response is not None and response.status == 200
        assert urlsplit(page.url).path == "/app/next"
        assert reached(upstream, m).header("x-user-id") == ["big"]
    finally:
        context.close()


# -- through the proxy, with a plain HTTP client -------------------------------------------


def test_the_cookie_names_the_stored_roles_and_every_mode_of_reading_gets_them_all(gw: Gateway):
    with closing(gw.client()) as client:
        response = sign_in(client)
        assert response.json()["roles"] == list(ROLES)
        (set_cookie,) = [c for c in response.headers.get_list("set-cookie") if "gw_session=" in c]
        print(f"\nSet-Cookie: {len(set_cookie)} bytes")
        assert len(set_cookie) < COOKIE_LIMIT
        claims = unverified(client.cookies["gw_session"])
        assert claims["roles"] == [] and len(claims["rref"]) == 22
        me = client.get("/.auth/me")
        assert me.status_code == 200 and me.json()["roles"] == list(ROLES)


def test_a_big_identity_gets_whole_roles_up_to_the_limit_and_the_assertion_has_all(
    gw: Gateway, upstream: RecordingUpstream
):
    with closing(gw.client()) as client:
        sign_in(client)
        m = marker()
        forged = [("X-User-Roles-Truncated", "false"), ("X-User-Roles", "admin")]
        response = client.get(f"/echo/page?m={m}", headers=forged)
        assert response.status_code == 200, response.text
        rec = reached(upstream, m)
        assert rec.header("x-user-id") == ["big"]
        assert_capped(rec)
        (assertion,) = rec.header("x-gateway-assertion")
        claims = verified_assertion(client, assertion, "echo")
        assert claims["sub"] == "big" and claims["roles"] == list(ROLES)
        print(
            f"\nX-User-Roles: {len(rec.header('x-user-roles')[0])} bytes, "
            f"{len(rec.header('x-user-roles')[0].split(','))} roles; "
            f"X-Gateway-Assertion: {len(assertion)} bytes"
        )

        # a route's own limit
        m = marker()
        assert client.get(f"/narrow/page?m={m}").status_code == 200
        assert_capped(reached(upstream, m), limit=256)


def test_the_identity_headers_pass_nginx_default_buffers(gw: Gateway, upstream: RecordingUpstream):
    with closing(gw.client()) as client:
        sign_in(client)
        m = marker()
        response = client.get(f"/app/page?m={m}")
        assert response.status_code == 200, response.text
        rec = reached(upstream, m)
        assert_capped(rec)
        (assertion,) = rec.header("x-gateway-assertion")
        assert len(assertion) < 8192  # one header line of nginx's large_client_header_buffers
        assert verified_assertion(client, assertion, "app")["roles"] == list(ROLES)


def test_a_normal_user_gets_no_truncation_header_and_a_token_with_its_roles(
    gw: Gateway, upstream: RecordingUpstream
):
    with closing(gw.client()) as client:
        sign_in(client, ("alice", USERS["alice"][0]))
        claims = unverified(client.cookies["gw_session"])
        assert claims["roles"] == ["staff"] and "rref" not in claims
        m = marker()
        response = client.get(f"/echo/page?m={m}", headers=FORGED_TRUNCATED)
        assert response.status_code == 200
        rec = reached(upstream, m)
    assert rec.header("x-user-roles") == ["staff"]
    truncated = [n for n, _ in rec.headers if canonical(n.encode()) == b"x-user-roles-truncated"]
    assert truncated == []


# -- refresh and a flushed store -----------------------------------------------------------


def test_roles_changed_at_the_source_take_effect_at_refresh_with_a_new_ref(
    gateway_factory, upstream: RecordingUpstream
):
    gateway = gateway_factory(
        routes=big_routes(upstream.url, upstream.url),
        extra='[auth]\nrefresh = "1s"\n',
        users=USERS_WITH_BIG,
    )
    crew = tuple(f"group-{i:04d}-crew" for i in range(300))
    with closing(gateway.client()) as client:
        sign_in(client)
        before = unverified(client.cookies["gw_session"])["rref"]
        set_user(gateway.directory / "users.toml", BIG[0], BIG[1], crew)
        time.sleep(1.2)
        m = marker()
        response = client.get(f"/echo/page?m={m}")
        assert response.status_code == 200
        assert any(c.startswith("gw_session=") for c in response.headers.get_list("set-cookie"))
        after = unverified(client.cookies["gw_session"])
        assert after["roles"] == [] and after["rref"] != before
        rec = reached(upstream, m)
        assert_capped(rec, roles=crew)
        (assertion,) = rec.header("x-gateway-assertion")
        assert verified_assertion(client, assertion, "echo")["roles"] == list(crew)
        assert client.get("/.auth/me").json()["roles"] == list(crew)


def _flush_roles(config: Path) -> int:
    """Delete every stored roles record, as a flushed store would have lost them."""
    loaded = load_config(config)

    async def flush() -> int:
        store = open_store(loaded.store.url, loaded.base_dir)
        try:
            found = await store.list_records("roles:", time.time())
            for key in found:
                await store.delete_record(key)
            return len(found)
        finally:
            await store.close()

    return _run(flush())


def _stored_roles(config: Path) -> dict[str, str]:
    loaded = load_config(config)

    async def listed() -> dict[str, str]:
        store = open_store(loaded.store.url, loaded.base_dir)
        try:
            return await store.list_records("roles:", time.time())
        finally:
            await store.close()

    return _run(listed())


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a thread of its own (Playwright holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_a_flushed_roles_record_is_re_issued_from_the_source_not_refused(
    gateway_factory, upstream: RecordingUpstream
):
    gateway = gateway_factory(routes=big_routes(upstream.url, upstream.url), users=USERS_WITH_BIG)
    with closing(gateway.client()) as client:
        sign_in(client)
        token = client.cookies["gw_session"]
    assert list(_stored_roles(gateway.config)) == [
        f"roles:{unverified(token)['sid']}:{unverified(token)['rref']}"
    ]
    # a fresh process (no roles remembered) in front of a store that lost them
    gateway.stop()
    assert _flush_roles(gateway.config) == 1
    restarted = start_gateway(gateway.config, gateway.port)
    gateway_factory.started.append(restarted)

    with closing(restarted.client()) as api:
        m = marker()
        response = api.get(f"/echo/api?m={m}", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        (assertion,) = reached(upstream, m).header("x-gateway-assertion")
        assert verified_assertion(api, assertion, "echo")["roles"] == list(ROLES)

    with closing(restarted.client()) as client:
        # as the server scopes it, so the re-issued cookie replaces it
        client.cookies.set("gw_session", token, domain="127.0.0.1")
        m = marker()
        response = client.get(f"/echo/page?m={m}")
        assert response.status_code == 200, response.text
        assert any(c.startswith("gw_session=") for c in response.headers.get_list("set-cookie"))
        assert_capped(reached(upstream, m))
        assert len(_stored_roles(gateway.config)) == 1  # packed anew
        # the re-issued cookie holds: no loop
        m = marker()
        response = client.get(f"/echo/page?m={m}")
        assert response.status_code == 200
        assert not response.headers.get_list("set-cookie")
        assert_capped(reached(upstream, m))


# -- forward-auth ----------------------------------------------------------------------------


def test_verify_behind_nginx_auth_request_answers_200_with_capped_headers(
    tmp_path, upstream: RecordingUpstream
):
    with running_front("nginx", tmp_path, upstream) as front:
        add_users(front.gateway.directory / "users.toml", {BIG[0]: (BIG[1], ROLES)})
        with closing(front.client()) as client:
            sign_in(client)
            m = marker()
            response = client.get(f"/page?m={m}", headers=[*BROWSER.items(), *FORGED_TRUNCATED])
            assert response.status_code == 200, response.text
            rec = front.reached(m)
            assert rec is not None and rec.header("x-user-id") == ["big"]
            assert_capped(rec)
            (assertion,) = rec.header("x-gateway-assertion")
            assert verified_assertion(client, assertion, "site")["roles"] == list(ROLES)

            # the verdict itself, asked as nginx asks it
            with closing(front.gateway.client()) as check:
                check.cookies.set("gw_session", client.cookies["gw_session"])
                verdict = check.get(
                    "/.auth/verify",
                    headers={
                        "x-forwarded-method": "GET",
                        "x-original-uri": "/page",
                        "x-forwarded-host": f"127.0.0.1:{front.port}",
                    },
                )
            assert verdict.status_code == 200
            assert verdict.headers["x-user-roles-truncated"] == "true"
            assert len(verdict.headers["x-user-roles"]) <= ROLES_LIMIT
            head = sum(len(k) + len(v) + 4 for k, v in verdict.headers.raw)
            print(f"\n/verify answer head: {head} bytes")

        # a normal user's request: the client's truncation header never reaches the app
        with closing(front.signed_in("alice")) as alice:
            m = marker()
            response = alice.get(f"/page?m={m}", headers=[*BROWSER.items(), *FORGED_TRUNCATED])
            assert response.status_code == 200
            rec = front.reached(m)
            assert rec is not None and rec.header("x-user-roles") == ["staff"]
            names = {canonical(n.encode()) for n, _ in rec.headers}
            assert b"x-user-roles-truncated" not in names


# -- the middleware ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flask", "starlette"])
def test_the_middleware_caps_the_roles_header_and_strips_client_copies(tmp_path, kind: str):
    port = free_port()
    routes = '[[routes]]\nname = "app"\npath = "/"\nauth = "required"\n'
    config_file = write_config(tmp_path, port, routes)
    add_users(tmp_path / "users.toml", USERS_WITH_BIG)
    config = load_config(config_file, require_upstream=False)
    if kind == "flask":
        middleware = wsgi.GatewayMiddleware(flask_app().wsgi_app, config)
        server: WerkzeugServer | UvicornServer = WerkzeugServer(middleware, port)
    else:
        from tests.test_middleware import LifespanLog

        server = UvicornServer(asgi.GatewayMiddleware(starlette_app(LifespanLog()), config), port)
    url = f"http://127.0.0.1:{port}"
    try:
        for user, truncated in ((BIG, ["true"]), (("alice", USERS["alice"][0]), [])):
            with httpx.Client(base_url=url, trust_env=False) as client:
                sign_in(client, user)
                seen = client.get("/page", headers=FORGED_TRUNCATED).json()
            assert seen["roles"] == list(USERS_WITH_BIG[user[0]][1])
            found = [
                v for k, v in seen["headers"] if canonical(k.encode()) == b"x-user-roles-truncated"
            ]
            assert found == truncated, user[0]
            (roles,) = [v for k, v in seen["headers"] if k.lower() == "x-user-roles"]
            assert len(roles.encode()) <= ROLES_LIMIT
    finally:
        server.stop()
        if kind == "flask":
            middleware.close()


# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "shown"),
    [
        ("identity", "0", "0"),
        ("identity", "255", "255"),
        ("identity", "-1", "-1"),
        ("identity", '"4k"', "'4k'"),
        ("identity", "4096.0", "4096.0"),
        ("identity", "true", "True"),
        ("routes[0]", "100", "100"),
    ],
)
def test_gateway_check_refuses_a_bad_roles_header_limit(
    tmp_path, where: str, value: str, shown: str
):
    routes = '[[routes]]\nname = "app"\npath = "/"\nupstream = "http://127.0.0.1:9001"\n'
    extra = ""
    if where == "identity":
        extra = f"[identity]\nroles_header_limit = {value}\n"
    else:
        routes += f"roles_header_limit = {value}\n"
    config = write_config(tmp_path, free_port(), routes, extra)
    result = gateway_cmd("check", "-c", str(config))
    assert result.returncode == 1
    expected = f"{where}.roles_header_limit: {shown} must be a whole number of bytes, at least 256"
    assert f"error: {expected}" in result.stderr


def test_gateway_check_takes_a_roles_header_limit_in_identity_and_per_route(tmp_path):
    routes = (
        '[[routes]]\nname = "app"\npath = "/"\nupstream = "http://127.0.0.1:9001"\n'
        "roles_header_limit = 256\n"
    )
    config = write_config(tmp_path, free_port(), routes, "[identity]\nroles_header_limit = 8000\n")
    result = gateway_cmd("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    loaded = load_config(config)
    assert loaded.identity.roles_header_limit == 8000
    assert loaded.routes[0].identity.roles_header_limit == 256


# -- the token's reference and the record it names ---------------------------------------------


def _tokens(directory: Path) -> Tokens:
    ensure_key(directory, "EdDSA")
    return Tokens(Keyring(KeysConfig(dir=directory)), "http://gw.test", 900, time.time)


def _signed(tokens: Tokens, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": tokens.issuer,
        "aud": tokens.audience,
        "sub": "big",
        "roles": [],
        "sid": "s" * 32,
        "jti": "j" * 22,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **claims,
    }
    key = tokens.keyring.active
    return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})


@pytest.mark.parametrize(
    "claims",
    [
        {"rref": 5},
        {"rref": ""},
        {"rref": "x" * 65},
        {"rref": "not/base64url"},
        {"rref": ["abc"]},
        {"rref": "abc", "roles": ["admin"]},
    ],
    ids=[
        "a number",
        "an empty reference",
        "a long reference",
        "a reference that is not base64url",
        "a list",
        "a reference beside inline roles",
    ],
)
def test_a_session_token_with_a_bad_roles_reference_is_refused(tmp_path, claims: dict):
    tokens = _tokens(tmp_path)
    assert tokens.verify_session(_signed(tokens, rref="a" * 22)).roles_ref == "a" * 22
    with pytest.raises(TokenError, match="claim type"):
        tokens.verify_session(_signed(tokens, **claims))


def test_stored_roles_are_read_once_and_a_record_that_is_not_the_named_set_is_gone():
    store = open_store("memory://", Path("."))
    roles = SessionRoles(store, time.time)

    async def scenario() -> None:
        assert await roles.pack("sid", ("staff",), time.time() + 60) == (("staff",), "")
        kept, ref = await roles.pack("sid", ROLES, time.time() + 60)
        assert kept == () and len(ref) == 22
        key = f"roles:sid:{ref}"
        assert json.loads(await store.get_record(key, time.time())) == list(ROLES)
        # a fresh process reads it from the store once, then remembers it
        reader = SessionRoles(store, time.time)
        assert await reader.unpack("sid", (), ref) == ROLES
        await store.delete_record(key)
        assert await reader.unpack("sid", (), ref) == ROLES
        assert await SessionRoles(store, time.time).unpack("sid", (), ref) is None
        # a record whose content is not the set the signed token names counts as gone
        await store.put_record(key, '["admin"]', time.time(), None)
        assert await SessionRoles(store, time.time).unpack("sid", (), ref) is None
        await store.close()

    _run(scenario())
