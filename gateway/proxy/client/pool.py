"""A lean keep-alive HTTP/1.1 client for one upstream origin: idle connections, send, retry.

httpx's AsyncClient cost ~1.2 ms of CPU per proxied request (anyio streams, h11, a
pool that scans every connection, and a failed `import sniffio` per request); this
client does the one thing the proxy needs. It raises only its own errors (errors.py);
connection.py holds the protocol and the parser. bench/RESULTS.md has the numbers.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

from gateway.proxy.client.connection import Connection, Header
from gateway.proxy.client.errors import (
    ConnectFailed,
    ConnectTimeout,
    ProtocolError,
    ReadFailed,
    ReadTimeout,
    WriteFailed,
)

# idle keep-alive connections kept per origin; more are closed as they are released
_MAX_IDLE = 256
# RFC 9110 9.2.1 safe methods: the only ones sent again after a reused connection failed.
# PUT and DELETE are idempotent by the RFC, but a legacy app behind us may not honour that
# (the review saw a DELETE performed twice), so they are not retried either.
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# what a reused connection the upstream had closed fails with: the case a retry is for
_STALE = (ReadFailed, WriteFailed, ProtocolError)


class UpstreamResponse:
    """Status, raw headers and a body read as the client consumes it; aclose() releases it."""

    def __init__(self, pool: UpstreamPool, conn: Connection, timeout: float) -> None:
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
                raise ReadFailed("the upstream closed the connection")
            try:
                await conn.wait(self.timeout, ReadTimeout)
            finally:
                conn.waited()

    async def aclose(self) -> None:
        """Return the connection to the pool if the exchange finished cleanly, else close it."""
        if self._released:
            return
        self._released = True
        self.pool._release(self.conn)


class UpstreamPool:
    """Keep-alive connections to one upstream origin, shared by all routes that name it."""

    def __init__(self, url: str, *, max_header_bytes: int, max_headers: int) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = (netloc if default_port else f"{netloc}:{self.port}").encode("idna")
        # an https upstream's certificate and name are always checked (system CAs)
        self.ssl = ssl.create_default_context() if self.tls else None
        # bounds on a response head, from [server] max_response_header_bytes / _headers
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._idle: collections.deque[Connection] = collections.deque()
        self._closed = False

    async def _connect(self, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self.max_header_bytes, self.max_headers),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout("connecting to the upstream timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect: {exc.strerror or exc}") from None
        return conn

    def _pop_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _release(self, conn: Connection) -> None:
        reusable = (
            conn.complete
            and not conn.closed
            and conn.error is None
            and not conn.head_only
            and conn.keep_alive
            and not conn.body
        )
        conn.in_use = False
        if reusable and not self._closed and len(self._idle) < _MAX_IDLE:
            conn.reset()
            self._idle.append(conn)
        else:
            conn.close()

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
        write and each body read alone. Raises UpstreamTimeout subclasses on timeouts and
        other UpstreamError subclasses on failures (errors.py); what `body` raises passes.
        """
        # a trickling upstream must not hold a request forever under the per-read limit
        deadline = asyncio.get_running_loop().time() + timeout
        head = self._head(method, target, headers, body, content_length)
        conn = self._pop_idle()
        if conn is not None:
            try:
                return await self._exchange(
                    conn, method, head, body, content_length, timeout, deadline
                )
            except _STALE:
                # a kept-alive connection the upstream closed as we reused it: whether it
                # read the request first cannot be known, so only a safe method with no
                # body, and nothing received, is sent again (a POST must not run twice)
                if method not in _RETRYABLE or conn.received_any or body is not None:
                    raise
        conn = await self._connect(deadline)
        return await self._exchange(conn, method, head, body, content_length, timeout, deadline)

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
        conn: Connection,
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
                    raise ProtocolError("the upstream closed without answering")
                left = deadline - loop.time()
                if left <= 0:
                    raise ReadTimeout("the upstream did not answer in time")
                try:
                    await conn.wait(left, ReadTimeout)
                finally:
                    conn.waited()
            if conn.error is not None:
                # the head came with more than one response (or a broken one): 502, not a guess
                raise conn.error
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn, timeout)

    async def aclose(self) -> None:
        """Close every idle connection; connections in use close when released."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
