"""The upstream HTTP/1.1 client against real scripted servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from gateway.upstream_pool import UpstreamPool
from tests.conftest import closed_port

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Scripted:
    """An asyncio server answering each request head with `answer(head, body)` bytes."""

    def __init__(self, answer: Callable[[bytes, bytes], bytes], close_after: bool = False):
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.bodies: list[bytes] = []

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
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
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
                writer.write(self.answer(head, body))
                await writer.drain()
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
            pool = UpstreamPool(server.url)
            assert await read_all(pool, method) == expected
            await pool.aclose()

    asyncio.run(run())


def test_a_kept_alive_connection_is_reused():
    async def run():
        async with Scripted(lambda h, b: OK) as server:
            pool = UpstreamPool(server.url)
            for _ in range(5):
                assert await read_all(pool) == (200, b"ok")
            await pool.aclose()
        assert server.connections == 1

    asyncio.run(run())


def test_a_connection_the_upstream_closed_is_replaced():
    async def run():
        async with Scripted(lambda h, b: OK, close_after=True) as server:
            pool = UpstreamPool(server.url)
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
            pool = UpstreamPool(server.url)
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
        pool = UpstreamPool(f"http://127.0.0.1:{closed_port()}")
        with pytest.raises(httpx.ConnectError):
            await read_all(pool)

    asyncio.run(run())


def test_no_answer_is_a_read_timeout():
    async def run():
        async with Scripted(lambda h, b: b"") as server:
            pool = UpstreamPool(server.url)
            with pytest.raises(httpx.ReadTimeout):
                await pool.send("GET", b"/", [], timeout=0.3)
            await pool.aclose()

    asyncio.run(run())


def test_garbage_is_a_protocol_error():
    async def run():
        async with Scripted(lambda h, b: b"NOT HTTP AT ALL\r\n\r\n") as server:
            pool = UpstreamPool(server.url)
            with pytest.raises(httpx.RemoteProtocolError):
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
        pool = UpstreamPool(url)
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
