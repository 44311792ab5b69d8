"""Forward-auth: the URI a front proxy names is judged as the app will read it, or refused.

What a real nginx (`auth_request`, examples/nginx.conf), Caddy (`forward_auth`,
examples/Caddyfile) and Traefik 3.7 (`forwardAuth`, examples/traefik.yml, default entry point:
`sanitizePath` on) hand the gateway and the app for a hostile request line, found by sending
each one through them:

| request target          | nginx: X-Original-URI and app   | Caddy: X-Forwarded-Uri and app | Traefik: X-Forwarded-Uri and app |
| ----------------------- | ------------------------------- | ------------------------------ | -------------------------------- |
| `/a#/../../b`           | raw, `#` kept (routes on `/a`)  | `#` re-encoded as `%23`        | 400 itself (a `#` in the query passes raw) |
| `/a%23/../b`            | raw                             | raw                            | resolved first: `/b`             |
| `/a;x/../b`             | raw                             | raw                            | resolved first: `/b`             |
| `/a?/../b`              | raw (query from `?`)            | raw, query also on /verify     | raw (query from `?`)             |
| space or tab in target  | 400 itself, nothing passed      | 400 itself                     | 400 itself                       |
| raw byte 0xE9           | raw byte                        | `%E9`                          | `%E9`                            |
| `//a`, `/a/./b`, `%2e`  | raw (nginx merges only its own) | raw                            | resolved first: `/a`, `/a/b`, `.`; `%61` decoded too |
| `/a/..;/b`, `..%2f`     | raw                             | raw                            | raw (`%2f` as `%2F`)             |

nginx and Caddy give the app their raw copy, never the path the gateway judged, so anything that
apps read differently (a raw `#`, dot segments in any spelling, `//`, encoded letters) is refused
with 403 before the app, never normalized into another route. Traefik resolves dot segments and
`//` (and decodes `%2e`, `%61`) before it asks and forwards, so the gateway and the app see one
and the same canonical URI: those reach the app, as the path they name (`TRAEFIK_RESOLVES`).
tests/security/test_traefik.py runs the same table through a Traefik with `sanitizePath` off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import test_forward_auth
from tests.rawhttp import RawResponse, raw_request
from tests.security.attack import IDENTITY
from tests.test_forward_auth import API, Front, marker
from tests.upstream import RecordingUpstream

# the real nginx and Caddy from examples/, each asking a gateway (module scope, both kinds)
front = test_forward_auth.front

# each one is /admin (required, role admin) to the app, and would have been judged as public
DISGUISED = [
    ("/admin/panel#/../../public/x", "raw # that nginx routes on and the app cuts at"),
    ("/admin/panel%23/../../public/x", "encoded # before dot segments"),
    ("/admin;x/../public/x", "dot segment after a ; parameter"),
    ("/admin/%2e%2e/public/x", "encoded dot segment"),
    ("/admin/./../public/x", "raw dot segments"),
    ("//admin/panel", "empty first segment"),
    ("/%61dmin/panel", "encoded letter in the prefix"),
    ("/public/..%2f../admin", "encoded slash"),
]
# what Traefik (sanitizePath) resolves before the check and the app, both then asked for this path
TRAEFIK_RESOLVES = {
    "/admin/panel%23/../../public/x": "/public/x",
    "/admin;x/../public/x": "/public/x",
    "/admin/%2e%2e/public/x": "/public/x",
    "/admin/./../public/x": "/public/x",
}


def _send(front: Front, target: str, cookie: str | None) -> RawResponse:
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{front.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in API.items()]
    if cookie:
        lines.append(f"Cookie: gw_session={cookie}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return raw_request(front.port, data)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    """The app behind the proxies (the security suite's shared upstream is per test)."""
    server = RecordingUpstream(slow_seconds=3.0)
    yield server
    server.close()


def _cookie(front: Front, user: str | None) -> str | None:
    return front.signed_in(user).cookies.get("gw_session") if user else None


def _with_marker(target: str, m: str) -> str:
    # the marker goes last, so the attack's path is sent as written; the app records it raw
    return f"{target}{'&' if '?' in target else '?'}m={m}"


@pytest.mark.parametrize("target,why", DISGUISED, ids=[w for _, w in DISGUISED])
@pytest.mark.parametrize("user", [None, "alice"], ids=["anonymous", "staff user"])
def test_a_uri_the_app_reads_otherwise_is_refused_through_the_proxy(
    front: Front, user: str | None, target: str, why: str
):
    m = marker()
    response = _send(front, _with_marker(target, m), _cookie(front, user))
    resolved = TRAEFIK_RESOLVES.get(target) if front.kind == "traefik" else None
    if resolved is not None:
        # not a disguise any more: the gateway judged, and the app got, the resolved path
        assert response.status == 200, why
        rec = front.reached(m)
        assert rec is not None and rec.target == f"{resolved}?m={m}", why
        return
    assert response.status in (400, 401, 403), why
    assert front.reached(m) is None, f"{front.kind} passed {target!r} to the app"


def test_a_raw_hash_reaches_nobody_even_where_the_proxy_routes_before_it(front: Front):
    m = marker()
    response = _send(front, f"/public/x?m={m}#/../../admin", None)
    assert response.status == 403
    assert front.reached(m) is None


@pytest.mark.parametrize("space", [" ", "\t"], ids=["space", "tab"])
def test_whitespace_in_the_target_is_refused_by_the_proxy_itself(front: Front, space):
    m = marker()
    response = _send(front, f"/admin{space}/public/x?m={m}", None)
    assert response.status == 400
    assert front.reached(m) is None


def test_a_question_mark_starts_the_query_for_the_gateway_as_for_the_app(front: Front):
    m = marker()
    anonymous = _send(front, f"/admin/panel?m={m}/../../public/x", None)
    assert anonymous.status == 401
    staff = _send(front, f"/admin/panel?m={m}/../../public/x", _cookie(front, "alice"))
    assert staff.status == 403
    assert front.reached(m) is None


@pytest.mark.parametrize(
    "target",
    ["/public/a%20b", "/public/caf%C3%A9/x", "/public/x?q=a%20b&r=%2F", "/public/x/"],
    ids=["encoded space", "encoded UTF-8", "encoded query", "trailing slash"],
)
def test_canonical_uris_still_pass(front: Front, target):
    m = marker()
    response = _send(front, _with_marker(target, m), None)
    assert response.status == 200
    rec = front.reached(m)
    assert rec is not None
    assert not {name.lower() for name, _ in rec.headers} & set(IDENTITY)


@pytest.mark.parametrize("target,why", DISGUISED, ids=[w for _, w in DISGUISED])
def test_verify_refuses_the_uri_when_asked_directly(front: Front, target, why):
    # a proxy other than the two here may pass any of these as they are
    with front.gateway.client() as client:
        for header in ("X-Original-URI", "X-Forwarded-Uri"):
            response = client.get("/.auth/verify", headers={header: target, **API})
            assert response.status_code == 403, (header, why)
            assert response.json()["error"] == "bad_request"
