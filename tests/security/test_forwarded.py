"""Forwarded headers and the trust boundary: believed only from trusted_proxies, right-most first."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import USERS, Gateway, make_gateway
from tests.security.attack import access_line, fresh_ip, marked, nothing_forwarded, only, request
from tests.upstream import RecordingUpstream

UNTRUSTED_CLIENT_HEADERS = [
    ("X-Real-IP", "10.0.0.1"),
    ("True-Client-IP", "10.0.0.1"),
    ("CF-Connecting-IP", "10.0.0.1"),
    ("X-Client-IP", "10.0.0.1"),
    ("X-Cluster-Client-IP", "10.0.0.1"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Server", "intranet"),
    ("X-Forwarded-Ssl", "on"),
    ("Front-End-Https", "on"),
]


def test_untrusted_x_forwarded_for_is_replaced_by_the_peer(gw, upstream):
    response = request(gw, "GET", "/page", [("X-Forwarded-For", "10.0.0.1, 1.2.3.4")])
    assert response.status == 200
    assert only(upstream).header("x-forwarded-for") == ["127.0.0.1"]


def test_untrusted_x_forwarded_proto_and_host_are_not_believed(gw, upstream):
    headers = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "intranet.corp")]
    response = request(gw, "GET", "/page", headers)
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-forwarded-proto") == ["http"]
    assert rec.header("x-forwarded-host") == [f"127.0.0.1:{gw.port}"]


def test_untrusted_forwarded_header_is_dropped(gw, upstream):
    response = request(gw, "GET", "/page", [("Forwarded", "for=10.0.0.1;proto=https;host=evil")])
    assert response.status == 200
    assert "forwarded" not in only(upstream).names()


@pytest.mark.parametrize("name,value", UNTRUSTED_CLIENT_HEADERS, ids=lambda v: str(v))
def test_client_address_headers_are_dropped(gw, upstream, name, value):
    response = request(gw, "GET", "/page", [(name, value)])
    assert response.status == 200
    assert name.lower() not in only(upstream).names()


def test_untrusted_request_id_is_replaced(gw, upstream):
    response = request(gw, "GET", "/page", [("X-Request-Id", "attacker-chosen-id")])
    assert response.status == 200
    ids = only(upstream).header("x-request-id")
    assert len(ids) == 1 and ids[0] != "attacker-chosen-id"


@pytest.mark.parametrize(
    "name,value",
    [
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Uri", "/admin"),
        ("Remote-User", "admin"),
        ("X-Forwarded-User", "admin"),
        ("X-Forwarded-Email", "admin@corp"),
        ("X-Auth-Request-User", "admin"),
    ],
    ids=lambda v: str(v),
)
def test_headers_legacy_stacks_route_or_log_in_on_are_dropped(gw, upstream, name, value):
    response = request(gw, "GET", "/page", [(name, value), (name.replace("-", "_"), value)])
    assert response.status == 200
    rec = only(upstream)
    folded = {k.lower().replace("_", "-") for k in rec.names()}
    assert name.lower() not in folded


def test_the_log_names_the_peer_not_a_spoofed_address(gw, upstream):
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        response = client.post(
            "/.auth/login",
            json={"username": "alice", "password": "wrong-password-x"},
            headers={"x-forwarded-for": "203.0.113.99", "x-real-ip": "203.0.113.98"},
        )
    assert response.status_code == 401
    assert "203.0.113.9" not in gw.logs()
    assert "client=127.0.0.1" in gw.logs()
    assert not upstream.requests


# -- behind a trusted proxy ---------------------------------------------------------------


def test_trusted_proxy_chain_is_appended_to(trusted_gw, upstream):
    response = request(trusted_gw, "GET", "/page", [("X-Forwarded-For", "203.0.113.7")])
    assert response.status == 200
    assert only(upstream).header("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]


def test_trusted_proxy_scheme_and_host_are_believed_when_well_formed(trusted_gw, upstream):
    headers = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "gw.example")]
    response = request(trusted_gw, "GET", "/page", headers)
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-forwarded-proto") == ["https"]
    assert rec.header("x-forwarded-host") == ["gw.example"]


def test_trusted_proxy_malformed_scheme_and_host_are_ignored(trusted_gw, upstream):
    headers = [
        ("X-Forwarded-Proto", "javascript"),
        ("X-Forwarded-Host", "evil.example/path@x"),
    ]
    response = request(trusted_gw, "GET", "/page", headers)
    assert response.status == 200
    rec = only(upstream)
    assert rec.header("x-forwarded-proto") == ["http"]
    assert rec.header("x-forwarded-host") == [f"127.0.0.1:{trusted_gw.port}"]


def test_rotating_the_left_most_address_does_not_escape_the_address_limit(trusted_gw, upstream):
    # right-most untrusted: only the address our trusted proxy appended counts
    real = fresh_ip()
    statuses = []
    with httpx.Client(base_url=trusted_gw.url, trust_env=False) as client:
        for i in range(13):
            spoofed = fresh_ip()
            response = client.post(
                "/.auth/login",
                json={"username": f"nobody{i}-{real}", "password": "guess-guess"},
                headers={"x-forwarded-for": f"{spoofed}, {real}"},
            )
            statuses.append(response.status_code)
        # the real user, from the same real address, is now refused too
        final = client.post(
            "/.auth/login",
            json={"username": "user0", "password": "user0-password"},
            headers={"x-forwarded-for": f"{fresh_ip()}, {real}"},
        )
    assert statuses[:12] == [401] * 12 and statuses[12] == 429
    assert final.status_code == 429 and int(final.headers["retry-after"]) > 0
    assert not upstream.requests


# -- a forwarded hop that names no address, behind a trusted proxy ------------------------

# hops the trusted proxy (127.0.0.1) passes on that are no plain address: before, the walk
# stopped at them and took the proxy's own address for the client's
UNREADABLE_HOPS = [
    "203.0.113.9:5555",
    "unknown",
    "[2001:db8::1]:443",
    "203.0.113.9%eth0",
    "127.0.0.5, 203.0.113.9:5555",
    "127.0.0.1%lo",
    "_hidden",
    "not-an-address",
]


@pytest.fixture(scope="module")
def netgw(tmp_path_factory, sec_upstream: RecordingUpstream) -> Iterator[Gateway]:
    """Behind a trusted proxy on 127.0.0.1, with routes that judge the client's address."""
    routes = textwrap.dedent(
        f"""
        [[routes]]
        name = "bypass"
        path = "/bypass"
        upstream = "{sec_upstream.url}"
        auth = "required"
        bypass_networks = ["127.0.0.0/8"]

        [[routes]]
        name = "loopback"
        path = "/loopback"
        upstream = "{sec_upstream.url}"
        auth = "public"
        networks = ["127.0.0.0/8"]

        [[routes]]
        name = "docnet"
        path = "/docnet"
        upstream = "{sec_upstream.url}"
        auth = "public"
        networks = ["203.0.113.0/24"]

        [[routes]]
        name = "open"
        path = "/open"
        upstream = "{sec_upstream.url}"
        auth = "public"
        """
    )
    extra = """
        [server]
        trusted_proxies = ["127.0.0.1/32"]

        [login_limits]
        max_failures = 1
        lockout = "1m"
        """
    gateway = make_gateway(tmp_path_factory.mktemp("networks"), routes, extra)
    yield gateway
    gateway.stop()


def test_the_network_routes_admit_the_proxy_and_refuse_a_forwarded_outsider(netgw, upstream):
    # the baseline the attacks below are held to
    assert request(netgw, "GET", "/bypass/x").status == 200
    assert request(netgw, "GET", "/loopback/x").status == 200
    outsider = [("X-Forwarded-For", "203.0.113.9")]
    assert request(netgw, "GET", "/bypass/x", outsider).status == 401
    assert request(netgw, "GET", "/loopback/x", outsider).status == 403


@pytest.mark.parametrize("hops", UNREADABLE_HOPS)
def test_an_unreadable_forwarded_hop_gets_no_bypass_networks(netgw, upstream, hops):
    response = request(netgw, "GET", "/bypass/x", [("X-Forwarded-For", hops)])
    assert response.status == 401
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize("hops", UNREADABLE_HOPS)
def test_an_unreadable_forwarded_hop_is_outside_networks(netgw, upstream, hops):
    response = request(netgw, "GET", "/loopback/x", [("X-Forwarded-For", hops)])
    assert response.status == 403
    assert nothing_forwarded(upstream)


def test_an_address_with_a_port_is_read_without_it(netgw, upstream):
    path = marked("/docnet/x")
    response = request(netgw, "GET", path, [("X-Forwarded-For", "203.0.113.9:5555")])
    assert response.status == 200
    assert only(upstream).header("x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert access_line(netgw, path)["client"] == "203.0.113.9"


def test_a_bracketed_ipv6_address_with_a_port_is_read_without_it(netgw, upstream):
    path = marked("/open/x")
    response = request(netgw, "GET", path, [("X-Forwarded-For", "[2001:db8::1]:443")])
    assert response.status == 200
    assert only(upstream).header("x-forwarded-for") == ["2001:db8::1, 127.0.0.1"]
    assert access_line(netgw, path)["client"] == "2001:db8::1"


@pytest.mark.parametrize("hop", ["unknown", "203.0.113.9%eth0", "_hidden"])
def test_an_unknown_client_is_logged_as_no_address_not_as_the_proxy(netgw, upstream, hop):
    path = marked("/open/x")
    response = request(netgw, "GET", path, [("X-Forwarded-For", hop)])
    assert response.status == 200
    # the chain goes on as it came, the peer appended; the gateway names no client of its own
    assert only(upstream).header("x-forwarded-for") == [f"{hop}, 127.0.0.1"]
    assert access_line(netgw, path)["client"] == ""


def test_unknown_clients_do_not_use_up_the_proxys_own_login_budget(netgw, upstream):
    # unknown clients count under no address (as a client without one does), so their
    # failures lock them out together (4 = max_failures 1 x ADDRESS_FACTOR), not the proxy
    with httpx.Client(base_url=netgw.url, trust_env=False) as client:
        statuses = [
            client.post(
                "/.auth/login",
                json={"username": f"nobody{i}", "password": "guess-guess"},
                headers={"x-forwarded-for": "unknown"},
            ).status_code
            for i in range(5)
        ]
        own = client.post("/.auth/login", json={"username": "alice", "password": USERS["alice"][0]})
    assert statuses == [401] * 4 + [429]
    assert own.status_code == 200
    failures = [line for line in netgw.logs().splitlines() if "login failed" in line]
    assert len(failures) == 4
    assert all(line.endswith("client=") for line in failures), failures
    assert not upstream.requests
