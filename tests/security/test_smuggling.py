"""Request smuggling and parser leniency: one unambiguous request in, one request out."""

from __future__ import annotations

import socket

import pytest

from tests.security.attack import nothing_forwarded, only, raw, read_from


def _head(gw, method: str = "POST", target: str = "/page") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n".encode()


AMBIGUOUS = [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "CL then TE"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "TE then CL"),
    (b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "two different CL"),
    (b"Content-Length: 3, 3\r\n\r\nabc", "CL list"),
    (b"Content-Length: +3\r\n\r\nabc", "signed CL"),
    (b"Content-Length: -1\r\n\r\n", "negative CL"),
    (b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "TE xchunked"),
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "TE gzip then chunked"),
    (b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "TE chunked then identity"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", "two TE"),
    (b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "space before colon"),
    (b"Transfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n", "vertical tab in TE"),
    (b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", "obs-fold"),
    (b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n", "bare CR in a value"),
    (b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "NUL in a value"),
]


@pytest.mark.parametrize("rest,why", AMBIGUOUS, ids=[w for _, w in AMBIGUOUS])
def test_ambiguous_framing_is_refused_before_the_upstream(gw, upstream, rest, why):
    response = raw(gw, _head(gw) + b"Connection: close\r\n" + rest)
    assert response.status == 400, why
    assert nothing_forwarded(upstream)


def test_bare_lf_line_endings_are_refused(gw, upstream):
    data = f"GET /page HTTP/1.1\nHost: 127.0.0.1:{gw.port}\nX-User-Id: admin\n\n".encode()
    response = raw(gw, data)
    assert response.status == 400
    assert nothing_forwarded(upstream)


def test_a_request_hidden_in_a_body_stays_a_body(gw, upstream):
    hidden = f"GET /admin HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nX-User-Id: admin\r\n\r\n"
    body = hidden.encode()
    data = _head(gw) + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    response = raw(gw, data)
    assert response.status == 200
    rec = only(upstream)
    assert rec.body == body
    assert rec.header("content-length") == [str(len(body))]


def test_pipelined_requests_are_each_judged_on_their_own(gw, upstream):
    first = _head(gw, "GET", "/page") + b"\r\n"
    second = _head(gw, "GET", "/admin/x") + b"X-User-Id: admin\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(first + second)
        reader = sock.makefile("rb")
        one, two = read_from(reader), read_from(reader)
    assert one.status == 200 and two.status == 401
    rec = only(upstream)
    assert rec.target == "/page"
    assert "x-user-id" not in rec.names()


def test_chunked_trailers_never_become_headers(gw, upstream):
    data = (
        _head(gw)
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"3\r\nabc\r\n0\r\nX-User-Id: admin\r\nX-Forwarded-For: 10.0.0.1\r\n"
        + b"X-Smuggled: 1\r\n\r\n"
    )
    response = raw(gw, data)
    assert response.status == 200
    rec = only(upstream)
    assert rec.body == b"abc"
    # a filter in front of us saw no such header; the upstream must not see one either
    assert "x-smuggled" not in rec.names()
    assert "x-user-id" not in rec.names()
    assert rec.header("x-forwarded-for") == ["127.0.0.1"]


def test_client_framing_headers_are_never_copied(gw, upstream):
    data = (
        _head(gw)
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"2\r\nab\r\n1;ext=1\r\nc\r\n0\r\n\r\n"
    )
    response = raw(gw, data)
    assert response.status == 200
    rec = only(upstream)
    assert rec.body == b"abc"
    # the gateway frames the upstream request itself: one framing header, never both
    framing = [
        k.lower() for k, _ in rec.headers if k.lower() in ("content-length", "transfer-encoding")
    ]
    assert len(framing) == 1
