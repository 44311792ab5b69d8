"""The OpenID Provider fixture itself (tests/oidc_server.py), checked with httpx and PyJWT.

No gateway code: these are the protocol steps a relying party takes, by hand, so the gateway's
OpenID Connect tests can rely on what the provider does: discovery, the code flow with PKCE
(S256) and both client authentication methods, ID tokens that verify against the JWKS,
refresh (refused once the account is disabled), key rotation, refusal of a wrong
code_verifier and of a replayed code, logout (RP-initiated and back-channel), the ID token
overrides and the outage switch.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest

from tests.oidc_server import (
    ALICE,
    BASIC_CLIENT,
    CAROL,
    POST_CLIENT,
    POST_LOGOUT_REDIRECT_URI,
    REDIRECT_URI,
    Client,
    OidcError,
    OidcProvider,
    SigningKey,
    _installed,
    need_oidc,
    oidc_provider_fixture,  # noqa: F401 - the oidc_provider fixture
    pkce_pair,
)

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """A browser-like client for the provider: keeps cookies, follows no redirects."""
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=10.0) as client:
        yield client


def token_request(
    provider: OidcProvider, client: Client, data: dict[str, str], http: httpx.Client
) -> httpx.Response:
    """POST to the token endpoint, authenticated as the client's method says."""
    url = provider.discovery()["token_endpoint"]
    if client.token_endpoint_auth_method == "client_secret_post":
        data = {**data, "client_id": client.client_id, "client_secret": client.client_secret}
        return http.post(url, data=data)
    return http.post(url, data=data, auth=(client.client_id, client.client_secret))


def sign_in(
    provider: OidcProvider,
    client: Client,
    sub: str,
    http: httpx.Client,
    **params: str,
) -> dict[str, Any]:
    """The whole code flow: authorize as `sub`, check the redirect, exchange the code.

    Returns the token response plus `nonce`, `code` and `code_verifier`.
    """
    verifier, challenge = pkce_pair()
    url = provider.authorization_url(
        client.client_id, code_challenge=challenge, state="state-1", nonce="nonce-1", **params
    )
    location = provider.authorize_as(sub, url, http=http)
    assert location.startswith(client.redirect_uris[0] + "?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["state"] == "state-1"
    assert query["iss"] == provider.issuer  # RFC 9207
    response = token_request(
        provider,
        client,
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": client.redirect_uris[0],
            "code_verifier": verifier,
        },
        http,
    )
    assert response.status_code == 200, response.text
    return {**response.json(), "nonce": "nonce-1", "code": query["code"], "code_verifier": verifier}


def verify_id_token(
    provider: OidcProvider, token: str, client: Client, nonce: str | None
) -> dict[str, Any]:
    """The ID token's claims, verified against the provider's JWKS (iss, aud, exp, nonce)."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == client.id_token_signed_response_alg
    key = jwt.PyJWKSet.from_dict(provider.jwks())[header["kid"]]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=client.client_id,
        issuer=provider.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    assert claims.get("nonce") == nonce
    return claims


def test_node_modules_match_the_lock_file() -> None:
    need_oidc()  # runs npm ci in tests/oidc when node_modules is missing or out of date
    assert _installed()


def test_discovery(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    issuer = oidc_provider.issuer
    assert issuer.startswith("http://127.0.0.1:")
    doc = http.get(f"{issuer}/.well-known/openid-configuration").json()
    assert doc["issuer"] == issuer
    for name in ("authorization", "token", "userinfo", "end_session", "revocation"):
        assert doc[f"{name}_endpoint"].startswith(issuer + "/"), name
    assert doc["jwks_uri"].startswith(issuer + "/")
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }
    assert {"RS256", "ES256"} <= set(doc["id_token_signing_alg_values_supported"])
    assert "none" not in doc["id_token_signing_alg_values_supported"]
    assert {"openid", "email", "profile", "groups", "offline_access"} <= set(
        doc["scopes_supported"]
    )
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True
    jwks = http.get(doc["jwks_uri"]).json()
    assert {key["kty"] for key in jwks["keys"]} == {"RSA", "EC", "OKP"}
    assert all("d" not in key for key in jwks["keys"])


def test_code_flow_client_secret_basic(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    tokens = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["refresh_token"]
    claims = verify_id_token(oidc_provider, tokens["id_token"], BASIC_CLIENT, "nonce-1")
    assert claims["sub"] == ALICE.sub
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@corp.test"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["staff", "ops"]
    assert claims["exp"] > time.time()
    # the client authenticated with the other method is refused
    refused = http.post(
        oidc_provider.discovery()["token_endpoint"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": BASIC_CLIENT.client_id,
            "client_secret": BASIC_CLIENT.client_secret,
        },
    )
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    # userinfo with the access token
    userinfo = http.get(
        oidc_provider.discovery()["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert userinfo.status_code == 200
    assert userinfo.json()["sub"] == ALICE.sub
    assert userinfo.json()["groups"] == ["staff", "ops"]


def test_code_flow_client_secret_post(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    tokens = sign_in(oidc_provider, POST_CLIENT, CAROL.sub, http)
    claims = verify_id_token(oidc_provider, tokens["id_token"], POST_CLIENT, "nonce-1")
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "ES256"
    assert claims["sub"] == CAROL.sub
    assert claims["email_verified"] is False
    requests = [e for e in oidc_provider.events() if e["type"] == "token.request"]
    assert requests[-1]["client_id"] == POST_CLIENT.client_id
    assert requests[-1]["auth_method"] == "client_secret_post"


def test_second_sign_in_uses_the_provider_session(
    oidc_provider: OidcProvider, http: httpx.Client
) -> None:
    sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    # same cookies: no login form this time, so even a wrong password does not matter
    _, challenge = pkce_pair()
    url = oidc_provider.authorization_url(BASIC_CLIENT.client_id, code_challenge=challenge)
    location = oidc_provider.authorize_as(ALICE.sub, url, http=http, password="not-asked-for")
    assert "code=" in location
    # prompt=login asks again, and then the password counts
    url = oidc_provider.authorization_url(
        BASIC_CLIENT.client_id, code_challenge=challenge, prompt="login"
    )
    with pytest.raises(OidcError, match="refused"):
        oidc_provider.authorize_as(ALICE.sub, url, http=http, password="wrong")


def test_wrong_password_and_unknown_client(oidc_provider: OidcProvider) -> None:
    _, challenge = pkce_pair()
    url = oidc_provider.authorization_url(BASIC_CLIENT.client_id, code_challenge=challenge)
    with pytest.raises(OidcError, match="Wrong username or password"):
        oidc_provider.authorize_as(ALICE.sub, url, password="wrong")
    url = url.replace("client_id=basic-client", "client_id=nobody")
    with pytest.raises(OidcError, match="invalid_client"):
        oidc_provider.authorize_as(ALICE.sub, url)


def test_pkce_is_required(oidc_provider: OidcProvider) -> None:
    url = oidc_provider.authorization_url(BASIC_CLIENT.client_id, code_challenge="x")
    url = url.replace("&code_challenge=x&code_challenge_method=S256", "")
    location = oidc_provider.authorize_as(ALICE.sub, url)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["error"] == "invalid_request"
    assert "PKCE" in query["error_description"]


def test_wrong_code_verifier_is_refused(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    _, challenge = pkce_pair()
    url = oidc_provider.authorization_url(BASIC_CLIENT.client_id, code_challenge=challenge)
    location = oidc_provider.authorize_as(ALICE.sub, url)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))["code"]
    other_verifier, _ = pkce_pair()
    response = token_request(
        oidc_provider,
        BASIC_CLIENT,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": other_verifier,
        },
        http,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_replayed_code_is_refused_and_revokes(
    oidc_provider: OidcProvider, http: httpx.Client
) -> None:
    tokens = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    again = token_request(
        oidc_provider,
        BASIC_CLIENT,
        {
            "grant_type": "authorization_code",
            "code": tokens["code"],
            "redirect_uri": REDIRECT_URI,
            "code_verifier": tokens["code_verifier"],
        },
        http,
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # and what the first exchange gave is revoked (RFC 6749 section 4.1.2)
    refresh = token_request(
        oidc_provider,
        BASIC_CLIENT,
        {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        http,
    )
    assert refresh.status_code == 400


def test_refresh_then_disabled_account_is_refused(
    oidc_provider: OidcProvider, http: httpx.Client
) -> None:
    erin = oidc_provider.add_account(
        "erin-0005", preferred_username="erin", email="erin@corp.test", groups=["staff"]
    )
    tokens = sign_in(oidc_provider, BASIC_CLIENT, erin.sub, http)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    # claims changed at the provider show at the refresh
    oidc_provider.add_account(
        erin.sub, preferred_username="erin", email="erin@corp.test", groups=["staff", "ops"]
    )
    refreshed = token_request(oidc_provider, BASIC_CLIENT, refresh, http)
    assert refreshed.status_code == 200, refreshed.text
    claims = verify_id_token(oidc_provider, refreshed.json()["id_token"], BASIC_CLIENT, "nonce-1")
    assert claims["groups"] == ["staff", "ops"]
    assert refreshed.json()["access_token"] != tokens["access_token"]

    oidc_provider.disable(erin.sub)
    refused = token_request(oidc_provider, BASIC_CLIENT, refresh, http)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    userinfo = http.get(
        oidc_provider.discovery()["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {refreshed.json()['access_token']}"},
    )
    assert userinfo.status_code == 401
    _, challenge = pkce_pair()
    url = oidc_provider.authorization_url(BASIC_CLIENT.client_id, code_challenge=challenge)
    with pytest.raises(OidcError, match="disabled"):
        oidc_provider.authorize_as(erin.sub, url)

    oidc_provider.enable(erin.sub)
    assert token_request(oidc_provider, BASIC_CLIENT, refresh, http).status_code == 200
    grant_errors = [e for e in oidc_provider.events() if e["type"] == "grant.error"]
    assert any(e["error"] == "invalid_grant" for e in grant_errors)


def test_rotate_keys_adds_a_kid(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    before = {key["kid"] for key in oidc_provider.jwks()["keys"]}
    old = oidc_provider.signing_key("RS256")
    key = oidc_provider.rotate_keys()
    after = {k["kid"] for k in oidc_provider.jwks()["keys"]}
    assert key.kid not in before
    assert after == before | {key.kid}
    tokens = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    assert jwt.get_unverified_header(tokens["id_token"])["kid"] == key.kid
    verify_id_token(oidc_provider, tokens["id_token"], BASIC_CLIENT, "nonce-1")
    # a token signed with the fixture's copy of the key verifies like the provider's own
    minted = oidc_provider.sign(oidc_provider.id_token_claims(BASIC_CLIENT.client_id, ALICE.sub))
    verify_id_token(oidc_provider, minted, BASIC_CLIENT, None)
    # retiring the old RSA keys takes them out of the JWKS
    newer = oidc_provider.rotate_keys(keep_old=False)
    kids = {k["kid"] for k in oidc_provider.jwks()["keys"] if k["kty"] == "RSA"}
    assert kids == {newer.kid}
    assert old.kid not in kids


def test_claims_only_in_userinfo(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    oidc_provider.configure(claims_in_id_token=False)
    try:
        tokens = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    finally:
        oidc_provider.configure(claims_in_id_token=True)
    claims = verify_id_token(oidc_provider, tokens["id_token"], BASIC_CLIENT, "nonce-1")
    assert "groups" not in claims
    assert "email" not in claims
    userinfo = http.get(
        oidc_provider.discovery()["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ).json()
    assert userinfo["groups"] == ["staff", "ops"]
    assert userinfo["email"] == "alice@corp.test"


def test_consent_page(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    oidc_provider.configure(consent="page")
    try:
        _, challenge = pkce_pair()
        url = oidc_provider.authorization_url(POST_CLIENT.client_id, code_challenge=challenge)
        # as a browser: the login form, then the consent form
        page = follow(http, http.get(url))
        assert 'data-prompt="login"' in page.text
        action = urllib.parse.urljoin(str(page.url), f"{page.url.path}/login")
        page = follow(http, http.post(action, data={"login": "alice", "password": ALICE.password}))
        assert 'data-prompt="consent"' in page.text
        assert "openid email profile groups" in page.text
        # authorize_as picks up from there: it submits the consent form
        location = oidc_provider.authorize_as(ALICE.sub, str(page.url), http=http)
        assert location.startswith(REDIRECT_URI + "?code=")
        # consent is remembered: the next sign-in goes straight back with a code
        again = oidc_provider.authorization_url(POST_CLIENT.client_id, code_challenge=challenge)
        assert http.get(again).headers["location"].startswith(REDIRECT_URI + "?code=")
    finally:
        oidc_provider.configure(consent="auto")


def follow(http: httpx.Client, response: httpx.Response) -> httpx.Response:
    """Follow redirects as far as they go (all on the provider here)."""
    while response.is_redirect:
        response = http.get(urllib.parse.urljoin(str(response.url), response.headers["location"]))
    return response


def test_override_next_id_token(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    # expired, signed by the provider's own key
    past = int(time.time()) - 3600
    oidc_provider.override_next_id_token(claims={"exp": past, "iat": past - 60})
    token = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)["id_token"]
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_id_token(oidc_provider, token, BASIC_CLIENT, "nonce-1")
    # alg none: no signature at all
    oidc_provider.override_next_id_token(header={"alg": "none"})
    token = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)["id_token"]
    assert token.endswith(".")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    # signed by a key the provider never published
    stranger = SigningKey.generate("RSA")
    oidc_provider.override_next_id_token(key=stranger, claims={"aud": "someone-else"})
    token = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)["id_token"]
    assert jwt.get_unverified_header(token)["kid"] == stranger.kid
    assert stranger.kid not in {k["kid"] for k in oidc_provider.jwks()["keys"]}
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "someone-else"
    # one override, one token: the next is as issued
    token = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)["id_token"]
    verify_id_token(oidc_provider, token, BASIC_CLIENT, "nonce-1")


class _Receiver(BaseHTTPRequestHandler):
    """Records the logout tokens POSTed to it."""

    received: list[str]

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        self.received.append(form["logout_token"][0])
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def backchannel() -> Iterator[tuple[str, list[str]]]:
    """A back-channel logout receiver on 127.0.0.1: (its URL, the tokens it received)."""
    received: list[str] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/backchannel", received
    server.shutdown()
    server.server_close()


def verify_logout_token(provider: OidcProvider, token: str, client: Client) -> dict[str, Any]:
    """A logout token's claims, verified (signature, iss, aud, iat, jti, events, no nonce)."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(provider.jwks())[header["kid"]]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=client.client_id,
        issuer=provider.issuer,
        options={"require": ["iss", "aud", "iat", "jti"]},
    )
    assert BACKCHANNEL_EVENT in claims["events"]
    assert "nonce" not in claims
    return claims


def test_end_session_sends_backchannel_logout(
    oidc_provider: OidcProvider, http: httpx.Client, backchannel: tuple[str, list[str]]
) -> None:
    url, received = backchannel
    client = oidc_provider.add_client(
        "logout-client",
        client_secret="logout-client-secret-0123456789",
        redirect_uris=[REDIRECT_URI],
        post_logout_redirect_uris=[POST_LOGOUT_REDIRECT_URI],
        backchannel_logout_uri=url,
    )
    tokens = sign_in(oidc_provider, client, ALICE.sub, http)
    sid = verify_id_token(oidc_provider, tokens["id_token"], client, "nonce-1")["sid"]
    end = oidc_provider.discovery()["end_session_endpoint"]
    query = urllib.parse.urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": POST_LOGOUT_REDIRECT_URI,
            "state": "bye",
        }
    )
    since = len(oidc_provider.events())
    location = oidc_provider.end_session(f"{end}?{query}", http=http)
    assert location == f"{POST_LOGOUT_REDIRECT_URI}?state=bye"
    assert len(received) == 1
    claims = verify_logout_token(oidc_provider, received[0], client)
    assert claims["sub"] == ALICE.sub
    assert claims["sid"] == sid
    types = [e["type"] for e in oidc_provider.events(since)]
    assert "backchannel.success" in types
    assert "end_session.success" in types
    # the provider's session is gone: signing in asks for the password again
    _, challenge = pkce_pair()
    again = oidc_provider.authorization_url(client.client_id, code_challenge=challenge)
    with pytest.raises(OidcError, match="refused"):
        oidc_provider.authorize_as(ALICE.sub, again, http=http, password="wrong")
    # and a back-channel logout on demand
    event = oidc_provider.backchannel_logout(client.client_id, ALICE.sub, sid="some-sid")
    assert event["type"] == "backchannel.success"
    assert verify_logout_token(oidc_provider, received[1], client)["sid"] == "some-sid"


def test_take_down_and_bring_up_keep_state(oidc_provider: OidcProvider, http: httpx.Client) -> None:
    tokens = sign_in(oidc_provider, BASIC_CLIENT, ALICE.sub, http)
    oidc_provider.take_down()
    try:
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", trust_env=False)
    finally:
        oidc_provider.bring_up()
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    with httpx.Client(trust_env=False) as fresh:  # the old keep-alive connection was closed
        assert token_request(oidc_provider, BASIC_CLIENT, refresh, fresh).status_code == 200


def test_stop_and_start_keep_issuer_and_keys(oidc_provider: OidcProvider) -> None:
    issuer, kids = oidc_provider.issuer, oidc_provider.jwks()
    oidc_provider.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{issuer}/.well-known/openid-configuration", trust_env=False)
    oidc_provider.start()
    assert oidc_provider.issuer == issuer
    assert oidc_provider.jwks() == kids
    assert oidc_provider.discovery()["issuer"] == issuer
