"""The upstream HTTP/1.1 client against real scripted servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.config import ServerConfig
from gateway.proxy.client.errors import ConnectFailed, ProtocolError, ReadFailed, ReadTimeout
from gateway.proxy.client.pool import UpstreamPool
from tests.conftest import closed_port

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
DEFAULTS = ServerConfig()


def make_pool(url: str, **limits: int) -> UpstreamPool:
    """A pool with the [server] defaults for the response head limits unless overridden."""
    limits.setdefault("max_header_bytes", DEFAULTS.max_response_header_bytes)
    limits.setdefault("max_headers", DEFAULTS.max_response_headers)
    return UpstreamPool(url, **limits)


# what a scripted server sends for one request: bytes; or pieces, with floats as pauses between
# them (so that they arrive in separate reads); or None to close without answering
Answer = bytes | list[bytes | float] | None


class Scripted:
    """An asyncio server answering each request head with `answer(head, body)`.

    `index` is the request's place on its connection (from 0) while `answer` runs.
    """

    def __init__(self, answer: Callable[[bytes, bytes], Answer], close_after: bool = False):
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.index = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.finished = 0  # answers written to the end

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for index in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                body = b""
                lowered = head.lower()
                if b"content-length:" in lowered:
                    length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                elif b"transfer-encoding: chunked" in lowered:
                    while True:
                        size = int((await reader.readline()).strip(), 16)
                        piece = await reader.readexactly(size + 2)
                        if size == 0:
                            break
                        body += piece[:-2]
                self.bodies.append(body)
                self.index = index
                answer = self.answer(head, body)
                if answer is None:
                    break
                for piece in [answer] if isinstance(answer, bytes) else answer:
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                    else:
                        writer.write(piece)
                        await writer.drain()
                self.finished += 1
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def read_all(pool: UpstreamPool, method: str = "GET", **kwargs) -> tuple[int, bytes]:
    response = await pool.send(method, b"/x", [(b"x-test", b"1")], timeout=2.0, **kwargs)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.status_code, body


async def chunks(*pieces: bytes):
    for piece in pieces:
        yield piece


@pytest.mark.parametrize(
    ("answer", "method", "expected"),
    [
        (lambda h, b: OK, "GET", (200, b"ok")),
        (
            lambda h, b: b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
            "GET",
            (200, b"until the end"),
        ),
        (lambda h, b: b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK, "GET", (200, b"ok")),
        (lambda h, b: b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", "HEAD", (200, b"")),
        (lambda h, b: b"HTTP/1.1 204 No Content\r\n\r\n", "GET", (204, b"")),
        (
            lambda h, b: (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
            ),
            "GET",
            (200, b"abc"),
        ),
    ],
    ids=[
        "a content-length body is read",
        "a body delimited by the connection's end is read to the end",
        "an interim 103 answer is skipped",
        "a HEAD answer has no body to wait for",
        "a 204 has no body",
        "a chunked body is de-chunked",
    ],
)
def test_response_framing(answer, method, expected):
    async def run():
        async with Scripted(answer, close_after=b"connection: close" in answer(b"", b"")) as server:
            pool = make_pool(server.url)
            assert await read_all(pool, method) == expected
            await pool.aclose()

    asyncio.run(run())


def test_a_kept_alive_connection_is_reused():
    async def run():
        async with Scripted(lambda h, b: OK) as server:
            pool = make_pool(server.url)
            for _ in range(5):
                assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 1

    asyncio.run(run())


def test_a_connection_the_upstream_closed_is_replaced():
    async def run():
        async with Scripted(lambda h, b: OK, close_after=True) as server:
            pool = make_pool(server.url)
            for _ in range(3):
                assert await read_all(pool) == (200, b"ok")
                await asyncio.sleep(0.05)
            await pool.aclose()
        assert server.connections == 3

    asyncio.run(run())


@pytest.mark.parametrize(
    "length", [None, 6], ids=["chunked when the length is unknown", "content-length when known"]
)
def test_request_bodies_are_framed(length):
    async def run():
        async with Scripted(lambda h, b: OK) as server:
            pool = make_pool(server.url)
            headers = [] if length is None else [(b"content-length", b"6")]
            response = await pool.send(
                "POST", b"/", headers, chunks(b"abc", b"def"), content_length=length, timeout=2.0
            )
            await response.aclose()
            await pool.aclose()
        assert server.bodies == [b"abcdef"]

    asyncio.run(run())


def test_refused_is_a_connect_error():
    async def run():
        pool = make_pool(f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(ConnectFailed):
            await read_all(pool)

    asyncio.run(run())


def test_no_answer_is_a_read_timeout():
    async def run():
        async with Scripted(lambda h, b: b"") as server:
            pool = make_pool(server.url)
            with pytest.raises(ReadTimeout):
                await pool.send("GET", b"/", [], timeout=0.3)
            await pool.aclose()

    asyncio.run(run())


def test_garbage_is_a_protocol_error():
    async def run():
        async with Scripted(lambda h, b: b"NOT HTTP AT ALL\r\n\r\n") as server:
            pool = make_pool(server.url)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            await pool.aclose()

    asyncio.run(run())


def test_bytes_sent_on_an_idle_connection_never_answer_the_next_request():
    async def run():
        server_writers = []

        async def serve(reader, writer):
            server_writers.append(writer)
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(OK)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool = make_pool(url)
        assert await read_all(pool) == (200, b"ok")
        # an unsolicited answer on the idle connection (as a server timing it out may send)
        server_writers[0].write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await server_writers[0].drain()
        await asyncio.sleep(0.05)
        assert await read_all(pool) == (200, b"ok")
        await pool.aclose()
        server.close()
        await server.wait_closed()

    asyncio.run(run())


def _then_ok(first: Answer) -> Callable[[bytes, bytes], Answer]:
    """An answer script: `first` for the first request the server reads, OK for the rest."""
    count = [0]

    def answer(head: bytes, body: bytes) -> Answer:
        count[0] += 1
        return first if count[0] == 1 else OK

    return answer


EVIL = b"HTTP/1.1 302 Found\r\nlocation: http://evil.example/\r\nset-cookie: sid=alice\r\n"


@pytest.mark.parametrize(
    "first",
    [
        OK + EVIL + b"content-length: 0\r\n\r\n",
        OK + EVIL,
        OK + b"HTTP/1.1 302 Found\r\nset-cookie: sid=alice; x=",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nh\xc3\xa9llo",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + EVIL,
    ],
    ids=[
        "a whole second response",
        "the head of a second response",
        "a second response cut inside a header",
        "a body longer than its content-length",
        "a second response after a chunked body",
    ],
)
def test_bytes_after_a_response_in_the_same_read_are_a_protocol_error(first):
    async def run():
        async with Scripted(_then_ok(first)) as server:
            pool = make_pool(server.url)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            # the next request gets its own answer, on a new connection
            assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 2

    asyncio.run(run())


def test_bytes_after_a_response_already_handed_out_close_its_connection():
    async def run():
        head, rest = OK.split(b"\r\n\r\n")
        first = [head + b"\r\n\r\n", 0.05, rest + EVIL + b"content-length: 0\r\n\r\n"]
        async with Scripted(_then_ok(first)) as server:
            pool = make_pool(server.url)
            response = await pool.send("GET", b"/", [], timeout=2.0)
            assert (response.status_code, response.headers) == (200, [(b"content-length", b"2")])
            assert b"".join([c async for c in response.aiter_raw()]) == b"ok"
            assert response.headers == [(b"content-length", b"2")]  # nothing merged in later
            await response.aclose()
            assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    "method", ["POST", "PATCH", "DELETE", "PUT"], ids=lambda m: f"a {m} without a body"
)
def test_a_request_on_a_reused_connection_that_closes_is_not_sent_twice(method):
    async def run():
        # the second request on each connection is read, then the connection closes
        async with Scripted(lambda h, b: None if server.index else OK) as server:
            pool = make_pool(server.url)
            assert await read_all(pool) == (200, b"ok")
            with pytest.raises(ReadFailed):
                await read_all(pool, method)
            await pool.aclose()
        assert [h.split(b" ")[0] for h in server.heads] == [b"GET", method.encode()]

    asyncio.run(run())


def test_a_get_on_a_reused_connection_that_closes_is_sent_again_once():
    async def run():
        async with Scripted(lambda h, b: None if server.index else OK) as server:
            pool = make_pool(server.url)
            assert await read_all(pool) == (200, b"ok")
            assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 2
        assert len(server.heads) == 3

    asyncio.run(run())


def test_a_get_is_not_sent_a_third_time():
    async def run():
        answers = iter([OK, None, None, OK])
        async with Scripted(lambda h, b: next(answers)) as server:
            pool = make_pool(server.url)
            assert await read_all(pool) == (200, b"ok")
            with pytest.raises(ReadFailed):
                await read_all(pool)
            await pool.aclose()
        assert len(server.heads) == 3

    asyncio.run(run())


def test_trailers_never_become_headers():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n"
    trailers = b"x-trailer: evil\r\nset-cookie: t=1\r\n\r\n"

    async def run():
        async with Scripted(lambda h, b: chunked + trailers) as server:
            pool = make_pool(server.url)
            response = await pool.send("GET", b"/", [], timeout=2.0)
            assert b"".join([c async for c in response.aiter_raw()]) == b"ab"
            assert response.headers == [(b"transfer-encoding", b"chunked")]
            await response.aclose()
            assert await read_all(pool) == (200, b"ab")  # and the connection is still good
            await pool.aclose()
        assert server.connections == 1

    asyncio.run(run())


def test_a_101_nobody_asked_for_is_a_protocol_error_and_is_not_pooled():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"

    async def run():
        async with Scripted(_then_ok(switch)) as server:
            pool = make_pool(server.url)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 2

    asyncio.run(run())


def test_a_1xx_with_a_body_is_a_protocol_error_not_part_of_the_final_body():
    interim = b"HTTP/1.1 100 Continue\r\ncontent-length: 3\r\n\r\nabc" + OK

    async def run():
        async with Scripted(lambda h, b: interim) as server:
            pool = make_pool(server.url)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            await pool.aclose()

    asyncio.run(run())


def _filler(count: int, size: int = 100) -> bytes:
    return b"".join(b"x-filler-%d: %s\r\n" % (i, b"f" * size) for i in range(count))


@pytest.mark.parametrize(
    ("answer", "limits"),
    [
        (b"HTTP/1.1 200 OK\r\n" + _filler(11) + b"content-length: 0\r\n\r\n", {"max_headers": 10}),
        (b"HTTP/1.1 200 OK\r\n" + _filler(30) + b"\r\n", {"max_header_bytes": 2048}),
    ],
    ids=["one header more than max_headers", "a head in one read over max_header_bytes"],
)
def test_a_response_head_over_the_limits_is_a_protocol_error(answer, limits):
    async def run():
        async with Scripted(lambda h, b: answer) as server:
            pool = make_pool(server.url, **limits)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            await pool.aclose()

    asyncio.run(run())


# about 2 MB of head in many writes: the pool must stop reading long before the end
_PIECES = 512


@pytest.mark.parametrize(
    "answer",
    [
        [b"HTTP/1.1 200 OK\r\nx-one: ", *[b"v" * 4096, 0.0005] * _PIECES, b"\r\n\r\n"],
        # fewer headers than max_headers: only their size can stop them
        [b"HTTP/1.1 200 OK\r\n", *[_filler(1, 23000), 0.0005] * 90, b"\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\n" + _filler(36) + b"\r\n", 0.0005] * _PIECES,
    ],
    ids=[
        "one header growing across reads",
        "large headers across reads",
        "an endless run of 103s",
    ],
)
def test_a_response_head_is_refused_before_it_is_read_whole(answer):
    async def run():
        async with Scripted(lambda h, b: answer) as server:
            pool = make_pool(server.url, max_header_bytes=65536)
            with pytest.raises(ProtocolError):
                await read_all(pool)
            await pool.aclose()
        assert server.finished == 0  # its writes failed: the pool had hung up

    asyncio.run(run())


def test_a_response_head_at_the_limits_passes():
    head = b"HTTP/1.1 200 OK\r\n" + _filler(9) + b"content-length: 2\r\n\r\nok"

    async def run():
        async with Scripted(lambda h, b: head) as server:
            pool = make_pool(server.url, max_headers=10, max_header_bytes=2048)
            assert await read_all(pool) == (200, b"ok")
            await pool.aclose()

    asyncio.run(run())


def test_trailers_that_never_end_are_a_protocol_error():
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n"
    answer = [chunked, 0.05, b"0\r\nx-trailer: ", *[b"t" * 4096, 0.001] * 64, b"\r\n\r\n"]

    async def run():
        async with Scripted(lambda h, b: answer) as server:
            pool = make_pool(server.url, max_header_bytes=65536)
            response = await pool.send("GET", b"/", [], timeout=2.0)
            with pytest.raises(ProtocolError):
                async for _ in response.aiter_raw():
                    pass
            await response.aclose()
            await pool.aclose()

    asyncio.run(run())


def test_a_head_that_trickles_past_the_timeout_is_a_read_timeout():
    drip = [b"HTTP/1.1 200 OK\r\n", *[0.1, b"x-drip: 1\r\n"] * 20, b"content-length: 2\r\n\r\nok"]

    async def run():
        async with Scripted(lambda h, b: drip) as server:
            pool = make_pool(server.url)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ReadTimeout):
                await pool.send("GET", b"/", [], timeout=0.5)
            assert loop.time() - started < 1.0
            await pool.aclose()

    asyncio.run(run())


def test_the_head_deadline_does_not_count_a_slow_upload():
    async def slow_body():
        for _ in range(4):
            await asyncio.sleep(0.2)
            yield b"abc"

    async def run():
        async with Scripted(lambda h, b: OK) as server:
            pool = make_pool(server.url)
            response = await pool.send("POST", b"/", [], slow_body(), timeout=0.5)
            assert response.status_code == 200
            await response.aclose()
            await pool.aclose()
        assert server.bodies == [b"abc" * 4]

    asyncio.run(run())
