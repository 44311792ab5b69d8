"""Path normalization: what is matched is exactly what the upstream receives."""

from __future__ import annotations

import itertools
from urllib.parse import quote

import pytest

from gateway.config import Route
from gateway.core import routing
from gateway.core.routing import BadPath, Router, encode_path, normalize_path
from tests.conftest import Gateway
from tests.rawhttp import get
from tests.upstream import RecordingUpstream


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E/b", "/a/b"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a%20b", "/a b"),
        ("/caf%C3%A9", "/café"),
        ("/a;x=1/b", "/a;x=1/b"),
    ],
)
def test_normalize_path_resolves(raw: str, expected: str):
    assert normalize_path(raw.encode()) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/a%00b",
        "/a%3fb",
        "/a%23b",
        "/a%zz",
        "/a%2",
        "/a%252e%252e/b",
        "/a%0d%0ab",
        "/a%7f",
        "/a/..;/b",
        "/a/.;x/b",
        "/a%ff",
        "a/b",
        "http://evil/a",
    ],
)
def test_normalize_path_refuses(raw: str):
    assert isinstance(normalize_path(raw.encode()), BadPath)


def test_encode_path_is_the_inverse():
    for path in ["/a b", "/café", "/a;b=c/d", "/x%y"]:
        assert normalize_path(encode_path(path)) == path


def test_the_fast_paths_answer_as_the_full_walk():
    # every path of up to five bytes from an alphabet of the bytes that decide: the shortcut for
    # an already-normal path gives what the byte-by-byte walk gives, refusals included
    alphabet = [b"/", b".", b"%", b"2", b"e", b"a", b";", b"\\", b" ", b"~", b'"', b"\xc3"]
    checked = 0
    for size in range(6):
        for parts in itertools.product(alphabet, repeat=size):
            raw = b"/" + b"".join(parts)
            assert normalize_path(raw) == routing._normalize_walk(raw), raw
            checked += 1
    assert checked > 200_000
    # and encode_path's shortcut leaves exactly what quote() would
    for code in range(0x20, 0x250):
        path = "/a" + chr(code) + "b"
        assert encode_path(path) == quote(path, safe=routing._PATH_SAFE).encode("ascii"), code


def _route(name: str, path: str, host: str | None = None, case_sensitive: bool = False) -> Route:
    return Route(
        name=name,
        path=path,
        upstream="http://127.0.0.1:1",
        host=host,
        case_sensitive=case_sensitive,
    )


ROUTER = Router(
    [
        _route("root", "/"),
        _route("crm", "/crm"),
        _route("crm-api", "/crm/api"),
        _route("crm-host", "/crm", host="crm.example.com"),
        _route("exact", "/Exact", case_sensitive=True),
    ]
)


@pytest.mark.parametrize(
    "host,path,name",
    [
        (None, "/", "root"),
        (None, "/crm", "crm"),
        (None, "/crm/x", "crm"),
        (None, "/crmx", "root"),
        (None, "/crm/api/v1", "crm-api"),
        (None, "/CRM/API", "crm-api"),
        ("crm.example.com", "/crm/x", "crm-host"),
        ("crm.example.com:8000", "/crm/x", "crm-host"),
        ("CRM.Example.com", "/crm/x", "crm-host"),
        ("other.example.com", "/crm/x", "crm"),
        (None, "/crm;jsessionid=1/x", "crm"),
        (None, "/Exact/x", "exact"),
        (None, "/exact/x", "root"),
    ],
)
def test_router_longest_prefix_on_segments(host, path, name):
    route = ROUTER.match(host, path)
    assert route is not None and route.name == name


UNICODE_ROUTER = Router(
    [
        _route("root", "/"),
        _route("wiki", "/wiki"),
        _route("api", "/api"),
        _route("kb", "/kb"),
        _route("exact", "/Exact", case_sensitive=True),
        _route("wiki-host", "/wiki", host="wiki.example.com"),
    ]
)


@pytest.mark.parametrize(
    "host,path,name",
    [
        (None, "/wik\u0130/secret", "root"),
        (None, "/ap\u0130/x", "root"),
        (None, "/WIK\u0130", "root"),
        (None, "/\u212ab/x", "root"),
        (None, "/\u212aB", "root"),
        (None, "/Exact\u0130/x", "root"),
        ("wiki.example.com", "/wik\u0130/x", "root"),
        (None, "/wiki/\u0130", "wiki"),
        (None, "/WIKI/caf\u00e9", "wiki"),
        ("wiki.example.com", "/Wiki/\u0130", "wiki-host"),
    ],
    ids=[
        "dotted capital I does not end the wiki segment",
        "dotted capital I does not end the api segment",
        "upper case with dotted capital I",
        "Kelvin sign is not k",
        "Kelvin sign with upper B is not kb",
        "case-sensitive route with dotted capital I",
        "host route with dotted capital I",
        "non-ASCII below the prefix stays in it",
        "upper-case prefix with accented rest",
        "host route with upper-case prefix",
    ],
)
def test_router_folds_ascii_only(host, path, name):
    route = UNICODE_ROUTER.match(host, path)
    assert route is not None and route.name == name


def test_router_without_root_returns_none():
    router = Router([_route("a", "/a")])
    assert router.match(None, "/b") is None
    assert router.match(None, "/ab") is None


# -- against the running gateway (raw sockets: httpx would normalize first) ----------------


@pytest.mark.parametrize(
    "target",
    [
        "/app/../admin/x",
        "/ADMIN/x",
        "/pub/%2e%2e/admin/x",
        "//admin/x",
        "/admin;x=1/y",
        "/Admin/./x",
    ],
    ids=["dotdot", "uppercase", "encoded-dotdot", "double-slash", "semicolon", "mixed-case-dot"],
)
def test_disguised_admin_paths_hit_the_admin_policy(gateway: Gateway, target: str):
    client = gateway.login("alice")
    cookie = f"gw_session={client.cookies['gw_session']}"
    response = get(gateway.port, target, {"Cookie": cookie, "Accept": "application/json"})
    assert response.status == 403


@pytest.mark.parametrize(
    "target,forwarded",
    [
        ("/admin/./x/../y", "/admin/y"),
        ("//admin//y", "/admin/y"),
        ("/admin/%7Euser", "/admin/~user"),
        ("/admin/a%20b", "/admin/a%20b"),
        ("/ADMIN/y?q=%2F", "/ADMIN/y?q=%2F"),
    ],
)
def test_upstream_receives_the_normalized_path(
    gateway: Gateway, upstream: RecordingUpstream, target: str, forwarded: str
):
    client = gateway.login("bob")
    cookie = f"gw_session={client.cookies['gw_session']}"
    upstream.clear()
    response = get(gateway.port, target, {"Cookie": cookie})
    assert response.status == 200
    assert upstream.last().target == forwarded


@pytest.mark.parametrize(
    "target",
    [
        "/pub/a%2fb",
        "/pub/a%5Cb",
        "/pub/a\\b",
        "/pub/a%00",
        "/pub/a%3F",
        "/pub/a%23",
        "/pub/%zz",
        "/pub/%252e%252e/admin",
        "/pub/..;/admin",
    ],
)
def test_dangerous_paths_are_400_and_never_forwarded(
    gateway: Gateway, upstream: RecordingUpstream, target: str
):
    upstream.clear()
    response = get(gateway.port, target)
    assert response.status == 400
    assert upstream.requests == []
