"""Sign-in with OpenID Connect providers, against a real provider (panva's oidc-provider).

A gateway on 127.0.0.1 (public_url on 127.0.0.1 too, so the provider's redirect back reaches
the cookies the start set) with two providers beside the password form: `corp` (ids
`corp:<preferred_username>`, roles from `groups` with ops -> operators, verified emails of
corp.test only, client_secret_basic, RS256) and `other` (ids `other:<sub>`, roles from `groups`,
admin only, client_secret_post, ES256). The browser is an httpx client that keeps cookies for
both; it signs in at the provider through the provider's own pages (OidcProvider.authorize_as).

Every refusal is shown against the real provider or a token it signed (the provider rewrites
its next ID token on request, or `sign` signs a logout token with its key), and each test also
reads the gateway's log for the reason, so that a refusal for another reason does not pass.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import redis
import sqlalchemy
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization

from gateway.auth.oidc import BACKCHANNEL_EVENT, JWKS_REFETCH
from gateway.auth.sessions import STRICT_CACHE_SECONDS
from tests.conftest import (
    USERS,
    Gateway,
    add_users,
    closed_port,
    free_port,
    start_gateway,
    write_config,
)
from tests.oidc_server import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    OidcProvider,
    SigningKey,
    oidc_provider_fixture,  # noqa: F401
)
from tests.services import need, port_open
from tests.upstream import RecordingUpstream

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
COOKIE = "gw_session"
FLOW_COOKIE = "gw_session_oidc"
REPLICA_REDIS = "redis://127.0.0.1:6379/11"
REFRESH = 2.0  # the helper's [auth] refresh


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def routes(upstream: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "app"
        path = "/app"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "ops"
        path = "/ops"
        upstream = "{upstream}"
        auth = "required"
        roles = ["operators"]

        [[routes]]
        name = "api"
        path = "/api"
        upstream = "{upstream}"
        auth = "required"
        pass_access_token = true

        [[routes]]
        name = "tokened"
        path = "/tokened"
        upstream = "{upstream}"
        auth = "required"
        pass_access_token = true
        access_token_header = "X-Access-Token"

        [[routes]]
        name = "site"
        path = "/"
        upstream = "{upstream}"
        auth = "required"
        """
    )


class OidcGateway:
    """A gateway with the `corp` and `other` providers registered at `provider`.

    `url` is where this process listens, `base` its public_url. `auth` adds lines to [auth],
    `corp` / `other` to those providers' tables, `extra` adds other tables (not [server],
    [auth] or [keys]). `replica_of`: a replica of that gateway, as behind a load balancer: its
    public_url and its clients at the provider (give both the same `keys` and `store`).
    """

    def __init__(
        self,
        directory: Path,
        provider: OidcProvider,
        upstream: str,
        *,
        auth: str = "",
        corp: str = "",
        other: str = "",
        extra: str = "",
        store: str | None = None,
        keys: Path | None = None,
        replica_of: OidcGateway | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.provider = provider
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if replica_of is not None:
            self.base = replica_of.base
            self.corp_id, self.other_id = replica_of.corp_id, replica_of.other_id
            self.secret = replica_of.secret
        else:
            self.base = self.url
            self.corp_id = f"gw-corp-{secrets.token_hex(4)}"
            self.other_id = f"gw-other-{secrets.token_hex(4)}"
            self.secret = secrets.token_urlsafe(24)
            self._register()
        # write_config reads table headers at the start of a line: no indentation here
        settings = "\n".join(
            ["[server]", f'public_url = "{self.base}"', "[auth]", f'refresh = "{REFRESH:g}s"', auth]
            + (["[keys]", f'dir = "{keys}"'] if keys is not None else [])
        )
        providers = f"""
            [[auth.oidc]]
            name = "corp"
            title = "Sign in with Corp"
            issuer = "{provider.issuer}"
            client_id = "{self.corp_id}"
            client_secret = "{self.secret}"
            scopes = ["openid", "profile", "email", "groups", "offline_access"]
            user_claim = "preferred_username"
            roles_claim = "groups"
            role_map = {{ ops = "operators" }}
            id_prefix = "corp:"
            end_session = true
            {corp}

            [[auth.oidc]]
            name = "other"
            issuer = "{provider.issuer}"
            client_id = "{self.other_id}"
            client_secret = "{self.secret}"
            token_endpoint_auth_method = "client_secret_post"
            scopes = ["openid", "profile", "email", "groups", "offline_access"]
            id_prefix = "other:"
            {other}
            """
        config = write_config(
            directory,
            self.port,
            routes(upstream) + textwrap.dedent(providers),
            settings + "\n" + textwrap.dedent(extra),
            store,
        )
        add_users(directory / "users.toml", USERS)
        self.gw: Gateway = start_gateway(config, self.port)

    def _register(self) -> None:
        callback = f"{self.base}/.auth/oidc/{{}}/callback"
        self.provider.add_client(
            self.corp_id,
            client_secret=self.secret,
            redirect_uris=[callback.format("corp")],
            post_logout_redirect_uris=[f"{self.base}/.auth/login"],
            backchannel_logout_uri=f"{self.base}/.auth/oidc/corp/backchannel",
        )
        self.provider.add_client(
            self.other_id,
            client_secret=self.secret,
            redirect_uris=[callback.format("other")],
            token_endpoint_auth_method="client_secret_post",
            id_token_signed_response_alg="ES256",
        )

    def browser(self) -> httpx.Client:
        return httpx.Client(follow_redirects=False, trust_env=False, timeout=20)

    def start(self, browser: httpx.Client, next_path: str = "/app/page", name: str = "corp") -> str:
        """GET start: the authorization URL the gateway sends the browser to."""
        start = browser.get(f"{self.base}/.auth/oidc/{name}/start", params={"next": next_path})
        assert start.status_code == 302, start.text
        return start.headers["location"]

    def at_provider(self, browser: httpx.Client, sub: str, url: str, name: str = "corp") -> str:
        """Sign in at the provider's own pages: the callback URL it sends the browser back to."""
        back = self.provider.authorize_as(sub, url, http=browser)
        assert back.startswith(f"{self.base}/.auth/oidc/{name}/callback?"), back
        return back

    def sign_in(
        self, browser: httpx.Client, sub: str, next_path: str = "/app/page", name: str = "corp"
    ) -> httpx.Response:
        """Start at the gateway, sign in at the provider, come back: the callback's answer."""
        back = self.at_provider(browser, sub, self.start(browser, next_path, name), name)
        return browser.get(back)

    def signed_in(self, sub: str, name: str = "corp") -> httpx.Client:
        """A browser holding a session of `sub` from provider `name`."""
        browser = self.browser()
        done = self.sign_in(browser, sub, name=name)
        assert done.status_code == 303, done.text
        return browser

    def me(self, browser: httpx.Client, at: str | None = None) -> httpx.Response:
        return browser.get(f"{at or self.base}/.auth/me", headers=JSON)

    def mark(self) -> int:
        """Where the log ends now (for `logs_since`)."""
        return len(self.gw.logs())

    def logs_since(self, mark: int) -> str:
        return self.gw.logs()[mark:]

    def stop(self) -> None:
        self.gw.stop()


@pytest.fixture(scope="module")
def corp(tmp_path_factory, oidc_provider, upstream) -> Iterator[OidcGateway]:
    gw = OidcGateway(
        tmp_path_factory.mktemp("oidc-gw"),
        oidc_provider,
        upstream.url,
        corp='allowed_domains = ["corp.test"]',
        other='roles_claim = "groups"\nallowed_roles = ["admin"]',
        extra='[session]\nrevocation = "strict"',
    )
    yield gw
    gw.stop()


def events(provider: OidcProvider, since: int, kind: str, client_id: str) -> list[dict]:
    return [e for e in provider.events(since) if e["type"] == kind and e["client_id"] == client_id]


def event_mark(provider: OidcProvider) -> int:
    return provider.state()["events"]


def session_cookie(browser: httpx.Client) -> str:
    return browser.cookies[COOKIE]


def with_cookie(token: str) -> httpx.Client:
    """A client that sends this session cookie and nothing else (a copied cookie)."""
    return httpx.Client(trust_env=False, cookies={COOKIE: token}, timeout=20)


def refused_page(response: httpx.Response, status: int, title: str) -> str:
    """The gateway's HTML message page with this status and title, no session cookie set."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in response.text, response.text
    assert "Traceback" not in response.text
    assert not any(
        c.startswith(f"{COOKIE}=") and "Max-Age=0" not in c
        for c in response.headers.get_list("set-cookie")
    )
    return response.text


def id_token_of_logout(corp: OidcGateway, browser: httpx.Client) -> tuple[str, httpx.Response]:
    """Sign out at the gateway (corp has end_session): the id_token_hint it sends on, and the
    logout response."""
    out = browser.post(f"{corp.base}/.auth/logout", headers={"origin": corp.base})
    assert out.status_code == 303, out.text
    query = parse_qs(urlsplit(out.headers["location"]).query)
    return query["id_token_hint"][0], out


def provider_claims(provider: OidcProvider, token: str, audience: str) -> dict[str, Any]:
    """An ID token's claims, verified with the provider's public key that `kid` names."""
    header = jwt.get_unverified_header(token)
    key = next(k for k in provider.keys if k.kid == header["kid"])
    return jwt.decode(
        token, key.private_key.public_key(), algorithms=[header["alg"]], audience=audience
    )


# -- signing in -------------------------------------------------------------------------------


def test_a_browser_signs_in_at_the_provider_and_reaches_the_app(corp, upstream):
    browser = corp.browser()
    first = browser.get(f"{corp.base}/app/page?x=1", headers=HTML)
    assert first.status_code == 302
    login = browser.get(first.headers["location"])
    assert "Sign in with Corp" in login.text and 'name="password"' in login.text
    done = corp.sign_in(browser, ALICE.sub, "/app/page?x=1")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{corp.base}/app/page?x=1"
    upstream.clear()
    page = browser.get(done.headers["location"])
    assert page.status_code == 200
    assert upstream.last().header("x-user-id") == ["corp:alice"]
    # groups staff, ops: role_map makes ops our operators
    assert upstream.last().header("x-user-roles") == ["staff,operators"]
    me = browser.get(f"{corp.base}/.auth/me").json()
    assert me["sub"] == "corp:alice" and me["amr"] == ["oidc"]
    assert browser.get(f"{corp.base}/ops/x").status_code == 200
    # the flow cookie is spent: cleared at the callback
    assert FLOW_COOKIE not in browser.cookies


def test_the_sign_in_page_offers_both_providers_beside_the_password_form(corp):
    page = corp.browser().get(f"{corp.base}/.auth/login", params={"next": "/app/x?y=1"})
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'name="password"' in page.text
    assert 'href="/.auth/oidc/corp/start?next=%2Fapp%2Fx%3Fy%3D1">Sign in with Corp<' in page.text
    # no title configured: the provider's name
    assert 'href="/.auth/oidc/other/start?next=%2Fapp%2Fx%3Fy%3D1">Sign in with other<' in page.text


def test_each_provider_uses_its_own_client_authentication_and_key_type(corp, oidc_provider):
    provider = oidc_provider
    since = event_mark(provider)
    alice = corp.signed_in(ALICE.sub, "corp")
    bob = corp.signed_in(BOB.sub, "other")
    assert corp.me(alice).json()["sub"] == "corp:alice"
    me = corp.me(bob).json()
    # `other` has no user_claim: the provider's sub, behind its own prefix
    assert me["sub"] == f"other:{BOB.sub}" and me["roles"] == ["staff", "admin"]
    # the provider (strict_client_auth) refuses a client that authenticates another way
    basic = events(provider, since, "token.request", corp.corp_id)
    post = events(provider, since, "token.request", corp.other_id)
    assert [e["auth_method"] for e in basic] == ["client_secret_basic"]
    assert [e["auth_method"] for e in post] == ["client_secret_post"]


@pytest.mark.parametrize(
    ("next_path", "lands_on"),
    [
        ("/app/deep/page?a=1&b=two#frag", "/app/deep/page?a=1&b=two#frag"),
        ("/app/x?next=%2F%2Fevil.test", "/app/x?next=%2F%2Fevil.test"),
        ("https://evil.test/steal", "/"),
        ("//evil.test/steal", "/"),
        ("/\\evil.test/steal", "/"),
        ("javascript:alert(1)", "/"),
    ],
    ids=[
        "a path with its query survives the round trip",
        "a path whose query names another site is still a path here",
        "an absolute next to another site falls back to the root",
        "a scheme-relative next falls back to the root",
        "a backslash next falls back to the root",
        "a javascript next falls back to the root",
    ],
)
def test_next_survives_the_round_trip_through_the_provider(corp, next_path, lands_on):
    done = corp.sign_in(corp.browser(), ALICE.sub, next_path)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == corp.base + lands_on


def test_claims_missing_from_the_id_token_come_from_userinfo(corp, oidc_provider):
    oidc_provider.configure(claims_in_id_token=False)
    try:
        browser = corp.signed_in(ALICE.sub)
        me = corp.me(browser).json()
        id_token, _ = id_token_of_logout(corp, browser)
    finally:
        oidc_provider.configure(claims_in_id_token=True)
    claims = provider_claims(oidc_provider, id_token, corp.corp_id)
    # the ID token names nobody but the sub: the name, the groups and the email (for
    # allowed_domains) came from userinfo
    assert claims["sub"] == ALICE.sub
    assert not {"preferred_username", "groups", "email", "email_verified"} & set(claims)
    assert me["sub"] == "corp:alice" and me["roles"] == ["staff", "operators"]


# -- ID tokens the gateway refuses --------------------------------------------------------------


class OctKey:
    """The provider's RSA public key as an HMAC secret (the RS256/HS256 confusion attack)."""

    def __init__(self, provider: OidcProvider) -> None:
        rsa = provider.signing_key("RS256")
        self.kid = rsa.kid
        pem = rsa.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.secret = jwt.utils.base64url_encode(pem).decode()

    def private_jwk(self) -> dict[str, str]:
        return {"kty": "oct", "k": self.secret, "kid": self.kid}


Override = Callable[[OidcProvider, OidcGateway], dict[str, Any]]
ID_TOKEN_REFUSALS: list[tuple[str, str, Override]] = [
    ("a wrong nonce", "nonce", lambda p, g: {"claims": {"nonce": "not-the-flows-nonce"}}),
    ("no nonce", "nonce", lambda p, g: {"claims": {"nonce": None}}),
    # hmac.compare_digest raises TypeError on a non-ASCII str: a 500, once
    ("a non-ASCII nonce", "nonce", lambda p, g: {"claims": {"nonce": "\u00e9t\u00e9"}}),
    (
        "one signed by a key the provider never published",
        "unknown_key",
        lambda p, g: {"key": SigningKey.generate("RSA")},
    ),
    (
        "one signed by another key under the provider's kid",
        "signature",
        lambda p, g: {
            "key": SigningKey.generate("RSA"),
            "header": {"kid": p.signing_key("RS256").kid},
        },
    ),
    ("alg none", "algorithm", lambda p, g: {"header": {"alg": "none"}}),
    (
        "HS256 keyed with the provider's public key",
        "algorithm",
        lambda p, g: {"key": OctKey(p), "header": {"alg": "HS256", "kid": OctKey(p).kid}},
    ),
    (
        "an expired one",
        "expired",
        lambda p, g: {"claims": {"exp": int(time.time()) - 120, "iat": int(time.time()) - 300}},
    ),
    (
        "one issued long ago",
        "too_old",
        lambda p, g: {"claims": {"iat": int(time.time()) - 3600}},
    ),
    ("a wrong aud", "audience", lambda p, g: {"claims": {"aud": "another-rp"}}),
    ("another issuer", "issuer", lambda p, g: {"claims": {"iss": "http://127.0.0.1:1"}}),
    (
        "several audiences without azp",
        "azp",
        lambda p, g: {"claims": {"aud": [g.corp_id, "another-rp"], "azp": None}},
    ),
    (
        "several audiences with azp naming another client",
        "azp",
        lambda p, g: {"claims": {"aud": [g.corp_id, "another-rp"], "azp": "another-rp"}},
    ),
    (
        "a header that names where to fetch its key",
        "forbidden_header",
        lambda p, g: {"header": {"jku": "http://127.0.0.1:1/jwks"}},
    ),
]


@pytest.mark.parametrize(
    ("reason", "override"),
    [case[1:] for case in ID_TOKEN_REFUSALS],
    ids=[f"an ID token with {case[0]} is refused" for case in ID_TOKEN_REFUSALS],
)
def test_an_id_token_the_gateway_cannot_trust_signs_nobody_in(
    corp, oidc_provider, reason: str, override: Override
):
    browser = corp.browser()
    back = corp.at_provider(browser, ALICE.sub, corp.start(browser))
    mark = corp.mark()
    oidc_provider.override_next_id_token(client_id=corp.corp_id, **override(oidc_provider, corp))
    done = browser.get(back)
    text = refused_page(done, 403, "Sign-in failed")
    assert "could not be trusted" in text
    assert corp.me(browser).status_code == 401
    assert f"oidc corp: sign-in refused: {reason}" in corp.logs_since(mark)


def test_several_audiences_are_accepted_with_azp_naming_the_gateway(corp, oidc_provider):
    browser = corp.browser()
    back = corp.at_provider(browser, ALICE.sub, corp.start(browser))
    audiences = {"aud": [corp.corp_id, "another-rp"], "azp": corp.corp_id}
    oidc_provider.override_next_id_token(client_id=corp.corp_id, claims=audiences)
    done = browser.get(back)
    assert done.status_code == 303, done.text
    id_token, _ = id_token_of_logout(corp, browser)
    assert provider_claims(oidc_provider, id_token, corp.corp_id)["aud"] == audiences["aud"]


# -- state, code and the flow cookie ----------------------------------------------------------


def _tamper(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | params
    return parts._replace(query=httpx.QueryParams(query).__str__()).geturl()


def test_a_wrong_state_restarts_sign_in_once_without_using_the_code(corp, oidc_provider):
    browser = corp.browser()
    back = corp.at_provider(browser, ALICE.sub, corp.start(browser, "/app/after"))
    state = parse_qs(urlsplit(back).query)["state"][0]
    since = event_mark(oidc_provider)
    again = browser.get(_tamper(back, state=state[::-1]))
    # a new flow at the provider, no session, and the code sent with the wrong state unused
    assert again.status_code == 302
    assert again.headers["location"].startswith(f"{oidc_provider.issuer}/auth?")
    assert parse_qs(urlsplit(again.headers["location"]).query)["state"][0] != state
    assert COOKIE not in browser.cookies
    assert events(oidc_provider, since, "token.request", corp.corp_id) == []
    # the provider remembers the browser: the new flow comes straight back, and signs in
    done = browser.get(corp.at_provider(browser, ALICE.sub, again.headers["location"]))
    assert done.status_code == 303
    assert done.headers["location"] == f"{corp.base}/app/after"
    assert corp.me(browser).json()["sub"] == "corp:alice"


@pytest.mark.parametrize(
    "state", ["\u00e9", "r.\u00e9", "\u00ff" * 24], ids=["e-acute", "retry mark", "latin-1"]
)
def test_a_non_ascii_state_is_a_wrong_state_not_an_error(corp, oidc_provider, state):
    browser = corp.browser()
    corp.start(browser)
    mark = corp.mark()
    callback = f"{corp.base}/.auth/oidc/corp/callback"
    again = browser.get(callback, params={"state": state, "code": "x"})
    if state.startswith("r."):
        # it says it is the retry already: the page, not a third trip
        refused_page(again, 400, "Sign-in expired")
    else:
        # the bad-state handling: sign in again, once
        assert again.status_code == 302, again.text
        assert again.headers["location"].startswith(f"{oidc_provider.issuer}/auth?")
    assert COOKIE not in browser.cookies
    logs = corp.logs_since(mark)
    assert "Traceback" not in logs and "oidc_state" in logs


def test_a_non_ascii_flow_cookie_is_no_flow_not_an_error(corp, oidc_provider):
    callback = f"{corp.base}/.auth/oidc/corp/callback?state=abc&code=x"
    with httpx.Client(trust_env=False, timeout=20) as browser:
        again = browser.get(callback, headers={"cookie": f"{FLOW_COOKIE}=\u00e9".encode()})
    assert again.status_code == 302, again.text
    assert again.headers["location"].startswith(f"{oidc_provider.issuer}/auth?")


def walk(
    corp: OidcGateway, browser: httpx.Client, url: str, drop: tuple[str, ...], limit: int = 10
) -> tuple[httpx.Response, int]:
    """Follow the flow as a browser that keeps none of the cookies `drop` names: the
    gateway's last answer and how many times the provider sent the browser back."""
    callbacks = 0
    for _ in range(limit):
        if url.startswith(corp.provider.issuer):
            url = corp.at_provider(browser, ALICE.sub, url)
            callbacks += 1
        response = browser.get(url)
        for name in drop:
            browser.cookies.delete(name)
        if not response.is_redirect:
            return response, callbacks
        url = response.headers["location"]
    raise AssertionError(f"a redirect loop: still redirecting after {limit} hops")


@pytest.mark.parametrize(
    "drop",
    [(FLOW_COOKIE,), (FLOW_COOKIE, f"{COOKIE}_oidc_retry")],
    ids=["a lost flow cookie", "a browser that keeps no cookie of the flow"],
)
def test_a_lost_flow_restarts_once_then_shows_a_page_not_a_loop(corp, drop):
    browser = corp.browser()
    start = f"{corp.base}/.auth/oidc/corp/start?next=%2Fapp%2Fx"
    page, callbacks = walk(corp, browser, start, drop)
    # start -> provider -> callback (lost: start again once) -> provider -> callback: a page
    assert callbacks == 2
    text = refused_page(page, 400, "Sign-in expired")
    # the lost flow took `next` with it: the page offers a fresh start
    assert 'href="/.auth/oidc/corp/start?next=%2F">Try again<' in text
    assert corp.me(browser).status_code == 401


def test_a_replayed_callback_never_uses_its_code_again(corp, oidc_provider):
    browser = corp.browser()
    back = corp.at_provider(browser, ALICE.sub, corp.start(browser))
    flow = browser.cookies[FLOW_COOKIE]
    assert browser.get(back).status_code == 303
    since = event_mark(oidc_provider)
    # the same request again, flow cookie and all (a resent request, a copied cookie): the
    # flow was deleted as it was read
    resent = httpx.Client(trust_env=False, cookies={FLOW_COOKIE: flow})
    again = resent.get(back)
    assert again.status_code == 302
    assert again.headers["location"].startswith(f"{oidc_provider.issuer}/auth?")
    # the same browser, or another one that copied the URL: the flow is spent
    for replay in (browser, corp.browser()):
        again = replay.get(back)
        assert again.status_code == 302
        assert again.headers["location"].startswith(f"{oidc_provider.issuer}/auth?")
    attacker = corp.browser()
    attacker.get(back)
    second = attacker.get(back)  # the retry is spent too: a page, no third trip
    refused_page(second, 400, "Sign-in expired")
    assert events(oidc_provider, since, "token.request", corp.corp_id) == []
    assert corp.me(attacker).status_code == 401


def test_a_code_from_another_flow_is_refused_by_the_provider(corp, oidc_provider):
    victim = corp.browser()
    stolen = corp.at_provider(victim, ALICE.sub, corp.start(victim))
    code = parse_qs(urlsplit(stolen).query)["code"][0]
    # the attacker starts a flow of their own and brings the victim's code back with its state
    attacker = corp.browser()
    own = parse_qs(urlsplit(corp.start(attacker)).query)["state"][0]
    callback = f"{corp.base}/.auth/oidc/corp/callback"
    since = event_mark(oidc_provider)
    mark = corp.mark()
    done = attacker.get(callback, params={"code": code, "state": own})
    refused_page(done, 403, "Sign-in failed")
    # the code is bound to the victim's PKCE challenge: the attacker's verifier does not fit
    errors = events(oidc_provider, since, "grant.error", corp.corp_id)
    assert [e["error"] for e in errors] == ["invalid_grant"]
    assert "sign-in refused: refused" in corp.logs_since(mark)
    assert corp.me(attacker).status_code == 401


def test_sign_in_cancelled_at_the_provider_shows_a_page(corp):
    browser = corp.browser()
    url = corp.start(browser)
    issuer = corp.provider.issuer
    for _ in range(5):  # to the provider's login page
        response = browser.get(url)
        if not response.is_redirect:
            break
        url = httpx.URL(url).join(response.headers["location"]).__str__()
    assert 'data-prompt="login"' in response.text
    url = f"{url}/abort"
    for _ in range(5):  # the provider answers access_denied at the callback
        response = browser.get(url)
        url = httpx.URL(url).join(response.headers["location"]).__str__()
        if not url.startswith(issuer):
            break
    assert parse_qs(urlsplit(url).query)["error"] == ["access_denied"]
    text = refused_page(browser.get(url), 403, "Sign-in cancelled")
    assert "Sign in with Corp was cancelled or refused" in text


# -- who may sign in ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "says"),
    [
        (CAROL, "Your email address is not verified at the provider."),
        (DAVE, "Accounts of elsewhere.test cannot sign in here."),
    ],
    ids=["an unverified email is refused", "an email of a domain not allowed is refused"],
)
def test_allowed_domains_needs_a_verified_email_of_those_domains(corp, account, says):
    mark = corp.mark()
    browser = corp.browser()
    text = refused_page(corp.sign_in(browser, account.sub), 403, "Access denied")
    assert says in text
    assert corp.me(browser).status_code == 401
    code = "oidc_email_unverified" if account is CAROL else "oidc_domain"
    assert f"oidc corp: not allowed: {code}" in corp.logs_since(mark)


@pytest.mark.parametrize(
    "username",
    ["\uff21\uff2c\uff29\uff23\uff25", "alice\u00a0", "alice\u2028", " alice", "\u212alice"],
    ids=[
        "fullwidth ALICE",
        "a no-break space",
        "a line separator",
        "a leading space",
        "a Kelvin sign",
    ],
)
def test_a_username_that_only_normalizes_to_another_users_is_refused(corp, oidc_provider, username):
    # another provider account whose preferred_username NFKC, trimming or lower-casing makes
    # `alice`: it must never sign in as corp:alice (and manage her sessions)
    sub = f"mallory-{secrets.token_hex(4)}"
    oidc_provider.add_account(
        sub, preferred_username=username, email=f"{sub}@corp.test", groups=["staff"]
    )
    mark = corp.mark()
    browser = corp.browser()
    text = refused_page(corp.sign_in(browser, sub), 403, "Access denied")
    assert "name cannot be used here." in text
    assert corp.me(browser).status_code == 401
    assert "oidc corp: not allowed: oidc_bad_user" in corp.logs_since(mark)


def test_a_username_differing_in_ascii_case_only_is_the_same_user(corp, oidc_provider):
    # ASCII case variants are one user, as at every other source: `Alice` is corp:alice
    sub = f"alice-upper-{secrets.token_hex(4)}"
    oidc_provider.add_account(
        sub, preferred_username="ALICE", email=f"{sub}@corp.test", groups=["staff"]
    )
    assert corp.me(corp.signed_in(sub)).json()["sub"] == "corp:alice"
    # a name that is canonical already, non-ASCII included, signs in as itself
    other = f"elise-{secrets.token_hex(4)}"
    oidc_provider.add_account(
        other, preferred_username="\u00e9lise", email=f"{other}@corp.test", groups=["staff"]
    )
    assert corp.me(corp.signed_in(other)).json()["sub"] == "corp:\u00e9lise"


def test_allowed_roles_refuses_with_a_page_that_says_why(corp):
    browser = corp.browser()
    # `other` admits admins only: alice (staff, ops) is not one, bob is
    text = refused_page(corp.sign_in(browser, ALICE.sub, name="other"), 403, "Access denied")
    assert "Your account has none of the roles this site admits." in text
    assert corp.me(browser).status_code == 401
    assert corp.sign_in(corp.browser(), BOB.sub, name="other").status_code == 303


# -- the provider's state: outages, keys, accounts ----------------------------------------------


def test_the_provider_down_gives_a_502_page_and_signed_in_users_keep_their_session(
    tmp_path, oidc_provider, upstream
):
    # a gateway of its own: lazy revocation, and `other` not discovered yet
    gw = OidcGateway(tmp_path / "gw", oidc_provider, upstream.url)
    try:
        signed_in = gw.signed_in(ALICE.sub)
        browser = gw.browser()
        back = gw.at_provider(browser, ALICE.sub, gw.start(browser))
        oidc_provider.take_down()
        try:
            # discovery fails at the start; the token endpoint fails at the callback
            text = refused_page(
                browser.get(f"{gw.base}/.auth/oidc/other/start"), 502, "Sign-in service unavailable"
            )
            assert "other cannot be reached just now" in text
            text = refused_page(browser.get(back), 502, "Sign-in service unavailable")
            assert "Sign in with Corp cannot be reached just now" in text
            # a session from before: its refresh cannot reach the provider; it is not ended
            time.sleep(REFRESH + 0.2)
            assert signed_in.get(f"{gw.base}/app/x").status_code == 200
        finally:
            oidc_provider.bring_up()
        assert "Traceback" not in gw.gw.logs()
    finally:
        gw.stop()


class DrippingProvider:
    """A fake provider on 127.0.0.1 that answers `slow` (discovery, token, jwks or userinfo)
    one byte every DRIP seconds: each read comes well within httpx's timeout, the whole answer
    never within the provider's `timeout`. Everything else answers at once."""

    DRIP = 0.2

    def __init__(self, slow: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography.hazmat.primitives.asymmetric import rsa

        self.slow = slow
        self.nonce = ""
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.stopped = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.answer(self)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                fake.answer(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _bodies(self, client_id: str) -> dict[str, dict[str, Any]]:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": "u1", "aud": client_id, "iat": now, "exp": now + 300}
        id_token = jwt.encode(
            claims | {"nonce": self.nonce}, self.key, algorithm="RS256", headers={"kid": "k1"}
        )
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {
            "/.well-known/openid-configuration": {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/auth",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "userinfo_endpoint": f"{self.issuer}/userinfo",
                "id_token_signing_alg_values_supported": ["RS256"],
            },
            "/token": {
                "access_token": "at-" + secrets.token_urlsafe(8),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            },
            "/jwks": {"keys": [jwk | {"kid": "k1", "alg": "RS256", "use": "sig"}]},
            # the ID token names nobody but the sub: the username comes from userinfo
            "/userinfo": {"sub": "u1", "preferred_username": "slowpoke"},
        }

    def answer(self, handler: Any) -> None:
        path = handler.path.split("?", 1)[0]
        name = {"/.well-known/openid-configuration": "discovery"}.get(path, path.strip("/"))
        body = json.dumps(self._bodies("gw-slow").get(path, {})).encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.end_headers()
        if name != self.slow:
            handler.wfile.write(body)
            return
        for i in range(len(body)):
            if self.stopped.wait(self.DRIP):
                return
            try:
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
            except OSError:
                return  # the gateway gave up and closed the connection

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("slow", ["discovery", "token", "jwks", "userinfo", "nothing"])
def test_a_provider_that_drips_its_answer_gives_a_502_within_the_timeout(tmp_path, slow):
    fake = DrippingProvider(slow)
    port = free_port()
    provider = f"""
        [[auth.oidc]]
        name = "slow"
        issuer = "{fake.issuer}"
        client_id = "gw-slow"
        client_secret = "slow-secret-0123456789"
        user_claim = "preferred_username"
        id_prefix = "slow:"
        timeout = "1s"
        """
    config = write_config(tmp_path, port, routes(f"http://127.0.0.1:{closed_port()}"), "")
    config.write_text(config.read_text() + textwrap.dedent(provider))
    add_users(tmp_path / "users.toml", USERS)
    gw = start_gateway(config, port)
    try:
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=8) as browser:
            started = time.monotonic()
            start = browser.get("/.auth/oidc/slow/start", params={"next": "/app/x"})
            if slow == "discovery":
                answer = start
            else:
                assert start.status_code == 302, start.text
                query = parse_qs(urlsplit(start.headers["location"]).query)
                fake.nonce = query["nonce"][0]
                started = time.monotonic()
                answer = browser.get(
                    "/.auth/oidc/slow/callback", params={"state": query["state"][0], "code": "c"}
                )
            elapsed = time.monotonic() - started
            me = browser.get("/.auth/me", headers=JSON)
        if slow == "nothing":
            # the control: the fake provider signs in when nothing drips
            assert answer.status_code == 303, answer.text
            assert me.json()["sub"] == "slow:slowpoke"
            return
        text = refused_page(answer, 502, "Sign-in service unavailable")
        assert "slow cannot be reached just now" in text
        # one whole-call deadline of 1 s (the JWKS after the token call: two at most)
        assert elapsed < 3.5, elapsed
        assert "no answer within 1s" in gw.logs()
    finally:
        gw.stop()
        fake.close()


def test_a_key_rotation_at_the_provider_is_picked_up_even_after_made_up_key_ids(
    corp, oidc_provider
):
    before = corp.signed_in(ALICE.sub)
    before_at = time.monotonic()
    old_kid = oidc_provider.signing_key("RS256").kid
    # anyone may POST a logout token: one under a made-up kid makes the gateway fetch the
    # JWKS (or finds it fetched less than JWKS_REFETCH ago), just before the provider rotates
    made_up = logout_token(oidc_provider, corp, ALICE.sub, key=SigningKey.generate("RSA"))
    assert post_logout_token(corp, made_up).status_code == 400
    new = oidc_provider.rotate_keys("RSA", keep_old=False)
    started = time.monotonic()
    browser = corp.signed_in(ALICE.sub)
    # the new kid waits for the next fetch the rate allows, rather than being refused
    assert time.monotonic() - started < JWKS_REFETCH + 2
    id_token, _ = id_token_of_logout(corp, browser)
    assert jwt.get_unverified_header(id_token)["kid"] == new.kid != old_kid
    # the session from before the rotation refreshes with ID tokens under the new key
    time.sleep(max(0.0, before_at + REFRESH + 0.2 - time.monotonic()))
    assert before.get(f"{corp.base}/app/x").status_code == 200
    id_token, _ = id_token_of_logout(corp, before)
    assert jwt.get_unverified_header(id_token)["kid"] == new.kid


def test_a_user_disabled_at_the_provider_loses_access_within_refresh(corp, oidc_provider):
    erin = oidc_provider.add_account(
        "erin-0005", preferred_username="erin", email="erin@corp.test", groups=["staff"]
    )
    browser = corp.signed_in(erin.sub)
    # a refresh at the provider while enabled keeps the session
    time.sleep(REFRESH + 0.2)
    assert browser.get(f"{corp.base}/app/x").status_code == 200
    oidc_provider.disable(erin.sub)
    assert browser.get(f"{corp.base}/app/x").status_code == 200  # until the next refresh
    time.sleep(REFRESH + 0.2)
    assert browser.get(f"{corp.base}/app/x", headers=JSON).status_code == 401
    assert corp.me(browser).status_code == 401


def parallel(token: str, urls: list[str]) -> list[int]:
    """GET {url}/app/x for each URL at once, all with this session cookie: the statuses."""

    def get(url: str) -> int:
        with with_cookie(token) as client:
            return client.get(f"{url}/app/x", headers=JSON).status_code

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(get, urls))


def token_requests(provider: OidcProvider, since: int, client_id: str, grant: str) -> list:
    found = events(provider, since, "token.request", client_id)
    return [e for e in found if e["grant_type"] == grant]


def test_parallel_requests_at_refresh_time_share_one_refresh(corp, oidc_provider):
    # a provider that rotates refresh tokens and, seeing one used twice, revokes the grant
    oidc_provider.configure(rotate_refresh_tokens=True)
    try:
        token = session_cookie(corp.signed_in(ALICE.sub))
        time.sleep(REFRESH + 0.2)
        since = event_mark(oidc_provider)
        assert parallel(token, [corp.url] * 6) == [200] * 6
        assert len(token_requests(oidc_provider, since, corp.corp_id, "refresh_token")) == 1
        # the rotated refresh token is the one kept: the next refresh goes through too
        time.sleep(REFRESH + 0.2)
        assert parallel(token, [corp.url] * 2) == [200] * 2
        assert len(token_requests(oidc_provider, since, corp.corp_id, "refresh_token")) == 2
    finally:
        oidc_provider.configure(rotate_refresh_tokens=False)


def test_roles_changed_at_the_provider_arrive_at_the_next_refresh(corp, oidc_provider, upstream):
    account = dict(preferred_username="frank", email="frank@corp.test")
    frank = oidc_provider.add_account("frank-0006", groups=["staff"], **account)
    browser = corp.signed_in(frank.sub)
    assert browser.get(f"{corp.base}/ops/x").status_code == 403
    oidc_provider.add_account(
        frank.sub, password=frank.password, groups=["staff", "ops"], **account
    )
    time.sleep(REFRESH + 0.2)
    upstream.clear()
    assert browser.get(f"{corp.base}/ops/x").status_code == 200
    assert upstream.last().header("x-user-roles") == ["staff,operators"]


# -- signing out ------------------------------------------------------------------------------


def test_logout_continues_to_the_providers_end_session_endpoint(corp, oidc_provider):
    browser = corp.signed_in(ALICE.sub)
    token = session_cookie(browser)
    id_token, out = id_token_of_logout(corp, browser)
    location = urlsplit(out.headers["location"])
    end_session = oidc_provider.discovery()["end_session_endpoint"]
    assert f"{location.scheme}://{location.netloc}{location.path}" == end_session
    query = parse_qs(location.query)
    assert query["client_id"] == [corp.corp_id]
    assert query["post_logout_redirect_uri"] == [f"{corp.base}/.auth/login"]
    assert provider_claims(oidc_provider, id_token, corp.corp_id)["sub"] == ALICE.sub
    assert with_cookie(token).get(f"{corp.base}/.auth/me").status_code == 401
    # the provider takes the hint and the redirect: it signs the browser out and sends it back
    assert oidc_provider.end_session(out.headers["location"], http=browser) == (
        f"{corp.base}/.auth/login"
    )


def test_logout_of_a_provider_without_end_session_stays_at_the_gateway(corp):
    browser = corp.signed_in(BOB.sub, "other")
    out = browser.post(f"{corp.base}/.auth/logout", headers={"origin": corp.base})
    assert out.status_code == 303
    assert out.headers["location"] == f"{corp.base}/.auth/login"


def test_the_provider_signing_the_user_out_ends_the_session_by_back_channel(corp, oidc_provider):
    browser = corp.signed_in(ALICE.sub)
    other_session = corp.signed_in(ALICE.sub)
    since = event_mark(oidc_provider)
    # the user signs out at the provider itself (no hint): it tells the gateway, with its sid
    done = oidc_provider.end_session(
        f"{oidc_provider.issuer}/session/end?client_id={corp.corp_id}", http=browser
    )
    assert "session/end" in done
    sent = events(oidc_provider, since, "backchannel.success", corp.corp_id)
    assert len(sent) == 1 and sent[0]["sid"]
    assert corp.me(browser).status_code == 401
    # by sid: the provider session signed out; another one of the same user lives on
    assert corp.me(other_session).status_code == 200
    # by sub (no sid): every session of the user at this provider
    assert oidc_provider.backchannel_logout(corp.corp_id, ALICE.sub)["type"] == (
        "backchannel.success"
    )
    assert corp.me(other_session).status_code == 401


def logout_token(
    provider: OidcProvider,
    gw: OidcGateway,
    sub: str,
    changes: dict[str, Any] | None = None,
    key: SigningKey | None = None,
) -> str:
    """A logout token as the provider signs them (or `key`), with `changes` (None removes a
    claim)."""
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "aud": gw.corp_id,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(12),
        "sub": sub,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    for name, value in (changes or {}).items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return provider.sign(claims, key=key, headers={"typ": "logout+jwt"})


def post_logout_token(gw: OidcGateway, token: str) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/.auth/oidc/corp/backchannel", data={"logout_token": token}, trust_env=False
    )


def test_a_replayed_logout_token_is_refused(corp, oidc_provider):
    browser = corp.signed_in(BOB.sub)
    token = logout_token(oidc_provider, corp, BOB.sub)
    assert post_logout_token(corp, token).status_code == 200
    assert corp.me(browser).status_code == 401
    again = post_logout_token(corp, token)
    assert again.status_code == 400
    assert again.json() == {
        "error": "invalid_request",
        "error_description": "logout token already used",
    }


BACKCHANNEL_REFUSALS: list[tuple[str, str, dict[str, Any]]] = [
    ("with a nonce", "nonce", {"nonce": "n-123"}),
    ("without the events claim", "events", {"events": None}),
    ("with another event", "events", {"events": {"urn:other": {}}}),
    ("without a jti", "jti", {"jti": None}),
    ("without sub or sid", "no_sub_or_sid", {"sub": None}),
    ("for another client", "audience", {"aud": "another-rp"}),
    ("from another issuer", "issuer", {"iss": "http://127.0.0.1:1"}),
]


@pytest.mark.parametrize(
    ("reason", "changes"),
    [case[1:] for case in BACKCHANNEL_REFUSALS],
    ids=[f"a logout token {case[0]} is refused" for case in BACKCHANNEL_REFUSALS],
)
def test_a_logout_token_that_breaks_a_rule_ends_no_session(corp, oidc_provider, reason, changes):
    browser = corp.signed_in(BOB.sub)
    response = post_logout_token(corp, logout_token(oidc_provider, corp, BOB.sub, changes))
    assert response.status_code == 400
    assert response.json()["error_description"] == f"logout token refused: {reason}"
    assert corp.me(browser).status_code == 200


def test_a_logout_token_not_signed_by_the_provider_ends_no_session(corp, oidc_provider):
    browser = corp.signed_in(BOB.sub)
    now = int(time.time())
    claims = {
        "iss": oidc_provider.issuer,
        "aud": corp.corp_id,
        "iat": now,
        "jti": secrets.token_urlsafe(12),
        "sub": BOB.sub,
        "events": {BACKCHANNEL_EVENT: {}},
    }
    forged = SigningKey.generate("RSA")
    forged.kid = oidc_provider.signing_key("RS256").kid
    unsigned = jwt.encode(claims, None, algorithm="none")
    for token in (oidc_provider.sign(claims, key=forged), unsigned):
        assert post_logout_token(corp, token).status_code == 400
    assert corp.me(browser).status_code == 200


@pytest.fixture
def replicas(tmp_path, oidc_provider, upstream) -> Iterator[tuple[OidcGateway, OidcGateway]]:
    need("redis", port_open("127.0.0.1", 6379), "nothing listens on 127.0.0.1:6379")
    redis.Redis.from_url(REPLICA_REDIS).flushdb()
    keys = tmp_path / "keys"
    common: dict[str, Any] = {
        "store": REPLICA_REDIS,
        "keys": keys,
        "extra": '[session]\nrevocation = "strict"',
    }
    a = OidcGateway(tmp_path / "a", oidc_provider, upstream.url, **common)
    try:
        b = OidcGateway(tmp_path / "b", oidc_provider, upstream.url, replica_of=a, **common)
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def test_backchannel_logout_ends_the_session_on_both_replicas_sharing_redis(
    replicas, oidc_provider, upstream
):
    a, b = replicas
    browser = a.signed_in(ALICE.sub)
    token = session_cookie(browser)
    # the load balancer sends the same cookie to either replica
    assert a.me(with_cookie(token), a.url).json()["sub"] == "corp:alice"
    upstream.clear()
    assert with_cookie(token).get(f"{b.url}/app/x").status_code == 200
    assert upstream.last().header("x-user-id") == ["corp:alice"]
    # the grant in Redis is sealed: nothing of it reads in the clear
    store = redis.Redis.from_url(REPLICA_REDIS)
    grants = [store.hget(key, "v").decode() for key in store.scan_iter("*oidc-grant:*")]
    assert len(grants) == 1 and grants[0].startswith("v1.")
    assert "alice" not in grants[0] and "token" not in grants[0]
    # at the refresh, a page's parallel requests land on both replicas: one of them opens the
    # sealed grant (one key directory) and refreshes it, once, at a provider that rotates
    # refresh tokens and revokes the grant when one is used twice
    oidc_provider.configure(rotate_refresh_tokens=True)
    try:
        time.sleep(REFRESH + 0.2)
        since = event_mark(oidc_provider)
        assert parallel(token, [a.url, b.url] * 4) == [200] * 8
        refreshes = token_requests(oidc_provider, since, a.corp_id, "refresh_token")
        assert len(refreshes) == 1
        time.sleep(REFRESH + 0.2)
        assert parallel(token, [b.url, a.url] * 2) == [200] * 4
        assert len(token_requests(oidc_provider, since, a.corp_id, "refresh_token")) == 2
    finally:
        oidc_provider.configure(rotate_refresh_tokens=False)
    # the provider's logout token reaches one replica (the URL the client registered)
    since = event_mark(oidc_provider)
    oidc_provider.end_session(
        f"{oidc_provider.issuer}/session/end?client_id={a.corp_id}", http=browser
    )
    assert len(events(oidc_provider, since, "backchannel.success", a.corp_id)) == 1
    assert a.me(with_cookie(token), a.url).status_code == 401
    deadline = time.monotonic() + STRICT_CACHE_SECONDS + 1.0
    while b.me(with_cookie(token), b.url).status_code != 401:
        assert time.monotonic() < deadline, "replica b still takes the session"
        time.sleep(0.1)
    assert with_cookie(token).get(f"{b.url}/app/x", headers=JSON).status_code == 401


# -- the access token upstream ------------------------------------------------------------------


def test_the_providers_access_token_goes_upstream_for_provider_sessions_only(
    corp, oidc_provider, upstream
):
    browser = corp.signed_in(ALICE.sub)
    upstream.clear()
    assert browser.get(f"{corp.base}/api/x").status_code == 200
    sent = upstream.last().header("authorization")
    assert len(sent) == 1 and sent[0].startswith("Bearer ")
    access_token = sent[0].removeprefix("Bearer ")
    # it is the provider's: its userinfo endpoint takes it for alice
    userinfo = httpx.get(
        oidc_provider.discovery()["userinfo_endpoint"],
        headers={"authorization": f"Bearer {access_token}"},
        trust_env=False,
    )
    assert userinfo.status_code == 200 and userinfo.json()["sub"] == ALICE.sub
    upstream.clear()
    forged = {"x-access-token": "forged"}
    assert browser.get(f"{corp.base}/tokened/x", headers=forged).status_code == 200
    assert upstream.last().header("x-access-token") == [access_token]
    assert upstream.last().header("authorization") == []
    # a password user has no provider token; a copy the client sends never passes
    password = corp.gw.login("alice")
    upstream.clear()
    assert password.get("/api/x").status_code == 200
    assert upstream.last().header("authorization") == []
    assert password.get("/tokened/x", headers=forged).status_code == 200
    assert upstream.last().header("x-access-token") == []
    assert upstream.last().header("x-user-id") == ["alice"]


# -- configurations -----------------------------------------------------------------------------


def test_a_gateway_without_passwords_shows_no_form_and_refuses_password_sign_in(
    tmp_path, oidc_provider, upstream
):
    gw = OidcGateway(tmp_path / "gw", oidc_provider, upstream.url, auth='users = "none"')
    try:
        page = gw.browser().get(f"{gw.base}/.auth/login")
        assert page.status_code == 200
        assert 'name="password"' not in page.text and "<form" not in page.text
        assert "Sign in with Corp" in page.text and "Sign in with other" in page.text
        # alice is in users.toml with this password: no password is checked at all
        password = USERS["alice"][0]
        refused = gw.gw.client().post(
            "/.auth/login", json={"username": "alice", "password": password}
        )
        assert refused.status_code == 404
        assert refused.json()["error"] == "password_sign_in_off"
        assert COOKIE not in refused.cookies
        form = gw.gw.client().post(
            "/.auth/login",
            data={"username": "alice", "password": password},
            headers={"origin": gw.base},
        )
        assert form.status_code == 404 and 'name="password"' not in form.text
        assert gw.sign_in(gw.browser(), ALICE.sub).status_code == 303
    finally:
        gw.stop()


def check_config(tmp_path: Path, users: str, providers: list[str]) -> subprocess.CompletedProcess:
    tables = "".join(
        textwrap.dedent(
            f"""
            [[auth.oidc]]
            name = "p{index}"
            issuer = "https://idp{index}.corp.test"
            client_id = "gateway"
            client_secret = "s3cret"
            {line}
            """
        )
        for index, line in enumerate(providers)
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [auth]
            users = "{users}"
            {tables}
            [[routes]]
            name = "app"
            path = "/"
            upstream = "http://127.0.0.1:9"
            """
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("users", "providers", "error"),
    [
        ("file", [""], "auth.oidc[0].id_prefix: missing; 'p0' and the password source"),
        ("none", ['id_prefix = "a:"', ""], "auth.oidc[1].id_prefix: missing; 'p1' and another"),
        ("none", ['id_prefix = "a:"', 'id_prefix = "a:"'], "auth.oidc: id_prefix 'a:'"),
        ("file", ['id_prefix = "corp:"'], None),
        ("none", [""], None),
    ],
    ids=[
        "a provider without id_prefix beside the password source is refused",
        "a provider without id_prefix beside another provider is refused",
        "two providers with one id_prefix are refused",
        "a provider with an id_prefix beside the password source is fine",
        "a lone provider needs no id_prefix",
    ],
)
def test_gateway_check_applies_the_id_rule(tmp_path, users, providers, error):
    done = check_config(tmp_path, users, providers)
    if error is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 1, done.stdout
        assert error in done.stderr, done.stderr


def test_a_password_user_whose_id_has_a_provider_prefix_never_signs_in(
    tmp_path, oidc_provider, upstream
):
    legacy = tmp_path / "legacy.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{legacy}")
    hasher = PasswordHasher()
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE people (id TEXT, name TEXT, hash TEXT)"))
        for user_id, name in (("corp:alice", "impostor"), ("carl", "carl")):
            conn.execute(
                sqlalchemy.text("INSERT INTO people VALUES (:id, :name, :h)"),
                {"id": user_id, "name": name, "h": hasher.hash(f"{name}-password-1")},
            )
    engine.dispose()
    sql = f"""
        [auth.sql]
        dsn = "sqlite:///{legacy}"
        query = "SELECT id, hash, '' FROM people WHERE name = :username"
        """
    gw = OidcGateway(tmp_path / "gw", oidc_provider, upstream.url, auth='users = "sql"', extra=sql)
    try:
        client = gw.gw.client()
        ok = client.post("/.auth/login", json={"username": "carl", "password": "carl-password-1"})
        assert ok.status_code == 200 and ok.json()["sub"] == "carl"
        impostor = {"username": "impostor", "password": "impostor-password-1"}
        refused = gw.gw.client().post("/.auth/login", json=impostor)
        assert refused.status_code == 401
        assert COOKIE not in refused.cookies
        assert "reserved prefix" in gw.gw.logs()
    finally:
        gw.stop()


def test_the_flow_cookie_is_a_handle_and_the_start_asks_for_pkce_s256(corp):
    browser = corp.browser()
    location = corp.start(browser)
    flow = browser.cookies[FLOW_COOKIE]
    # the cookie is a random handle: the state, nonce and PKCE verifier stay in the store
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"]
    for secret in (query["state"][0], query["nonce"][0]):
        assert secret not in flow
    assert json.dumps(query).find(flow) == -1


def test_the_provider_down_holds_back_its_own_users_only(corp, oidc_provider):
    # strict: a refresh that cannot reach the source is 503; the password source is another
    # source, whose users go on (the back-off after a failure is per source)
    provider_user = corp.signed_in(ALICE.sub)
    password_user = httpx.Client(base_url=corp.base, trust_env=False)
    signed = password_user.post(
        "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
    )
    assert signed.status_code == 200
    time.sleep(REFRESH + 0.2)
    oidc_provider.take_down()
    try:
        assert provider_user.get(f"{corp.base}/app/x", headers=JSON).status_code == 503
        assert password_user.get("/app/x", headers=JSON).status_code == 200
    finally:
        oidc_provider.bring_up()


def test_roles_claim_may_be_a_space_separated_string_and_role_map_renames():
    from gateway.auth.oidc_users import user_from_claims
    from gateway.config import OidcConfig

    config = OidcConfig(
        name="corp",
        issuer="https://idp.corp.test",
        client_id="gw",
        client_secret="s",
        roles_claim="scope_roles",
        role_map=(("ops", "operators"),),
        id_prefix="corp:",
    )
    user = user_from_claims(config, {"sub": "abc", "scope_roles": "staff ops  bad role!"})
    assert user.id == "corp:abc"
    # "role!" cannot be a role name: dropped; "ops" renamed; each once
    assert user.roles == ("staff", "operators", "bad")


async def test_an_access_token_near_its_end_is_refreshed_before_it_goes_upstream(
    tmp_path, oidc_provider
):
    import asyncio

    from gateway.auth.oidc_users import ACCESS_MARGIN, OidcUsers, user_from_claims
    from gateway.auth.sealed import Sealer
    from gateway.config import build_config
    from gateway.store.base import Session
    from gateway.store.memory import MemoryStore

    base = "http://127.0.0.1:9"
    client_id = f"unit-{secrets.token_hex(4)}"
    oidc_provider.add_client(
        client_id,
        client_secret="unit-secret-0123456789",
        redirect_uris=[f"{base}/.auth/oidc/corp/callback"],
    )
    raw = {
        "server": {"public_url": base},
        "auth": {
            "users": "none",
            "oidc": [
                {
                    "name": "corp",
                    "issuer": oidc_provider.issuer,
                    "client_id": client_id,
                    "client_secret": "unit-secret-0123456789",
                    "scopes": ["openid", "profile", "offline_access"],
                }
            ],
        },
        "keys": {"dir": str(tmp_path / "keys")},
        "routes": [{"name": "api", "path": "/api", "upstream": base, "pass_access_token": True}],
    }
    config = build_config(raw, tmp_path, env={})
    users = OidcUsers(config, MemoryStore(), Sealer(config.keys.dir), time.time)
    provider = users.providers["corp"]
    try:
        state, nonce, verifier = (secrets.token_urlsafe(24) for _ in range(3))
        url = await provider.authorization_url(state, nonce, verifier + verifier)
        back = await asyncio.to_thread(oidc_provider.authorize_as, ALICE.sub, url)
        code = parse_qs(urlsplit(back).query)["code"][0]
        grant = await provider.exchange(code, verifier + verifier, nonce)
        assert grant.refresh_token and grant.access_expires > time.time() + 60
        user = user_from_claims(provider.config, grant.claims)
        now = time.time()
        await users.store.create_session(Session("sid-1", user.id, now, now, now + 3600))
        await users.remember("sid-1", provider, user, grant, now + 3600)
        assert await users.access_token("sid-1") == grant.access_token
        # the stored access token now ends within the margin, as it would an hour later
        stored = await users.grant("sid-1")
        ending = dataclasses.replace(stored, access_expires=time.time() + ACCESS_MARGIN / 3)
        await users._save("sid-1", ending, now + 3600)
        users._access.clear()
        fresh = await users.access_token("sid-1")
        assert fresh and fresh != grant.access_token
        info = httpx.get(
            oidc_provider.discovery()["userinfo_endpoint"],
            headers={"authorization": f"Bearer {fresh}"},
            trust_env=False,
        )
        assert info.status_code == 200 and info.json()["sub"] == ALICE.sub
    finally:
        await users.close()


# -- a second factor after the provider ---------------------------------------------------------


def test_a_provider_user_with_a_second_factor_is_asked_for_it_after_the_provider(
    corp, oidc_provider, upstream
):
    import pyotp

    account = oidc_provider.add_account(
        "erin-0005", preferred_username="erin", email="erin@corp.test", groups=["staff"]
    )
    # signed in by the provider alone, erin sets up an authenticator app on the factor page
    browser = corp.signed_in(account.sub)
    setup = browser.get(f"{corp.base}/.auth/mfa", headers=JSON).json()
    assert setup["enroll"] is True
    totp = pyotp.TOTP(setup["totp"]["secret"])
    enrolled = browser.post(f"{corp.base}/.auth/mfa/totp/enroll", json={"code": totp.now()})
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json()["amr"] == ["oidc", "otp"]
    browser.post(f"{corp.base}/.auth/logout", json={})

    # the next sign-in at the provider ends at the factor page, with no session yet
    fresh = corp.browser()
    back = corp.sign_in(fresh, account.sub, "/api/x")
    assert back.status_code == 303, back.text
    assert back.headers["location"] == f"{corp.base}/.auth/mfa"
    set_cookies = back.headers.get_list("set-cookie")
    assert not any(c.startswith("gw_session=") for c in set_cookies)
    assert any(c.startswith("gw_session_mfa=") for c in set_cookies)
    assert fresh.get(f"{corp.base}/api/x", headers=JSON).status_code == 401
    assert corp.me(fresh).status_code == 401
    # a wrong code is refused; the right one (the next step's: this one was used) signs in
    wrong = fresh.post(f"{corp.base}/.auth/mfa/totp", json={"code": "000000"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_code"
    done = fresh.post(f"{corp.base}/.auth/mfa/totp", json={"code": totp.at(time.time() + 30)})
    assert done.status_code == 200, done.text
    assert done.json()["sub"] == "corp:erin" and done.json()["amr"] == ["oidc", "otp"]
    # the provider's grant came along: the access token still goes upstream
    upstream.clear()
    assert fresh.get(f"{corp.base}/api/x").status_code == 200
    assert upstream.last().header("authorization")[0].startswith("Bearer ")
    assert upstream.last().header("x-user-id") == ["corp:erin"]
