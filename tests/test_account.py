"""The account page ({prefix}/account) against a real gateway: sign-in needed, the session list
and signing out other sessions (never another user's), removing a factor and new recovery
codes only with a current factor, changing the password, CSRF and cross-origin refusals, and a
screenshot in Chromium (tests/artifacts/account.png)."""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest

from tests.conftest import USERS, Gateway, make_gateway
from tests.upstream import RecordingUpstream

P = "/.auth"
USERS_HERE = {
    **USERS,
    "carol": ("carol-password-1", ("staff",)),
    "dave": ("dave-password-1", ("staff",)),
    "frank": ("frank-password-1", ("staff",)),
    "grace": ("grace-password-1", ("staff", "ops")),
    "heidi": ("heidi-password-1", ("staff",)),
    "ivan": ("ivan-password-1", ("staff",)),
    "kate": ("kate-password-1", ("staff",)),
}
HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream: RecordingUpstream) -> Iterator[Gateway]:
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "app"
        path = "/app"
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
    extra = """
    [session]
    revocation = "strict"
    """
    gateway = make_gateway(tmp_path_factory.mktemp("account"), routes, extra, users=USERS_HERE)
    yield gateway
    gateway.stop()


# -- helpers --------------------------------------------------------------------------------


def origin(gw: Gateway) -> str:
    return f"http://localhost:{gw.port}"


def login(
    gw: Gateway, user: str, agent: str = "test-client/1.0", password: str = ""
) -> httpx.Client:
    client = gw.client(headers={"user-agent": agent})
    response = client.post(
        f"{P}/login", json={"username": user, "password": password or USERS_HERE[user][0]}
    )
    assert response.status_code == 200, response.text
    return client


def login_with_code(gw: Gateway, user: str, secret: str, steps: int, agent: str) -> httpx.Client:
    client = gw.client(headers={"user-agent": agent})
    response = client.post(f"{P}/login", json={"username": user, "password": USERS_HERE[user][0]})
    assert response.status_code == 401 and response.json()["error"] == "mfa_required"
    pending = response.json()["pending"]
    response = client.post(f"{P}/mfa/totp", json={"pending": pending, "code": code(secret, steps)})
    assert response.status_code == 200, response.text
    return client


def code(secret: str, steps: int = 0) -> str:
    """The code `steps` 30-second steps from now (never just before a step ends)."""
    now = time.time()
    if now % 30 > 28.5:
        time.sleep(30 - now % 30 + 0.2)
        now = time.time()
    return pyotp.TOTP(secret).at(now + 30 * steps)


def wrong_code(secret: str) -> str:
    valid = {code(secret, s) for s in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)


def enroll(client: httpx.Client) -> tuple[str, list[str]]:
    """Enroll an authenticator app for the client's user (JSON API); its secret and the
    recovery codes. The enrollment uses the code of the step before now."""
    response = client.get(f"{P}/mfa", headers=JSON)
    assert response.status_code == 200, response.text
    secret = response.json()["totp"]["secret"]
    response = client.post(f"{P}/mfa/totp/enroll", json={"code": code(secret, -1)})
    assert response.status_code == 200, response.text
    assert "otp" in response.json()["amr"]
    return secret, response.json()["recovery_codes"]


def account(client: httpx.Client) -> tuple[str, str]:
    """The account page's HTML and the CSRF token its forms carry."""
    response = client.get(f"{P}/account", headers=HTML)
    assert response.status_code == 200, response.text
    match = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert match is not None
    return response.text, match.group(1)


def post(gw: Gateway, client: httpx.Client, path: str, data: dict, **options) -> httpx.Response:
    """A form post from the account page (its CSRF token, the gateway's origin)."""
    _, csrf = account(client)
    headers = {**HTML, "origin": options.get("origin", origin(gw))}
    body = {"csrf": options.get("csrf", csrf), **data}
    return client.post(f"{P}/account/{path}", data=body, headers=headers)


def session_handles(page: str) -> list[str]:
    return re.findall(r'name="session" value="([^"]+)"', page)


def sid(client: httpx.Client) -> str:
    return client.get(f"{P}/me").json()["sid"]


def forget_confirmation(gw: Gateway, session_id: str) -> None:
    """As if the factor of this session were entered more than five minutes ago."""
    from gateway.store import open_store

    async def work() -> None:
        store = open_store("sqlite:///data/gateway.db", gw.directory)
        try:
            await store.delete_record(f"mfa-confirmed:{session_id}")
        finally:
            await store.close()

    asyncio.run(work())


def app_status(client: httpx.Client) -> int:
    return client.get("/app", headers=JSON).status_code


def notice_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert location.path == f"{P}/account"
    return location.query


# -- the page -------------------------------------------------------------------------------


def test_the_page_needs_a_signed_in_session(gw: Gateway) -> None:
    anonymous = gw.client()
    response = anonymous.get(f"{P}/account", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == f"{origin(gw)}{P}/login?next={P}/account"
    response = anonymous.get(f"{P}/account", headers=JSON)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    # a forged or foreign cookie is no session either
    anonymous.cookies.set("gw_session", "not-a-token")
    assert anonymous.get(f"{P}/account", headers=HTML).status_code == 303

    alice = login(gw, "alice")
    response = alice.get(f"{P}/account", headers=HTML)
    assert response.status_code == 200
    page = response.text
    assert "<dd>alice</dd>" in page and "<dd>staff</dd>" in page
    assert "file (pwd)" in page
    assert "No second factor yet." in page
    assert "Change password" in page
    # the one script is the gateway's own WebAuthn calls; no inline script, no other origin
    assert re.findall(r"<script[^>]*>", page) == [f'<script src="{P}/static/webauthn.js" defer>']
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "gw_session_csrf=" in response.headers["set-cookie"]

    # a session signed out is no longer let in
    alice.post(f"{P}/logout", headers={"origin": origin(gw)})
    assert alice.get(f"{P}/account", headers=JSON).status_code == 401


def test_two_sessions_listed_and_the_other_signed_out(gw: Gateway) -> None:
    first = login(gw, "alice", "Agent-First/1.0")
    second = login(gw, "alice", "Agent-Second/2.0")
    page, _ = account(first)
    assert "Agent-First/1.0" in page and "Agent-Second/2.0" in page
    assert page.count('<span class="badge">this session</span>') == 1
    # the badge is on this client's own entry, and only the other one has a Sign out button
    mine = re.search(r"<strong>Agent-First/1.0</strong>(.*?)</li>", page).group(1)
    assert "this session" in mine and 'name="session"' not in mine
    assert sid(second) not in page  # session ids never show on the page
    assert app_status(second) == 200

    # find the second client's entry: the handle in its form
    other = re.search(
        r"<strong>Agent-Second/2.0</strong>.*?name=\"session\" value=\"([^\"]+)\"", page
    ).group(1)
    assert notice_of(post(gw, first, "sessions/revoke", {"session": other})).endswith(
        "notice=session_ended"
    )
    time.sleep(1.1)  # strict: other processes' one-second cache at most
    assert app_status(second) == 401
    assert app_status(first) == 200
    page, _ = account(first)
    assert "Agent-Second/2.0" not in page
    assert "session_ended" not in page  # the notice is not reflected, its text is
    assert (
        "That session was signed out."
        in first.get(f"{P}/account?notice=session_ended", headers=HTML).text
    )
    assert "<b>" not in first.get(f"{P}/account?notice=<b>x</b>", headers=HTML).text


def test_another_users_session_cannot_be_signed_out(gw: Gateway) -> None:
    alice = login(gw, "alice", "Alice-Browser/1.0")
    bob = login(gw, "bob", "Bob-Browser/1.0")
    bob_page, _ = account(bob)
    assert "Alice-Browser/1.0" not in bob_page  # nobody sees another user's sessions
    # bob has one session (this one): no handle in his page; make him a second to get one
    bob_other = login(gw, "bob", "Bob-Other/1.0")
    bob_handle = session_handles(account(bob)[0])
    assert bob_handle
    for value in (*bob_handle, sid(bob), sid(bob_other)):
        response = post(gw, alice, "sessions/revoke", {"session": value})
        assert response.status_code == 404
        assert "not one of yours" in response.text
    # nor their own current session by this form (that is what sign-out is for)
    response = post(gw, alice, "sessions/revoke", {"session": sid(alice)})
    assert response.status_code == 404
    time.sleep(1.1)
    assert app_status(bob) == 200 and app_status(bob_other) == 200 and app_status(alice) == 200
    # "sign out all other sessions" is about alice's sessions only
    alice_two = login(gw, "alice", "Alice-Phone/1.0")
    assert notice_of(post(gw, alice, "sessions/revoke-others", {})).endswith("others_ended")
    time.sleep(1.1)
    assert app_status(alice_two) == 401
    assert app_status(alice) == 200
    assert app_status(bob) == 200 and app_status(bob_other) == 200


def test_forms_refuse_cross_origin_and_missing_csrf(gw: Gateway) -> None:
    alice = login(gw, "alice", "Alice-Csrf/1.0")
    other = login(gw, "alice", "Alice-Csrf-Other/1.0")
    handle = session_handles(account(alice)[0])[0]
    for path, data in (
        ("sessions/revoke", {"session": handle}),
        ("sessions/revoke-others", {}),
        ("password", {"current": "x", "new": "y" * 10, "confirm": "y" * 10}),
        ("recovery", {}),
        ("factors/remove", {"factor": "x"}),
    ):
        response = post(gw, alice, path, data, origin="https://evil.example")
        assert response.status_code == 403 and response.json()["error"] == "cross_origin"
        # a form without the page's token: the page again, saying so, with a fresh token
        for token in ("", "guessed-token"):
            response = post(gw, alice, path, data, csrf=token)
            assert response.status_code == 403, response.text
            assert "The form expired; please try again." in response.text
            assert "text/html" in response.headers["content-type"]
            assert "gw_session_csrf=" in response.headers["set-cookie"]
        # a token of the page but not the cookie's: a form posted from elsewhere
        _, csrf = account(alice)
        alice.cookies.set("gw_session_csrf", "other")
        response = alice.post(
            f"{P}/account/{path}", data={"csrf": csrf, **data}, headers={"origin": origin(gw)}
        )
        assert response.status_code == 403
    # a signed-out caller's post goes to sign-in, not through
    response = gw.client().post(f"{P}/account/sessions/revoke-others", headers=HTML)
    assert response.status_code == 303
    time.sleep(1.1)
    assert app_status(other) == 200


# -- second factors -------------------------------------------------------------------------


def test_removing_a_factor_needs_a_current_code(gw: Gateway) -> None:
    before = login(gw, "carol", "Carol-Old/1.0")  # signed in with a password only
    carol = login(gw, "carol", "Carol-Main/1.0")
    secret, _ = enroll(carol)
    # a session without a second factor is sent to enter one first
    response = before.get(f"{P}/account", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == f"{origin(gw)}{P}/mfa?next={P}/account"
    assert before.get(f"{P}/account", headers=JSON).status_code == 403
    assert post_raw(gw, before, "recovery").status_code == 303

    page, _ = account(carol)
    # enrolled by its first code: used once already
    assert "Authenticator app" in page and "last used never" not in page
    factor = re.search(r'name="factor" value="([^"]+)"', page).group(1)
    assert "Regenerate recovery codes" in page
    assert '<span class="count">10</span> of 10' in page

    forget_confirmation(gw, sid(carol))
    # no code, no recent factor: refused
    response = post(gw, carol, "factors/remove", {"factor": factor, "code": ""})
    assert response.status_code == 403 and "Enter a current code" in response.text
    # a wrong code: refused, and counted as a failed factor
    response = post(gw, carol, "factors/remove", {"factor": factor, "code": wrong_code(secret)})
    assert response.status_code == 401 and "not right" in response.text
    assert '"event": "mfa.failed", "user": "carol"' in gw.logs()
    # another user's factor id, or none, is not carol's to remove
    response = post(gw, carol, "factors/remove", {"factor": "nope", "code": code(secret)})
    assert response.status_code == 404
    page, _ = account(carol)
    assert factor in page
    # the current code: removed
    response = post(gw, carol, "factors/remove", {"factor": factor, "code": code(secret, 0)})
    assert notice_of(response).endswith("notice=factor_removed")
    page, _ = account(carol)
    assert "No second factor yet." in page and factor not in page
    assert '"event": "mfa.removed", "user": "carol"' in gw.logs()
    # signing in needs a password only again
    login(gw, "carol")


def post_raw(gw: Gateway, client: httpx.Client, path: str) -> httpx.Response:
    return client.post(f"{P}/account/{path}", data={"csrf": "x"}, headers=HTML)


def test_too_many_wrong_codes_lock_the_confirmation(gw: Gateway) -> None:
    heidi = login(gw, "heidi", "Heidi/1.0")
    secret, _ = enroll(heidi)
    forget_confirmation(gw, sid(heidi))
    for _ in range(5):
        response = post(gw, heidi, "recovery", {"code": wrong_code(secret)})
        assert response.status_code == 401
    response = post(gw, heidi, "recovery", {"code": code(secret, 0)})
    assert response.status_code == 429 and "retry-after" in response.headers


def test_regenerated_recovery_codes_replace_the_old_ones(gw: Gateway) -> None:
    dave = login(gw, "dave", "Dave/1.0")
    secret, old_codes = enroll(dave)
    # a moment after entering a factor, no code is asked again
    response = post(gw, dave, "recovery", {"code": ""})
    assert response.status_code == 200
    first_new = re.findall(r"<li>([a-z0-9-]{19})</li>", response.text)
    assert len(first_new) == 10 and not set(first_new) & set(old_codes)
    assert "not shown again" in response.text

    forget_confirmation(gw, sid(dave))
    # an old code no longer confirms anything...
    response = post(gw, dave, "recovery", {"code": old_codes[0]})
    assert response.status_code == 401
    # ...a new one does (and is used up by it)
    response = post(gw, dave, "recovery", {"code": first_new[0]})
    assert response.status_code == 200
    second_new = re.findall(r"<li>([a-z0-9-]{19})</li>", response.text)
    assert len(second_new) == 10
    response = post(gw, dave, "recovery", {"code": code(secret, 0)})
    assert response.status_code == 200
    latest = re.findall(r"<li>([a-z0-9-]{19})</li>", response.text)
    assert '"event": "mfa.recovery_codes", "user": "dave"' in gw.logs()

    # at sign-in: the replaced codes are refused, the latest work
    client = gw.client()
    response = client.post(f"{P}/login", json={"username": "dave", "password": "dave-password-1"})
    pending = response.json()["pending"]
    for old in (old_codes[1], second_new[0]):
        response = client.post(f"{P}/mfa/recovery", json={"pending": pending, "code": old})
        assert response.status_code == 401
    response = client.post(f"{P}/mfa/recovery", json={"pending": pending, "code": latest[0]})
    assert response.status_code == 200


def test_adding_an_authenticator_app_from_the_page(gw: Gateway) -> None:
    ivan = login(gw, "ivan", "Ivan-Add/1.0")
    anonymous = gw.client().get(f"{P}/account/totp", headers=HTML)
    assert anonymous.status_code == 303
    response = ivan.get(f"{P}/account/totp", headers=HTML)
    assert response.status_code == 200
    assert "<svg" in response.text and f'action="{P}/mfa/totp/enroll"' in response.text
    assert f'name="next" value="{P}/account?notice=totp_added"' in response.text
    secret = re.search(r'<p class="secret">([A-Z2-7 ]+)</p>', response.text).group(1)
    secret = secret.replace(" ", "")
    csrf = re.search(r'name="csrf" value="([^"]+)"', response.text).group(1)
    response = ivan.post(
        f"{P}/mfa/totp/enroll",
        data={
            "csrf": csrf,
            "code": code(secret, 0),
            "name": "Work phone",
            "next": (f"{P}/account?notice=totp_added"),
        },
        headers={**HTML, "origin": origin(gw)},
    )
    # the first factor: the recovery codes are shown once, then on to the account page
    assert response.status_code == 200 and "not shown again" in response.text
    assert f'href="{origin(gw)}{P}/account?notice=totp_added"' in response.text
    page = ivan.get(f"{P}/account?notice=totp_added", headers=HTML).text
    assert "Work phone" in page and "The authenticator app was added." in page


def test_adding_an_app_beside_a_factor_needs_a_current_one(gw: Gateway) -> None:
    kate = login(gw, "kate", "Kate/1.0")
    secret, recovery = enroll(kate)
    # a factor entered just now: the page offers adding one, and shows the new QR code
    page, _ = account(kate)
    assert f'href="{P}/account/totp"' in page and f'action="{P}/account/confirm"' not in page
    response = kate.get(f"{P}/account/totp", headers=HTML)
    assert response.status_code == 200 and "<svg" in response.text
    new = re.search(r'<p class="secret">([A-Z2-7 ]+)</p>', response.text).group(1)
    new = new.replace(" ", "")
    assert new != secret

    # more than CONFIRM_TTL later (a stolen cookie, say): no app without a factor now
    forget_confirmation(gw, sid(kate))
    response = kate.get(f"{P}/account/totp", headers=JSON)
    assert response.status_code == 403 and response.json()["error"] == "confirm_required"
    response = kate.get(f"{P}/account/totp", headers=HTML)
    assert response.status_code == 403 and "Enter a current code" in response.text
    assert "<svg" not in response.text
    page, _ = account(kate)
    # the page asks for the code in place of the add buttons
    assert f'href="{P}/account/totp"' not in page and 'data-webauthn="register"' not in page
    assert f'action="{P}/account/confirm"' in page and 'aria-label="Current code"' in page
    refused = kate.post(f"{P}/mfa/totp/enroll", json={"code": code(new, 0), "name": "Thief"})
    assert refused.status_code == 403 and refused.json()["error"] == "confirm_required"
    # a wrong current code is refused and counted
    refused = kate.post(
        f"{P}/mfa/totp/enroll",
        json={"code": code(new, 0), "confirm_code": wrong_code(secret), "name": "Thief"},
    )
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_code"
    # with a current code of the app kate has: added
    done = kate.post(
        f"{P}/mfa/totp/enroll",
        json={"code": code(new, 0), "confirm_code": code(secret, 0), "name": "Tablet"},
    )
    assert done.status_code == 200, done.text
    assert "recovery_codes" not in done.json()

    # from the page: confirm with a code (here a recovery code), then the add buttons are back
    forget_confirmation(gw, sid(kate))
    assert kate.get(f"{P}/account/totp", headers=JSON).status_code == 403
    response = post(gw, kate, "confirm", {"code": ""})
    assert response.status_code == 403 and "Enter a current code" in response.text
    response = post(gw, kate, "confirm", {"code": recovery[0]})
    assert notice_of(response).endswith("notice=confirmed")
    page, _ = account(kate)
    assert f'href="{P}/account/totp"' in page and f'action="{P}/account/confirm"' not in page
    assert kate.get(f"{P}/account/totp", headers=HTML).status_code == 200
    assert "Tablet" in page and "Thief" not in page


# -- password -------------------------------------------------------------------------------


def test_change_password(gw: Gateway) -> None:
    frank = login(gw, "frank", "Frank-Desk/1.0")
    elsewhere = login(gw, "frank", "Frank-Laptop/1.0")
    new = "frank-new-password-2"

    def change(current: str, new_password: str, again: str) -> httpx.Response:
        return post(
            gw, frank, "password", {"current": current, "new": new_password, "confirm": again}
        )

    response = change("not-it", new, new)
    assert response.status_code == 401 and "current password is not right" in response.text
    response = change("frank-password-1", "short", "short")
    assert response.status_code == 400 and "at least 8" in response.text
    response = change("frank-password-1", new, new + "x")
    assert response.status_code == 400 and "do not match" in response.text
    time.sleep(1.1)
    assert app_status(elsewhere) == 200

    assert notice_of(change("frank-password-1", new, new)).endswith("notice=password_changed")
    time.sleep(1.1)
    assert app_status(frank) == 200  # this session goes on
    assert app_status(elsewhere) == 401  # the others ended
    assert (
        "Your password was changed"
        in frank.get(f"{P}/account?notice=password_changed", headers=HTML).text
    )
    assert '"reason": "password_changed"' in gw.logs()
    assert '"event": "password.changed"' in gw.logs()
    response = gw.client().post(
        f"{P}/login", json={"username": "frank", "password": "frank-password-1"}
    )
    assert response.status_code == 401
    login(gw, "frank", password=new)


# -- in a browser ---------------------------------------------------------------------------


def test_account_page_in_chromium(gw: Gateway) -> None:
    from tests.services import need
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    need("chromium", CHROMIUM.exists(), f"no browser at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    grace = login(gw, "grace", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
    secret, _ = enroll(grace)
    site = origin(gw)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1024, "height": 900})
            page = context.new_page()
            page.goto(f"{site}{P}/account")
            assert urlsplit(page.url).path == f"{P}/login"
            page.get_by_label("Username").fill("grace")
            page.get_by_label("Password").fill(USERS_HERE["grace"][0])
            page.get_by_role("button", name="Sign in", exact=True).click()
            page.wait_for_url(lambda u: urlsplit(u).path == f"{P}/mfa")
            page.get_by_label("Code from your authenticator app").fill(code(secret, 0))
            page.get_by_role("button", name="Verify").click()
            page.wait_for_url(f"{site}{P}/account")
            sync_api.expect(page.get_by_role("heading", name="Your account")).to_be_visible()
            sync_api.expect(page.get_by_text("this session")).to_be_visible()
            sync_api.expect(page.get_by_text("Firefox on Linux")).to_be_visible()
            sync_api.expect(page.get_by_text("Chrome on Linux")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "account.png"), full_page=True)
            # signing out the other session, with no JavaScript needed
            page.get_by_role("button", name="Sign out", exact=True).click()
            page.wait_for_url(lambda u: "notice=session_ended" in u)
            sync_api.expect(page.get_by_text("That session was signed out.")).to_be_visible()
            # five minutes on: adding a factor beside the app asks for a current code first
            me = page.request.get(f"{site}{P}/me").json()
            aging = threading.Thread(target=forget_confirmation, args=(gw, me["sid"]))
            aging.start()
            aging.join()
            page.goto(f"{site}{P}/account")
            form = page.locator(f'form[action="{P}/account/confirm"]')
            sync_api.expect(form.get_by_text("confirm one you have first")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "account-confirm.png"), full_page=True)
            form.locator('input[name="code"]').fill(code(secret, 1))
            form.get_by_role("button", name="Confirm").click()
            page.wait_for_url(lambda u: "notice=confirmed" in u)
            sync_api.expect(page.get_by_text("you can add a second factor")).to_be_visible()
            sync_api.expect(form).to_have_count(0)
            context.close()
        finally:
            browser.close()
    time.sleep(1.1)
    assert app_status(grace) == 401
