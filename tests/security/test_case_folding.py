"""Case folding is ASCII only: a non-ASCII letter never moves a path into another route.

Unicode lowering turns `İ` (U+0130) into two code points and the Kelvin sign (U+212A) into `k`,
so `/wikİ/secret` once matched a public `/wiki` route past its segment boundary and `/apİ/x`
was logged as route `api`. Each case goes to a gateway whose catch-all is `required`, so a path
that slipped into a public route would show as a 200.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from tests.conftest import Gateway, make_gateway
from tests.security.attack import nothing_forwarded, only, request
from tests.upstream import RecordingUpstream

DOTTED_I = "%C4%B0"  # İ, percent-encoded UTF-8 (a raw non-ASCII byte is refused with 400)
KELVIN = "%E2%84%AA"  # K


@pytest.fixture(scope="module")
def folding_gw(tmp_path_factory, sec_upstream: RecordingUpstream) -> Iterator[Gateway]:
    up = sec_upstream.url
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "everything"
        path = "/"
        upstream = "{up}"
        auth = "required"

        [[routes]]
        name = "wiki"
        path = "/wiki"
        upstream = "{up}"
        auth = "public"

        [[routes]]
        name = "api"
        path = "/api"
        upstream = "{up}"
        auth = "public"

        [[routes]]
        name = "kb"
        path = "/kb"
        upstream = "{up}"
        auth = "optional"

        [[routes]]
        name = "exact"
        path = "/Exact"
        upstream = "{up}"
        auth = "public"
        case_sensitive = true

        [[routes]]
        name = "wiki-host"
        host = "wiki.example.com"
        path = "/wiki"
        upstream = "{up}"
        auth = "public"

        [[routes]]
        name = "wiki-host-rest"
        host = "wiki.example.com"
        path = "/"
        upstream = "{up}"
        auth = "required"
        """
    )
    gateway = make_gateway(tmp_path_factory.mktemp("folding"), routes, users=None)
    yield gateway
    gateway.stop()


ESCAPES = [
    (f"/wik{DOTTED_I}/secret", None, "dotted capital I after the public prefix's letters"),
    (f"/WIK{DOTTED_I}/secret", None, "upper case and dotted capital I"),
    (f"/ap{DOTTED_I}/x", None, "dotted capital I in a public API prefix"),
    (f"/{KELVIN}b/x", None, "Kelvin sign for k in an optional prefix"),
    (f"/Exact{DOTTED_I}/x", None, "dotted capital I after a case-sensitive prefix"),
    (f"/wik{DOTTED_I}/x", "wiki.example.com", "dotted capital I on a host route"),
]


def _routes_logged(gw: Gateway, path: str) -> list[str]:
    """The route of every access-log line for this (normalized, decoded) path."""
    time.sleep(0.1)
    lines = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    return [line["route"] for line in lines if line.get("path") == unquote(path)]


@pytest.mark.parametrize("path,host,why", ESCAPES, ids=[w for *_, w in ESCAPES])
def test_a_non_ascii_letter_does_not_reach_a_public_route(folding_gw, upstream, path, host, why):
    response = request(folding_gw, "GET", path, [("Accept", "application/json")], host=host)
    assert response.status == 401, why
    assert nothing_forwarded(upstream)
    # the access log names the route that decided: the required catch-all, never the public one
    logged = _routes_logged(folding_gw, path)
    assert logged and set(logged) <= {"everything", "wiki-host-rest"}, logged


@pytest.mark.parametrize(
    "path,route",
    [("/WIKI/caf%C3%A9", "wiki"), (f"/api/{DOTTED_I}", "api"), ("/KB/x", "kb")],
    ids=["upper-case ASCII prefix", "non-ASCII below the prefix", "upper-case optional prefix"],
)
def test_ascii_case_still_folds_and_non_ascii_below_the_prefix_stays_in_it(
    folding_gw, upstream, path, route
):
    response = request(folding_gw, "GET", path)
    assert response.status == 200
    assert only(upstream).target == path.replace("%c3%a9", "%C3%A9")
