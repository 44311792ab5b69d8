"""A real browser (Debian's Chromium, driven by Playwright) through a real gateway to the demo app.

Open a protected page, land on the sign-in form, sign in, come back to the page and see the
greeting, sign out. Screenshots of the sign-in page and of the greeting go to tests/artifacts/.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import USERS, Gateway, free_port, make_gateway, wait_port
from tests.services import need

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # public_url says localhost; keep the browser on IPv4 loopback, where the gateway listens
    "--host-resolver-rules=MAP localhost 127.0.0.1",
]


@pytest.fixture(scope="module")
def legacy_app() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo", "legacy", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gw(tmp_path_factory, legacy_app: int) -> Iterator[Gateway]:
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "legacy"
        path = "/"
        upstream = "http://127.0.0.1:{legacy_app}"
        auth = "required"
        """
    )
    gateway = make_gateway(tmp_path_factory.mktemp("browser"), routes)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    need("chromium", CHROMIUM.exists(), f"no browser at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


def test_sign_in_reach_the_page_and_sign_out_in_a_browser(browser, gw: Gateway) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    site = f"http://localhost:{gw.port}"
    password = USERS["alice"][0]
    context = browser.new_context(viewport={"width": 1024, "height": 700})
    page = context.new_page()
    try:
        # a protected page sends the browser to the sign-in form, remembering where it was going
        page.goto(f"{site}/reports/weekly?year=2026")
        url = urlsplit(page.url)
        assert url.path == "/.auth/login"
        assert parse_qs(url.query)["next"] == ["/reports/weekly?year=2026"]
        expect(page).to_have_title("Sign in")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_label("Username")).to_be_focused()
        page.screenshot(path=str(ARTIFACTS / "login.png"))

        # a wrong password shows an error on the same form
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("alert")).to_be_visible()
        assert urlsplit(page.url).path == "/.auth/login"

        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{site}/reports/weekly?year=2026")
        expect(page.locator("#user")).to_have_text("alice")
        expect(page.locator("#roles")).to_have_text("staff")
        page.screenshot(path=str(ARTIFACTS / "greeting.png"))
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["gw_session"]["httpOnly"] is True
        assert cookies["gw_session"]["sameSite"] == "Lax"

        # the app's own "Sign out" button posts to the gateway's logout
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(lambda u: urlsplit(u).path == "/.auth/login")
        assert "gw_session" not in {c["name"] for c in context.cookies()}
        page.goto(f"{site}/reports/weekly")
        assert urlsplit(page.url).path == "/.auth/login"
    finally:
        context.close()
