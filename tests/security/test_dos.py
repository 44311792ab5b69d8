"""Denial of service: slow heads, oversized request lines, headers, cookies and bodies are bounded."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.security.attack import nothing_forwarded, raw, read_from

# the gw fixture sets header_timeout = "1s"; the other limits are the defaults
HEADER_TIMEOUT = 1.0


def _head(gw) -> bytes:
    return f"GET /page HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n".encode()


def _answer_within(sock: socket.socket, seconds: float):
    sock.settimeout(seconds)
    reader = sock.makefile("rb")
    try:
        return read_from(reader)
    except ConnectionError:
        return None


def test_a_head_that_never_ends_gets_408_and_is_closed(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(_head(gw) + b"X-Slow: 1\r\n")
        response = _answer_within(sock, HEADER_TIMEOUT * 8)
        assert response is not None and response.status == 408
        assert sock.recv(1) == b""
    assert nothing_forwarded(upstream)


def test_a_second_head_that_never_ends_on_a_kept_alive_connection_gets_408(gw, upstream):
    # the first request is whole and answered; the deadline of the next head starts with the
    # bytes that begin it (on_message_begin), even though the connection is an old one
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(_head(gw) + b"\r\n")
        first = _answer_within(sock, HEADER_TIMEOUT * 8)
        assert first is not None and first.status != 408
        sock.sendall(_head(gw) + b"X-Slow: 1\r\n")
        second = _answer_within(sock, HEADER_TIMEOUT * 8)
        assert second is not None and second.status == 408
        assert sock.recv(1) == b""


def test_a_connection_that_sends_nothing_is_closed(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        response = _answer_within(sock, HEADER_TIMEOUT * 8)
        assert response is None or response.status == 408
    assert nothing_forwarded(upstream)


def test_a_dripping_head_is_not_kept_alive_by_its_drip(gw, upstream):
    # slowloris: a byte every so often; the deadline counts from the first byte, not the last
    deadline = time.monotonic() + HEADER_TIMEOUT * 8
    closed = False
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(_head(gw))
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if data.startswith(b"HTTP/1.1 408") or data == b"":
                closed = True
                break
    assert closed
    assert nothing_forwarded(upstream)


# uvicorn's timeout_keep_alive, which the gateway keeps
KEEP_ALIVE = 5.0


def test_a_kept_alive_connection_lives_while_used_and_closes_when_idle(gw, upstream):
    # requests 2 s apart, well past the idle limit in all: the limit counts from the last
    # response, and an idle connection is closed soon after it
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        reader = sock.makefile("rb")
        sock.settimeout(HEADER_TIMEOUT * 8)
        for i in range(4):
            if i:
                time.sleep(KEEP_ALIVE * 0.4)
            sock.sendall(_head(gw) + b"\r\n")
            assert read_from(reader).status != 408
            answered = time.monotonic()
        # idle now: closed once the limit has passed, and not long after
        sock.settimeout(KEEP_ALIVE * 3)
        assert sock.recv(1) == b""
        assert KEEP_ALIVE * 0.5 < time.monotonic() - answered < KEEP_ALIVE * 2


def test_an_oversized_request_line_is_414(gw, upstream):
    data = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    response = raw(gw, data)
    assert response.status == 414
    assert nothing_forwarded(upstream)


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 40000 + b"\r\n",
        b"Cookie: " + b"; ".join(b"c%d=%s" % (i, b"v" * 100) for i in range(400)) + b"\r\n",
        b"".join(b"X-Many-%d: 1\r\n" % i for i in range(150)),
        b"".join(b"X-Mid-%d: %s\r\n" % (i, b"m" * 1000) for i in range(40)),
    ],
    ids=["one 40 kB header", "40 kB of cookies", "150 headers", "40 headers of 1 kB"],
)
def test_oversized_headers_are_431(gw, upstream, extra):
    response = raw(gw, _head(gw) + extra + b"Connection: close\r\n\r\n")
    assert response.status == 431
    assert nothing_forwarded(upstream)


def test_a_head_fed_in_small_pieces_is_bounded_too(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_head(gw) + b"X-Drip: ")
        response = None
        try:
            for _ in range(100):
                sock.sendall(b"d" * 1024)
        except OSError:
            pass
        response = _answer_within(sock, 5)
    assert response is not None and response.status == 431
    assert nothing_forwarded(upstream)


def test_an_oversized_login_body_is_413_without_reading_it_all(gw, upstream):
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        response = client.post(
            "/.auth/login",
            content=iter([b"{" + b" " * 65536] * 8),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert nothing_forwarded(upstream)


def _login_head(gw, length: str) -> bytes:
    return (
        f"POST /.auth/login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Content-Type: application/json\r\n{length}\r\n\r\n"
    ).encode()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the gateway closes the connection within `seconds` (what is sent is read)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


def test_an_oversized_login_body_is_413_and_the_connection_closes(gw, upstream):
    # without `connection: close` uvicorn went on reading (and dropping) an endless upload on
    # that connection: 28 GB in 20 s, half a core
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(_login_head(gw, "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        try:
            for _ in range(4):
                sock.sendall(chunk)
        except ConnectionError:
            pass
        response = _answer_within(sock, 10)
        assert response is not None and response.status == 413
        assert response.header("connection") == ["close"]
        assert _closed_within(sock, 5)
    assert nothing_forwarded(upstream)


def test_a_login_body_that_never_arrives_gets_408_and_is_closed(gw, upstream):
    from gateway.endpoints.common import BODY_SECONDS

    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        started = time.monotonic()
        sock.sendall(_login_head(gw, "Content-Length: 100") + b'{"username": ')
        response = _answer_within(sock, BODY_SECONDS + 10)
        waited = time.monotonic() - started
        assert response is not None and response.status == 408, response
        assert BODY_SECONDS - 1 < waited < BODY_SECONDS + 5
        assert response.header("connection") == ["close"]
        assert _closed_within(sock, 5)
    assert nothing_forwarded(upstream)


def test_the_gateway_still_serves_after_the_attacks(gw, upstream):
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        assert client.get("/.auth/health").status_code == 200
        assert client.get("/page").status_code == 200
