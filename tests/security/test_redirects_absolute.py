"""Open redirects with absolute `next` values: only route hosts and the cookie domain survive.

A real gateway (portal `login.corp.test`, `[session] domain = "corp.test"`, host routes
wiki/crm under it and app/tools.other.test outside it). Each hostile value goes through the
sign-in form; the test asserts the `next` the form carries, the 303 after signing in, and,
following it as a browser would, which host the request finally reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import USERS, Gateway
from tests.test_multihost import (
    PORTAL,
    WIKI,
    at,
    browser_client,
    corp_gateway,
    csrf_of,
    follow,
    form_sign_in,
    hidden_next,
)
from tests.upstream import RecordingUpstream

ROOT = "http://login.corp.test:{p}/"
# (next as sent, where the browser is sent after signing in, why); {p} is the gateway's port
ALLOWED = [
    ("http://wiki.corp.test:{p}/page?x=1", "http://wiki.corp.test:{p}/page?x=1", "route host"),
    ("http://crm.corp.test:{p}/", "http://crm.corp.test:{p}/", "another route host"),
    ("http://WIKI.Corp.TEST:{p}/Page", "http://wiki.corp.test:{p}/Page", "mixed-case host"),
    ("HTTP://wiki.corp.test:{p}/", "http://wiki.corp.test:{p}/", "upper-case scheme"),
    ("http://wiki.corp.test.:{p}/x", "http://wiki.corp.test:{p}/x", "trailing dot"),
    ("http://new.corp.test:{p}/x", "http://new.corp.test:{p}/x", "under the domain"),
    ("http://corp.test:{p}/", "http://corp.test:{p}/", "the domain itself"),
    ("http://wiki.corp.test:{p}", "http://wiki.corp.test:{p}/", "no path"),
    ("http://wiki.corp.test:{p}//evil.test/x", "http://wiki.corp.test:{p}/evil.test/x", "//path"),
    ("http://wiki.corp.test:{p}/ü?q=ö", "http://wiki.corp.test:{p}/%C3%BC?q=%C3%B6", "non-ASCII"),
    ("http://wiki.corp.test:{p}/%2e%2e/x", "http://wiki.corp.test:{p}/%2e%2e/x", "%2e in path"),
    ("http://wiki.corp.test:{p}#@evil.test", "http://wiki.corp.test:{p}/", "fragment"),
    (
        "http://wiki.corp.test:{p}/?n=//evil.test",
        "http://wiki.corp.test:{p}/?n=//evil.test",
        "query",
    ),
    ("http://login.corp.test:{p}/app", "http://login.corp.test:{p}/app", "the portal"),
    (
        "http://app.other.test:{p}/page",
        "http://app.other.test:{p}/.auth/handoff?next=%2Fpage",
        "route host outside the domain: the hand-off",
    ),
]
REFUSED = [
    ("https://evil.test/", "another site"),
    ("http://evil.test:{p}/", "another site at our port"),
    ("http://evilcorp.test:{p}/", "suffix without a dot"),
    ("http://corp.test.evil.test:{p}/", "our domain as a label"),
    ("http://wiki.corp.test.evil.test:{p}/", "our host as a label"),
    ("http://wiki.corp.test@evil.test:{p}/", "userinfo: ours@evil"),
    ("http://evil.test@wiki.corp.test:{p}/", "userinfo: evil@ours"),
    ("http://evil.test:x@wiki.corp.test:{p}/", "userinfo with password"),
    ("http://wiki.corp.test:{p}\\@evil.test/", "backslash before @"),
    ("http://evil.test\\.wiki.corp.test:{p}/", "backslash in host"),
    ("http:\\\\wiki.corp.test:{p}/", "backslashes for slashes"),
    ("http://wiki%2ecorp%2etest:{p}/", "%2e in host"),
    ("http://evil.test%2f.corp.test:{p}/", "%2f in host"),
    ("http://wiki.corp.test%00.evil.test:{p}/", "%00 in host"),
    ("http://wiki.corp.test:8443/", "another port"),
    ("http://wiki.corp.test:0/", "port 0"),
    ("http://wiki.corp.test:99999/", "port out of range"),
    ("http://wiki.corp.test:{p}:{p}/", "two ports"),
    ("http://wiki.corp.test:+{p}/", "signed port"),
    ("http://w\u0456ki.corp.test:{p}/", "IDN homograph (Cyrillic i)"),
    ("http://\uff57\uff49\uff4b\uff49.corp.test:{p}/", "fullwidth letters"),
    ("http://evil.test\u3002corp.test:{p}/", "ideographic full stop"),
    ("http://xn--80ak6aa92e.com/", "punycode of another site"),
    ("http://[::1]:{p}/", "IPv6 literal"),
    ("http://127.0.0.1:{p}/", "IP address"),
    ("http://localhost:{p}/", "localhost"),
    (" http://wiki.corp.test:{p}/", "leading space"),
    ("http://wiki.corp.test:{p}/ ", "trailing space"),
    ("\thttp://evil.test/", "leading tab"),
    ("http://wiki.corp.test:{p}/\n", "trailing newline"),
    ("http://evil.test\t.corp.test:{p}/", "tab in host"),
    ("http:/\t/evil.test/", "tab between slashes"),
    ("http://wiki.corp.test\u00a0:{p}/", "no-break space"),
    ("//wiki.corp.test:{p}/", "scheme-relative to our host"),
    ("//evil.test/", "scheme-relative"),
    ("\\\\evil.test/", "backslash-relative"),
    ("/\\evil.test/", "slash backslash"),
    ("http:wiki.corp.test/x", "scheme without slashes"),
    ("http:/wiki.corp.test:{p}/x", "scheme with one slash"),
    ("http:///wiki.corp.test:{p}/x", "scheme with three slashes"),
    ("javascript://wiki.corp.test/%0Aalert(1)", "javascript URL"),
    ("data:text/html,<script>alert(1)</script>", "data URL"),
    ("ftp://wiki.corp.test/", "ftp"),
    ("wiki.corp.test/x", "bare host"),
    ("http://" + "a" * 2100 + ".corp.test/", "too long"),
]


@pytest.fixture(scope="module")
def corp(
    tmp_path_factory: pytest.TempPathFactory, sec_upstream: RecordingUpstream
) -> Iterator[Gateway]:
    gateway = corp_gateway(tmp_path_factory.mktemp("redirects"), sec_upstream.url, sec_upstream.url)
    yield gateway
    gateway.stop()


def _reached(response: httpx.Response) -> str:
    """The host the request that finally reached the upstream was sent to."""
    assert response.status_code == 200, response.text
    headers = dict((k.lower(), v) for k, v in json.loads(response.text)["headers"])
    return headers["x-forwarded-host"]


@pytest.mark.parametrize(("target", "expected", "why"), ALLOWED, ids=[w for *_, w in ALLOWED])
def test_an_allowed_absolute_next_is_where_the_browser_lands(
    corp: Gateway, upstream: RecordingUpstream, target: str, expected: str, why: str
) -> None:
    p = corp.port
    target, expected = target.format(p=p), expected.format(p=p)
    with browser_client() as client:
        response = form_sign_in(corp, client, target)
        assert response.headers["location"] == expected, why
        landed = follow(client, response)
    final = httpx.URL(expected if "/handoff" not in expected else target.format(p=p))
    assert _reached(landed) == f"{final.host}:{p}"


@pytest.mark.parametrize(("target", "why"), REFUSED, ids=[w for _, w in REFUSED])
def test_a_hostile_absolute_next_sends_the_browser_to_the_portal_root(
    corp: Gateway, upstream: RecordingUpstream, target: str, why: str
) -> None:
    p = corp.port
    target = target.format(p=p)
    with browser_client() as client:
        page = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": target})
        assert hidden_next(page.text) == "/", why
        # the value sent as it is (not the form's "/"), as a hand-made form would
        posted = client.post(
            at(corp, PORTAL, "/.auth/login"),
            data={
                "username": "alice",
                "password": USERS["alice"][0],
                "csrf": csrf_of(page.text),
                "next": target,
            },
        )
        assert posted.status_code == 303
        assert posted.headers["location"] == ROOT.format(p=p), why
        assert _reached(follow(client, posted)) == f"{PORTAL}:{p}"
        # signed in already: a hostile next is no reason to leave the portal either
        again = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": target})
        assert again.status_code == 200 and hidden_next(again.text) == "/", why


def test_https_public_url_allows_only_https_targets(
    tmp_path_factory: pytest.TempPathFactory, sec_upstream: RecordingUpstream
) -> None:
    gateway = corp_gateway(
        tmp_path_factory.mktemp("redirects-https"),
        sec_upstream.url,
        sec_upstream.url,
        public_url="https://login.corp.test",
    )
    cases = [
        ("https://wiki.corp.test/x", "https://wiki.corp.test/x"),
        ("https://wiki.corp.test:443/x", "https://wiki.corp.test/x"),
        ("http://wiki.corp.test/x", "https://login.corp.test/"),
        ("http://login.corp.test/x", "https://login.corp.test/"),
        (f"https://wiki.corp.test:{gateway.port}/x", "https://login.corp.test/"),
        ("https://app.other.test/p", "https://app.other.test/.auth/handoff?next=%2Fp"),
    ]
    try:
        with httpx.Client(base_url=gateway.url, trust_env=False) as client:
            response = client.post(
                "/.auth/login",
                json={"username": "alice", "password": USERS["alice"][0]},
                headers={"host": PORTAL},
            )
            assert response.status_code == 200
            # a Secure cookie for .corp.test: sent by hand to the portal's Host over loopback
            cookie = next(
                c.split(";", 1)[0]
                for c in response.headers.get_list("set-cookie")
                if c.startswith("__Secure-gw_session=")
            )
            for target, expected in cases:
                page = client.get(
                    "/.auth/login",
                    params={"next": target},
                    headers={"host": PORTAL, "cookie": cookie},
                )
                # signed in: the portal sends the browser on at once, or shows the form with "/"
                if expected.endswith("login.corp.test/"):
                    assert page.status_code == 200 and hidden_next(page.text) == "/", target
                else:
                    assert page.status_code == 303, target
                    assert page.headers["location"] == expected, target
    finally:
        gateway.stop()


def test_an_allowed_next_widens_the_forms_csp_to_that_origin_only(
    corp: Gateway, upstream: RecordingUpstream
) -> None:
    p = corp.port
    with browser_client() as client:
        page = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": at(corp, WIKI, "/x")})
        csp = page.headers["content-security-policy"]
        assert f"form-action 'self' http://wiki.corp.test:{p};" in csp
        plain = client.get(at(corp, PORTAL, "/.auth/login"), params={"next": "https://evil.test"})
        assert "form-action 'self';" in plain.headers["content-security-policy"]
