"""Gateways under attack: real processes on 127.0.0.1 in front of one recording upstream.

Started once for the whole security suite (each start costs a second):

- `gw`: the default stance, no trusted proxy, http://localhost public URL, a 1 s header
  read timeout, small login limits and one extra allowed origin.
- `trusted_gw`: behind a proxy on 127.0.0.1 (trusted_proxies), an https public URL (so the
  cookie is `__Host-` and Secure), strict revocation, and extra users for login attacks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest

from tests.conftest import USERS, Gateway, closed_port, make_gateway, standard_routes
from tests.upstream import RecordingUpstream

PARTNER = "https://partner.example"
TRUSTED_PUBLIC_URL = "https://gw.example"
# users on trusted_gw for login attacks: each test takes its own, so lockouts never collide
LOGIN_USERS = {
    **USERS,
    **{f"user{i}": (f"user{i}-password", ("staff",)) for i in range(12)},
}


def extra_routes(upstream: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "legacy"
        path = "/legacy"
        upstream = "{upstream}"
        auth = "public"
        strip_headers = ["X-Debug-User"]

        [[routes]]
        name = "crm"
        path = "/"
        host = "crm.example.com"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "ops"
        path = "/"
        host = "ops.example.com:8443"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "nobearer"
        path = "/nobearer"
        upstream = "{upstream}"
        auth = "required"
        bearer = false
        """
    )


def security_routes(upstream: RecordingUpstream) -> str:
    """The standard routes (with a dead upstream) plus the ones the attacks need."""
    dead = f"http://127.0.0.1:{closed_port()}"
    return standard_routes(upstream.url, dead) + extra_routes(upstream.url)


@pytest.fixture(scope="session")
def sec_upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(slow_seconds=3.0)
    yield server
    server.close()


@pytest.fixture(scope="session")
def gw(tmp_path_factory, sec_upstream) -> Iterator[Gateway]:
    extra = f"""
        [server]
        allowed_origins = ["{PARTNER}"]
        header_timeout = "1s"

        [login_limits]
        max_failures = 3
        lockout = "1m"
        """
    gateway = make_gateway(tmp_path_factory.mktemp("plain"), security_routes(sec_upstream), extra)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def trusted_gw(tmp_path_factory, sec_upstream) -> Iterator[Gateway]:
    extra = f"""
        [server]
        public_url = "{TRUSTED_PUBLIC_URL}"
        trusted_proxies = ["127.0.0.1/32"]

        [session]
        revocation = "strict"

        [login_limits]
        max_failures = 3
        lockout = "1m"
        """
    directory = tmp_path_factory.mktemp("trusted")
    gateway = make_gateway(directory, security_routes(sec_upstream), extra, users=LOGIN_USERS)
    yield gateway
    gateway.stop()


@pytest.fixture
def upstream(sec_upstream: RecordingUpstream) -> RecordingUpstream:
    """The shared recording upstream, emptied for this test."""
    sec_upstream.clear()
    return sec_upstream


@pytest.fixture(scope="session")
def alice_token(gw) -> str:
    """A session token for alice (role staff) on `gw`; never logged out."""
    from tests.security.attack import login

    return login(gw, "alice")


@pytest.fixture(scope="session")
def bob_token(gw) -> str:
    """A session token for bob (roles admin, staff) on `gw`; never logged out."""
    from tests.security.attack import login

    return login(gw, "bob")
