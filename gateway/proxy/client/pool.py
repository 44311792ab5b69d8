"""A lean keep-alive HTTP/1.1 client for one upstream: asyncio protocol + httptools parser.

httpx's AsyncClient cost ~1.2 ms of CPU per proxied request (anyio streams, h11, a
pool that scans every connection, and a failed `import sniffio` per request); this
client does the one thing the proxy needs. Failures are raised as httpx's exception
classes, so the rest of the gateway (502/504 mapping, metrics) keeps one vocabulary.
bench/RESULTS.md has the numbers behind the choice.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httptools
import httpx

Header = tuple[bytes, bytes]

# response bytes buffered per connection before we stop reading from the upstream socket
_READ_HIGH = 256 * 1024
_READ_LOW = 64 * 1024
# request bytes buffered in the transport before the client's body is read again
_WRITE_HIGH = 256 * 1024
# RFC 9110 9.2.1 safe methods: the only ones sent again after a reused connection failed.
# PUT and DELETE are idempotent by the RFC, but a legacy app behind us may not honour that
# (the review saw a DELETE performed twice), so they are not retried either.
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp at once; the reason is in `error`."""


class _Connection(asyncio.Protocol):
    """One upstream connection; parses one response at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_header_bytes: int, max_headers: int
    ) -> None:
        self.loop = loop
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: BaseException | None = None
        self.head_only = False  # the request was HEAD: no body follows the headers
        self.in_use = False  # a request was sent on it and its response is not released yet
        self._reset()
        self._write_paused = False
        self._drain: asyncio.Future | None = None

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[Header] = []
        self.header_bytes = 0  # names and values of this head, as the request side counts
        self.head_received = 0  # bytes read while no final head had ended (1xx heads too)
        self.idle_bytes = 0  # bytes read since the last body byte (chunk framing, trailers)
        self.headers_done = False
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.length_known = False  # Content-Length or chunked framing: EOF is not an end
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.waiter: asyncio.Future | None = None
        self.reading_paused = False
        self._informational = False

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.complete or not self.in_use:
            # bytes nobody asked for (after a response, or on an idle connection, like a 408
            # before a close): never let them pass as the answer to the next request
            self.error = httpx.RemoteProtocolError("unexpected data from the upstream")
            self._close()
            return
        in_body, buffered = self.headers_done, self.buffered
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (an upgrade pause comes only after a 101, which on_headers_complete refuses)
            if self.error is None:
                self.error = httpx.RemoteProtocolError(f"invalid response: {exc}")
            self._close()
        else:
            if not self.headers_done:
                # httptools joins a header's pieces until it ends: bound it before on_header
                self.head_received += len(data)
                if self.head_received > self.max_header_bytes:
                    self._fail("the response head is too large")
            elif in_body and not self.complete:
                # bytes that bring no body (a trailer growing in httptools): bounded the same
                self.idle_bytes = self.idle_bytes + len(data) if self.buffered == buffered else 0
                if self.idle_bytes > self.max_header_bytes:
                    self._fail("the response trailers are too large")
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self.length_known and not exc:
            self.complete = True  # a body delimited by the connection's end
        elif not self.complete and self.error is None:
            self.error = httpx.ReadError("the upstream closed the connection")
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(httpx.WriteError("the upstream closed the connection"))
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            # a second response in the same read (an upstream answering twice, or a body longer
            # than its Content-Length): never merged into this one, never left for the next user
            # (bare CR/LF after a message llhttp skips as blank lines: they start nothing)
            self._refuse("bytes after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            # chunked trailers arrive after the head: never headers, as on the request side
            return
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.max_header_bytes:
            self._refuse("the response head is too large")
        if len(self.headers) >= self.max_headers:
            self._refuse("the response has too many headers")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101:
            # the pool never asks for an upgrade (websocket.py has its own client): a 101 here
            # would hand the client a raw socket and pool a connection in another protocol
            self._refuse("101 Switching Protocols to a request that asked for no upgrade")
        if 100 <= status < 200:
            # an interim answer (103 Early Hints): the real one follows; a 1xx has no body
            # (RFC 9110 15.2), so llhttp parses what follows as the next head, never as body
            self.headers = []
            self.header_bytes = 0
            self._informational = True
            return
        self.status = status
        self.headers_done = True
        # llhttp forgets this once the message completes: read it while the headers are fresh
        self.keep_alive = self.parser.should_keep_alive()
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                self.length_known = True
        if self.head_only or status in (204, 304):
            self.length_known = True
        if self.head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True

    # used by the pool and the response

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, reason: str) -> None:
        """From a parser callback: record the protocol error and stop llhttp here."""
        self.error = httpx.RemoteProtocolError(reason)
        raise _Refused(reason)

    def _fail(self, reason: str) -> None:
        self.error = httpx.RemoteProtocolError(reason)
        self._close()

    async def wait(self, timeout: float, kind: type[httpx.TimeoutException]) -> None:
        """Wait for more from the upstream (bytes, end or error), at most `timeout` seconds."""
        self.waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, self._timeout, self.waiter, kind)
        try:
            await self.waiter
        finally:
            handle.cancel()
            self.waiter = None

    @staticmethod
    def _timeout(waiter: asyncio.Future, kind: type[httpx.TimeoutException]) -> None:
        if not waiter.done():
            waiter.set_exception(kind("the upstream did not answer in time"))

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's write buffer is below the high-water mark."""
        if self.closed:
            raise self.error or httpx.WriteError("the upstream closed the connection")
        if not self._write_paused:
            return
        self._drain = self.loop.create_future()
        handle = self.loop.call_later(timeout, self._timeout, self._drain, httpx.WriteTimeout)
        try:
            await self._drain
        finally:
            handle.cancel()
            self._drain = None

    def take_body(self) -> bytes:
        """All body bytes parsed so far (resuming reads if they had been paused)."""
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


class UpstreamResponse:
    """Status, raw headers and a body read as the client consumes it; aclose() releases it."""

    def __init__(self, pool: UpstreamPool, conn: _Connection, timeout: float) -> None:
        self.pool = pool
        self.conn = conn
        self.timeout = timeout
        self.status_code = conn.status
        self.headers = conn.headers
        self._released = False

    @property
    def at_end(self) -> bool:
        """True once the whole body has been received and handed out."""
        return self.conn.complete and not self.conn.body

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives (bounded buffering: reads pause while the client is slow)."""
        conn = self.conn
        while True:
            if conn.body:
                # what has arrived, joined (at most about _READ_HIGH plus one socket read)
                yield conn.take_body()
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            if conn.closed:
                raise httpx.ReadError("the upstream closed the connection")
            await conn.wait(self.timeout, httpx.ReadTimeout)

    async def aclose(self) -> None:
        """Return the connection to the pool if the exchange finished cleanly, else close it."""
        if self._released:
            return
        self._released = True
        self.pool._release(self.conn)


class UpstreamPool:
    """Keep-alive connections to one upstream origin, shared by all routes that name it."""

    def __init__(
        self,
        url: str,
        *,
        max_header_bytes: int,
        max_headers: int,
        max_connections: int = 512,
        max_idle: int = 256,
        verify: bool = True,
    ) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = (netloc if default_port else f"{netloc}:{self.port}").encode("idna")
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            self.ssl = ssl.create_default_context()
            if not verify:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.max_idle = max_idle
        # bounds on a response head, from [server] max_response_header_bytes / _headers
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._closed = False

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.max_header_bytes, self.max_headers),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("connecting to the upstream timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc.strerror or exc}") from None
        return conn

    def _pop_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        self._slots.release()
        reusable = (
            conn.complete
            and not conn.closed
            and conn.error is None
            and not conn.head_only
            and conn.keep_alive
            and not conn.body
        )
        conn.in_use = False
        if reusable and not self._closed and len(self._idle) < self.max_idle:
            conn._reset()
            self._idle.append(conn)
        else:
            conn._close()

    async def send(
        self,
        method: str,
        target: bytes,
        headers: Iterable[Header],
        body: AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
        timeout: float = 30.0,
    ) -> UpstreamResponse:
        """Send one request and return once the response headers are in (body streamed later).

        `body` with `content_length` None is sent chunked. `timeout` bounds connect plus the
        wait for the response head in total (time spent sending the body excluded), and each
        write and each body read alone. Raises httpx.TimeoutException subclasses on timeouts
        and other httpx.TransportError subclasses on failures.
        """
        if self._slots.locked():
            try:
                async with asyncio.timeout(timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no upstream connection free in time") from None
        else:
            await self._slots.acquire()
        try:
            # a trickling upstream must not hold a request forever under the per-read limit
            deadline = asyncio.get_running_loop().time() + timeout
            head = self._head(method, target, headers, body, content_length)
            conn = self._pop_idle()
            if conn is not None:
                try:
                    return await self._exchange(
                        conn, method, head, body, content_length, timeout, deadline
                    )
                except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                    # a kept-alive connection the upstream closed as we reused it: whether it
                    # read the request first cannot be known, so only a safe method with no
                    # body, and nothing received, is sent again (a POST must not run twice)
                    if method not in _RETRYABLE or conn.received_any or body is not None:
                        raise
            conn = await self._connect(deadline)
            return await self._exchange(conn, method, head, body, content_length, timeout, deadline)
        except BaseException:
            self._slots.release()
            raise

    def _head(
        self,
        method: str,
        target: bytes,
        headers: Iterable[Header],
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
    ) -> bytes:
        lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        has_host = False
        for name, value in headers:
            if name == b"host":
                has_host = True
            lines += [name, b": ", value, b"\r\n"]
        if not has_host:
            lines += [b"host: ", self.host_header, b"\r\n"]
        if body is not None and content_length is None:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        content_length: int | None,
        timeout: float,
        deadline: float,
    ) -> UpstreamResponse:
        loop = conn.loop
        try:
            conn.in_use = True
            conn.head_only = method == "HEAD"
            transport = conn.transport
            assert transport is not None
            transport.write(head)
            if body is not None:
                # the client's upload pace is not the upstream's delay: the deadline waits for it
                started = loop.time()
                chunked = content_length is None
                async for piece in body:
                    if conn.closed or conn.error is not None:
                        break
                    if chunked:
                        transport.write(b"%x\r\n" % len(piece))
                        transport.write(piece)
                        transport.write(b"\r\n")
                    else:
                        transport.write(piece)
                    await conn.drain(timeout)
                if chunked and not conn.closed:
                    transport.write(b"0\r\n\r\n")
                deadline += loop.time() - started
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise httpx.RemoteProtocolError("the upstream closed without answering")
                left = deadline - loop.time()
                if left <= 0:
                    raise httpx.ReadTimeout("the upstream did not answer in time")
                await conn.wait(left, httpx.ReadTimeout)
            if conn.error is not None:
                # the head came with more than one response (or a broken one): 502, not a guess
                raise conn.error
        except BaseException:
            conn._close()
            raise
        return UpstreamResponse(self, conn, timeout)

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop()._close()
