"""Security keys and passkeys in a real Chromium (Playwright), with the DevTools protocol's
virtual authenticator (`WebAuthn.addVirtualAuthenticator`: a platform authenticator that keeps
discoverable credentials and verifies the user), through the gateway's own pages and script.

One person's way through: the enrollment page at the first sign-in ([mfa] required) adds the
key, then password plus key, then the passkey alone from the sign-in page (beside the
providers' buttons), then a copy of the key with an old counter is refused, then the key is
removed on the account page and signs in no more. Screenshots go to tests/artifacts/:
webauthn-login.png (the sign-in page with the passkey and provider buttons),
webauthn-factor.png (the factor page with the key button), webauthn-codes.png (the recovery
codes after the key was added) and webauthn-account.png (the account page listing the key).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import USERS, GatewayFactory
from tests.test_browser import ARTIFACTS, CHROMIUM
from tests.test_mfa import audit_lines, browser  # noqa: F401 - the module's Chromium
from tests.test_mfa import routes as mfa_routes
from tests.upstream import RecordingUpstream

PROVIDERS = """
[[auth.oidc]]
name = "corp"
title = "Corporate sign-in"
issuer = "http://127.0.0.1:9/corp"
client_id = "gateway"
client_secret = "not-asked-while-the-page-renders"
id_prefix = "corp:"

[[auth.oidc]]
name = "partner"
title = "Partner sign-in"
issuer = "http://127.0.0.1:9/partner"
client_id = "gateway"
client_secret = "not-asked-while-the-page-renders"
id_prefix = "partner:"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def virtual_authenticator(context, page) -> tuple[object, str]:
    """A platform authenticator in this page's browser (DevTools' WebAuthn domain) that keeps
    discoverable credentials, verifies the user and answers at once: its session and id."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    options = {
        "protocol": "ctap2",
        "transport": "internal",
        "hasResidentKey": True,
        "hasUserVerification": True,
        "isUserVerified": True,
        "automaticPresenceSimulation": True,
    }
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})
    return cdp, added["authenticatorId"]


def _path(url: str) -> str:
    return urlsplit(url).path


def test_a_key_from_enrollment_to_passkey_to_removal(
    browser,  # noqa: F811
    gateway_factory: GatewayFactory,
    upstream: RecordingUpstream,
) -> None:
    from playwright.sync_api import expect

    assert CHROMIUM.exists()
    ARTIFACTS.mkdir(exist_ok=True)
    gw = gateway_factory(
        routes=mfa_routes(upstream.url) + textwrap.dedent(PROVIDERS),
        extra='[audit]\nfile = "audit.log"\n[mfa]\nrequired = true\n',
    )
    site = f"http://localhost:{gw.port}"
    context = browser.new_context(viewport={"width": 1024, "height": 860})
    page = context.new_page()
    cdp, authenticator = virtual_authenticator(context, page)

    def credentials() -> list[dict]:
        return cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
            "credentials"
        ]

    def sign_in_with_password() -> None:
        page.goto(f"{site}/secure/report")
        assert _path(page.url) == "/.auth/login"
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(USERS["alice"][0])
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(lambda u: _path(u) == "/.auth/mfa")

    def me() -> dict:
        return page.request.get(f"{site}/.auth/me", headers={"accept": "application/json"}).json()

    try:
        # 1. the first sign-in: the enrollment page adds the key, then the recovery codes
        sign_in_with_password()
        page.get_by_label("Name it (optional)").last.fill("Laptop passkey")
        page.get_by_role("button", name="Add a security key or passkey").click()
        expect(page.locator("ol.codes li")).to_have_count(10)
        page.screenshot(path=str(ARTIFACTS / "webauthn-codes.png"), full_page=True)
        page.get_by_role("link", name="Continue").click()
        page.wait_for_url(lambda u: _path(u) == "/secure/report")
        assert me()["amr"] == ["pwd", "hwk"]
        [made] = credentials()
        assert made["isResidentCredential"] is True and made["rpId"] == "localhost"
        old_copy = dict(made)

        # 2. password, then the key on the factor page
        context.clear_cookies()
        sign_in_with_password()
        key_button = page.get_by_role("button", name="Use a security key or passkey")
        expect(key_button).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "webauthn-factor.png"))
        key_button.click()
        page.wait_for_url(lambda u: _path(u) == "/secure/report")
        assert me()["amr"] == ["pwd", "hwk"]

        # 3. the passkey alone, from the sign-in page
        context.clear_cookies()
        page.goto(f"{site}/secure/report")
        passkey_button = page.get_by_role("button", name="Sign in with a passkey")
        expect(passkey_button).to_be_visible()
        expect(page.get_by_role("link", name="Corporate sign-in")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "webauthn-login.png"))
        passkey_button.click()
        page.wait_for_url(lambda u: _path(u) == "/secure/report")
        assert me()["amr"] == ["hwk"] and me()["sub"] == "alice"
        assert upstream.last().header("x-user-id") == ["alice"]
        moved = credentials()[0]["signCount"]
        assert moved > old_copy["signCount"]

        # 4. a copy of the key taken before those sign-ins (its counter behind): refused
        cdp.send(
            "WebAuthn.removeCredential",
            {"authenticatorId": authenticator, "credentialId": made["credentialId"]},
        )
        cdp.send(
            "WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": old_copy}
        )
        context.clear_cookies()
        page.goto(f"{site}/.auth/login?next=/secure/report")
        page.get_by_role("button", name="Sign in with a passkey").click()
        expect(page.get_by_role("alert")).to_have_text("That passkey was not accepted.")
        assert _path(page.url) == "/.auth/mfa/webauthn/passkey"
        refusals = [e for e in audit_lines(gw) if e["event"] == "signin.failed"]
        assert refusals[-1]["reason"] == "counter_went_back", refusals
        assert "gw_session" not in {c["name"] for c in context.cookies()}

        # the real key again (its counter ahead), then the account page removes it
        cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator})
        cdp.send(
            "WebAuthn.addCredential",
            {"authenticatorId": authenticator, "credential": {**made, "signCount": moved + 5}},
        )
        page.goto(f"{site}/.auth/login?next=/.auth/account")
        page.get_by_role("button", name="Sign in with a passkey").click()
        page.wait_for_url(lambda u: _path(u) == "/.auth/account")
        row = page.locator("li.item", has_text="Laptop passkey")
        expect(row).to_contain_text("Security key or passkey")
        expect(page.get_by_role("button", name="Add a security key or passkey")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "webauthn-account.png"), full_page=True)
        # [mfa] required keeps the only factor: another first (an authenticator app)
        row.get_by_role("button", name="Remove").click()
        expect(page.get_by_role("alert")).to_contain_text("add another first")
        assert len(credentials()) == 1
    finally:
        context.close()


def test_removing_a_key_on_the_account_page_ends_its_passkey(
    browser,  # noqa: F811
    gateway_factory: GatewayFactory,
    upstream: RecordingUpstream,
) -> None:
    from playwright.sync_api import expect

    gw = gateway_factory(routes=mfa_routes(upstream.url), extra='[audit]\nfile = "audit.log"\n')
    site = f"http://localhost:{gw.port}"
    context = browser.new_context(viewport={"width": 1024, "height": 860})
    page = context.new_page()
    virtual_authenticator(context, page)
    try:
        # a password session adds a key on the account page
        page.goto(f"{site}/.auth/login?next=/.auth/account")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(USERS["alice"][0])
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(lambda u: _path(u) == "/.auth/account")
        page.get_by_label("Name it (optional)").fill("Desk key")
        page.get_by_role("button", name="Add a security key or passkey").click()
        expect(page.locator("ol.codes li")).to_have_count(10)
        page.get_by_role("link", name="Continue").click()
        page.wait_for_url(lambda u: _path(u) == "/.auth/account")
        expect(page.get_by_role("status")).to_have_text("The security key was added.")
        row = page.locator("li.item", has_text="Desk key")
        expect(row).to_be_visible()
        # entered just now (adding it was the second factor): removing asks for no code
        row.get_by_role("button", name="Remove").click()
        expect(page.get_by_role("status")).to_have_text("The second factor was removed.")
        expect(page.locator("li.item", has_text="Desk key")).to_have_count(0)
        removed = [e for e in audit_lines(gw) if e["event"] == "mfa.removed"]
        assert removed and removed[-1]["kind"] == "webauthn"

        # the passkey is still in the authenticator, but the gateway knows it no more
        context.clear_cookies()
        page.goto(f"{site}/.auth/login?next=/app/x")
        page.get_by_role("button", name="Sign in with a passkey").click()
        expect(page.get_by_role("alert")).to_have_text("That passkey was not accepted.")
        assert "gw_session" not in {c["name"] for c in context.cookies()}
        assert audit_lines(gw)[-1]["event"] == "signin.failed"
    finally:
        context.close()
