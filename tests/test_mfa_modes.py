"""Step-up on an `mfa = true` route in every mode that is not the proxy: the ASGI middleware
(Starlette under uvicorn), the WSGI middleware (Flask under werkzeug) and forward-auth (`/verify`
behind a real nginx's auth_request). Without a second factor the route is refused the way the
mode refuses; after the factor (same session) it is allowed, and the identity carries amr."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import jwt
import pyotp
import pytest

from gateway import asgi, wsgi
from gateway.config import load_config
from tests.conftest import USERS, add_users, free_port, write_config
from tests.test_forward_auth import running_front
from tests.test_middleware import (
    LifespanLog,
    UvicornServer,
    WerkzeugServer,
    flask_app,
    starlette_app,
)
from tests.upstream import RecordingUpstream

JSON = {"accept": "application/json"}
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}

MW_ROUTES = """
[[routes]]
name = "site"
path = "/"
auth = "optional"

[[routes]]
name = "app"
path = "/app"
auth = "required"

[[routes]]
name = "secure"
path = "/secure"
auth = "required"
mfa = true
"""


def step_up(client: httpx.Client) -> str:
    """Enroll an authenticator app for the signed-in client (JSON); its secret."""
    page = client.get("/.auth/mfa", headers=JSON)
    assert page.status_code == 200, page.text
    secret = page.json()["totp"]["secret"]
    done = client.post(
        "/.auth/mfa/totp/enroll", json={"code": pyotp.TOTP(secret).at(time.time() - 30)}
    )
    assert done.status_code == 200, done.text
    assert done.json()["amr"] == ["pwd", "otp"]
    return secret


@pytest.fixture(params=["flask", "starlette"])
def served(request, tmp_path_factory) -> Iterator[tuple[str, int]]:
    port = free_port()
    directory = tmp_path_factory.mktemp("mfa-mw")
    config_file = write_config(directory, port, MW_ROUTES)
    add_users(directory / "users.toml")
    if request.param == "flask":
        middleware = wsgi.GatewayMiddleware(flask_app().wsgi_app, config_file)
        server: WerkzeugServer | UvicornServer = WerkzeugServer(middleware, port)
    else:
        config = load_config(config_file, require_upstream=False)
        server = UvicornServer(asgi.GatewayMiddleware(starlette_app(LifespanLog()), config), port)
    yield request.param, port
    server.stop()
    if request.param == "flask":
        middleware.close()


def test_step_up_through_the_middleware(served):
    kind, port = served
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False)
    with closing(client):
        login = client.post(
            "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
        )
        assert login.status_code == 200, login.text
        sid = login.json()["sid"]
        assert client.get("/app/x", headers=JSON).status_code == 200
        browser = client.get("/secure/x?y=1", headers=HTML)
        assert browser.status_code == 302, (kind, browser.text)
        assert browser.headers["location"] == (
            f"http://localhost:{port}/.auth/mfa?next=%2Fsecure%2Fx%3Fy%3D1"
        )
        api = client.get("/secure/x", headers=JSON)
        assert api.status_code == 401
        assert api.json()["error"] == "mfa_required"
        assert "totp" in api.json()["methods"]

        step_up(client)
        assert client.get("/.auth/me", headers=JSON).json()["sid"] == sid
        seen = client.get("/secure/x", headers=JSON)
        assert seen.status_code == 200, seen.text
        headers = {k.lower(): v for k, v in seen.json()["headers"]}
        assert headers["x-user-id"] == "alice"
        claims = jwt.decode(headers["x-gateway-assertion"], options={"verify_signature": False})
        assert claims["amr"] == ["pwd", "otp"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def test_step_up_through_nginx_auth_request(tmp_path, upstream):
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "site"
        path = "/"
        upstream = "{upstream.url}"
        auth = "required"

        [[routes]]
        name = "secure"
        path = "/secure"
        upstream = "{upstream.url}"
        auth = "required"
        mfa = true
        """
    )
    with running_front("nginx", tmp_path, upstream, routes) as front:
        client = front.login("alice")
        with closing(client):
            assert client.get("/page", headers=JSON).status_code == 200
            # the gateway's verdict itself: 401 with a Location to the factor page
            verdict = front.gateway.client(cookies=client.cookies).get(
                "/.auth/verify",
                headers={
                    **HTML,
                    "x-original-uri": "/secure/x",
                    "x-forwarded-method": "GET",
                    "x-forwarded-host": f"127.0.0.1:{front.port}",
                },
            )
            assert verdict.status_code == 401, verdict.text
            assert verdict.headers["location"] == (f"{front.url}/.auth/mfa?next=%2Fsecure%2Fx")
            # through nginx: a browser is sent to the factor page, an API call gets 401
            upstream.clear()
            browser = client.get("/secure/x", headers=HTML)
            assert browser.status_code == 302, browser.text
            assert browser.headers["location"] == f"{front.url}/.auth/mfa?next=%2Fsecure%2Fx"
            # (the example's @gateway_login answers its own fixed "unauthenticated" body)
            api = client.get("/secure/x", headers=JSON)
            assert api.status_code == 401
            assert not [r for r in upstream.requests if "/secure" in r.target]

            step_up(client)
            upstream.clear()
            ok = client.get("/secure/x", headers=JSON)
            assert ok.status_code == 200, ok.text
            rec = upstream.last()
            assert rec.header("x-user-id") == ["alice"]
            claims = jwt.decode(
                rec.header("x-gateway-assertion")[0], options={"verify_signature": False}
            )
            assert claims["amr"] == ["pwd", "otp"]
