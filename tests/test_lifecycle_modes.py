"""The users file's changes reach a signed-in user through every mode that is not the proxy.

The same lifecycle as tests/test_lifecycle.py (there in the proxy, in-process, on a FakeClock),
here through the ASGI middleware (a Starlette app under uvicorn), the WSGI middleware (a WSGI
app under werkzeug's server) and `/verify` of a `gateway run` process, asked directly with the
headers nginx's `auth_request` sends (examples/nginx.conf). Each is a real server on 127.0.0.1
with one config: `[auth] refresh = "1s"`, lazy revocation (the default, where nothing but the
refresh asks the source or the store before half of `access_ttl`), a real SQLite store and
users file. Time is real: a test waits just past the refresh (at most ~1.1 s).

- a user removed from the file is refused at the first request after the refresh: the browser
  is sent to the sign-in page (nginx is handed a 401 with the Location), an API call gets 401,
  the cookie is cleared and the session ended in the store;
- roles changed in the file are in the next request's `X-User-Roles`, assertion and token;
- `gateway users disable NAME` ends the sessions in the store and sign-in at once, and the
  live cookie is refused at the first request after the refresh.

Without the refresh all three would be served, with the old roles, until the re-issue at half
of `access_ttl` (300 s here). Each test signs in a user of its own, so one server per mode
serves the module.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from gateway import asgi, wsgi
from gateway.sources.file import remove_user, set_user
from tests.conftest import add_users, free_port, start_gateway, write_config
from tests.test_conformance import ROUTES, Seen, record_starlette, record_wsgi
from tests.test_lifecycle import API, COOKIE, claims_of, login, session_revoked, users_cmd
from tests.test_middleware import UvicornServer, WerkzeugServer

MODES = ["asgi", "wsgi", "verify"]
REFRESH = 1.0
ACCESS_TTL = 600
PASSWORD = "lifecycle-password-1"
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
IDENTITY = ("x-user-id", "x-user-roles", "x-gateway-assertion")
# trusted_proxies: /verify believes the X-Forwarded-* of the nginx it is asked by
EXTRA = f"""
[server]
trusted_proxies = ["127.0.0.1/32"]

[auth]
refresh = "{REFRESH:g}s"

[session]
access_ttl = "{ACCESS_TTL}s"
revocation = "lazy"
"""


@dataclass
class Mode:
    """One server with the gateway in it, and what the protected app was told per request."""

    name: str
    port: int
    config: Path
    seen: list[Seen] = field(default_factory=list)  # what the wrapped app received

    @property
    def public_url(self) -> str:
        return f"http://localhost:{self.port}"  # write_config's public_url

    @property
    def users_file(self) -> Path:
        return self.config.parent / "users.toml"

    def client(self, **kwargs: object) -> httpx.Client:
        url = f"http://127.0.0.1:{self.port}"
        return httpx.Client(base_url=url, follow_redirects=False, trust_env=False, **kwargs)

    def get(self, client: httpx.Client, path: str, headers: dict[str, str]) -> httpx.Response:
        """A GET of `path` on the app, or nginx's check of it: /verify with its headers."""
        self.seen.clear()
        if self.name != "verify":
            return client.get(path, headers=headers)
        asked = {
            "x-original-uri": path,
            "x-forwarded-method": "GET",
            "x-forwarded-host": f"localhost:{self.port}",
            "x-forwarded-proto": "http",
            "x-forwarded-for": "127.0.0.1",
        }
        return client.get("/.auth/verify", headers={**headers, **asked})

    def identity(self, response: httpx.Response) -> dict[str, str]:
        """The identity headers the app got: from the app itself, or nginx's copy of the verdict."""
        assert response.status_code == 200, response.text
        if self.name == "verify":
            headers = list(response.headers.items())
        else:
            (seen,) = self.seen
            headers = seen.headers
        found = [(name.lower(), value) for name, value in headers if name.lower() in IDENTITY]
        assert sorted(name for name, _ in found) == sorted(IDENTITY), found
        return dict(found)


@pytest.fixture(scope="module", params=MODES)
def mode(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mode]:
    port = free_port()
    directory = tmp_path_factory.mktemp(request.param)
    # the middleware reads the same file and ignores `upstream`; /verify never uses it
    config = write_config(
        directory, port, ROUTES.replace("{upstream}", "http://127.0.0.1:9"), EXTRA
    )
    add_users(directory / "users.toml")
    served = Mode(request.param, port, config)
    with contextlib.ExitStack() as running:
        if served.name == "asgi":
            app = asgi.GatewayMiddleware(record_starlette(served.seen), config)
            running.callback(UvicornServer(app, port).stop)
        elif served.name == "wsgi":
            middleware = wsgi.GatewayMiddleware(record_wsgi(served.seen), config)
            running.callback(middleware.close)
            running.callback(WerkzeugServer(middleware, port).stop)  # stopped first
        else:
            running.callback(start_gateway(config, port).stop)
        yield served


def new_user(mode: Mode) -> tuple[str, httpx.Client]:
    """A user of this test's own (role staff), added to the file and signed in."""
    name = f"u{uuid.uuid4().hex[:10]}"
    set_user(mode.users_file, name, PASSWORD, ("staff",))
    return name, login(mode, name, PASSWORD)


def served_as(mode: Mode, client: httpx.Client, name: str, roles: str) -> float:
    """A request is let in as `name` with `roles`; returns when it was answered."""
    identity = mode.identity(mode.get(client, "/app/x", API))
    assert (identity["x-user-id"], identity["x-user-roles"]) == (name, roles)
    return time.time()


def wait_past_refresh(answered: float) -> None:
    """Until a refresh is due for a token issued, or a source asked, before `answered`."""
    time.sleep(max(0.0, answered + REFRESH + 0.05 - time.time()))


def assert_refused(mode: Mode, response: httpx.Response, headers: dict[str, str]) -> None:
    """Refused as nobody, the cookie cleared: a browser is sent to sign in, an API call gets 401.

    nginx cannot pass a redirect on from `auth_request`: /verify answers it 401 with the
    Location, which examples/nginx.conf turns into the browser's 302.
    """
    browser = headers is BROWSER
    assert response.status_code == (302 if browser and mode.name != "verify" else 401)
    if browser:
        login_page = f"{mode.public_url}/.auth/login?next={quote('/app/x', safe='')}"
        assert response.headers["location"] == login_page
    else:
        assert response.json()["error"] == "unauthenticated"
    cleared = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")]
    assert cleared and all(c.startswith(f"{COOKIE}=;") for c in cleared), cleared


def test_a_user_removed_from_the_file_is_refused_at_the_first_request_after_refresh(mode: Mode):
    """Removed by editing the file, which ends nothing by itself: the refresh finds them gone.

    The browser holding the cookie is sent to sign in; the same token replayed by an API
    client gets 401; the session is ended in the store, for every replica.
    """
    name, client = new_user(mode)
    token = client.cookies[COOKIE]
    answered = served_as(mode, client, name, "staff")
    remove_user(mode.users_file, name)
    wait_past_refresh(answered)
    assert_refused(mode, mode.get(client, "/app/x", BROWSER), BROWSER)
    assert COOKIE not in client.cookies
    assert session_revoked(mode.config, claims_of(token)["sid"])
    with mode.client(cookies={COOKIE: token}) as replay:
        assert_refused(mode, mode.get(replay, "/app/x", API), API)


def test_changed_roles_are_in_the_next_request_after_refresh(mode: Mode):
    """Roles changed in the file: the next request after the refresh carries them in
    `X-User-Roles` and the assertion, and the re-issued cookie holds them; no new sign-in."""
    name, client = new_user(mode)
    answered = served_as(mode, client, name, "staff")
    set_user(mode.users_file, name, PASSWORD, ("staff", "ops"))
    wait_past_refresh(answered)
    identity = mode.identity(mode.get(client, "/app/x", API))
    assert identity["x-user-roles"] == "staff,ops"
    assert claims_of(identity["x-gateway-assertion"])["roles"] == ["staff", "ops"]
    assert claims_of(client.cookies[COOKIE])["roles"] == ["staff", "ops"]


def test_disable_ends_sign_in_and_the_sessions_at_once_and_the_cookie_at_refresh(mode: Mode):
    """`gateway users disable NAME`: the sessions are revoked in the store and sign-in is
    refused at once; the live cookie is refused at the first request after the refresh
    (lazy revocation asks the store no sooner; strict within 1 s, in tests/test_lifecycle.py)."""
    name, client = new_user(mode)
    sid = claims_of(client.cookies[COOKIE])["sid"]
    answered = served_as(mode, client, name, "staff")
    done = users_cmd(mode.config, "disable", name)
    assert f"revoked 1 session(s) of {name}" in done.stdout
    assert session_revoked(mode.config, sid)
    with mode.client() as again:
        refused = again.post("/.auth/login", json={"username": name, "password": PASSWORD})
        assert refused.status_code == 401
    wait_past_refresh(answered)
    assert_refused(mode, mode.get(client, "/app/x", API), API)
    assert COOKIE not in client.cookies
