"""Chromium (Playwright) signs in at a real OpenID provider, through its own pages.

The gateway of tests/test_oidc.py (providers `corp` and `other` beside the password form) in
front of the demo's legacy app, which greets whoever X-User-Id names and lists X-User-Roles.
The provider shows its own login page and, here, its consent page (`consent="page"`).
Screenshots go to tests/artifacts/: the sign-in page with both providers and the password form
(oidc-login.png), the app after sign-in (oidc-greeting.png) and the 403 page of a user the
`other` provider's allowed_roles refuse (oidc-denied.png).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import free_port, wait_port
from tests.oidc_server import ALICE, BOB, OidcProvider, need_oidc, start_oidc_provider
from tests.services import need
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.test_oidc import OidcGateway


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Iterator[OidcProvider]:
    need_oidc()
    server = start_oidc_provider(tmp_path_factory.mktemp("oidc"), consent="page")
    yield server
    server.close()


@pytest.fixture(scope="module")
def legacy_app() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo", "legacy", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, provider, legacy_app) -> Iterator[OidcGateway]:
    gateway = OidcGateway(
        tmp_path_factory.mktemp("oidc-browser"),
        provider,
        legacy_app,
        corp='allowed_domains = ["corp.test"]',
        other='roles_claim = "groups"\nallowed_roles = ["admin"]',
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    need("chromium", CHROMIUM.exists(), f"no browser at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


def _at_the_provider(page: object, provider: OidcProvider, login: str, password: str) -> None:
    """The provider's own login page, then its consent page."""
    from playwright.sync_api import expect

    page.wait_for_url(f"{provider.issuer}/interaction/**")
    expect(page.locator("form#login")).to_be_visible()
    page.get_by_label("Username").fill(login)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Authorize")).to_be_visible()
    page.get_by_role("button", name="Allow").click()


def test_chromium_signs_in_at_the_provider_and_reaches_the_app(chromium, gw, provider) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1024, "height": 760})
    page = context.new_page()
    try:
        # a protected page: the sign-in page, with both providers and the password form
        page.goto(f"{gw.base}/reports/weekly?year=2026")
        url = urlsplit(page.url)
        assert url.path == "/.auth/login"
        assert parse_qs(url.query)["next"] == ["/reports/weekly?year=2026"]
        expect(page.get_by_label("Username")).to_be_visible()
        expect(page.get_by_label("Password")).to_be_visible()
        expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        providers = page.get_by_role("navigation", name="Sign in with")
        expect(providers.get_by_role("link")).to_have_text(
            ["Sign in with Corp", "Sign in with other"]
        )
        page.screenshot(path=str(ARTIFACTS / "oidc-login.png"))

        providers.get_by_role("link", name="Sign in with Corp").click()
        _at_the_provider(page, provider, ALICE.preferred_username, ALICE.password)

        # back at the page it asked for, as the provider's user, with the mapped roles
        page.wait_for_url(f"{gw.base}/reports/weekly?year=2026")
        expect(page.locator("#user")).to_have_text("corp:alice")
        expect(page.locator("#roles")).to_have_text("staff,operators")
        page.screenshot(path=str(ARTIFACTS / "oidc-greeting.png"))
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["gw_session"]["httpOnly"] is True
        assert "gw_session_oidc" not in cookies  # the flow is spent
    finally:
        context.close()


def test_chromium_shows_why_allowed_roles_refuse_a_user(chromium, gw, provider) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    context = chromium.new_context(viewport={"width": 1024, "height": 600})
    page = context.new_page()
    try:
        page.goto(f"{gw.base}/.auth/login?next=/reports")
        page.get_by_role("link", name="Sign in with other").click()
        # `other` admits admins only; alice is staff and ops
        _at_the_provider(page, provider, ALICE.preferred_username, ALICE.password)
        page.wait_for_url(f"{gw.base}/.auth/oidc/other/callback?**")
        expect(page).to_have_title("Access denied")
        expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        expect(
            page.get_by_text("Your account has none of the roles this site admits.")
        ).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "oidc-denied.png"))
        assert "gw_session" not in {c["name"] for c in context.cookies()}

        # the same page's link leads back to sign-in, where an admin gets in
        page.get_by_role("link", name="Back to sign-in").click()
        page.wait_for_url(f"{gw.base}/.auth/login")
        context.clear_cookies()
        page.goto(f"{gw.base}/.auth/login?next=/reports")
        page.get_by_role("link", name="Sign in with other").click()
        _at_the_provider(page, provider, BOB.preferred_username, BOB.password)
        page.wait_for_url(f"{gw.base}/reports")
        expect(page.locator("#user")).to_have_text(f"other:{BOB.sub}")
        expect(page.locator("#roles")).to_have_text("staff,admin")
    finally:
        context.close()
