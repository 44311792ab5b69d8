"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio Protocol fed to httptools.

It parses one response at a time and refuses anything that is not exactly that response
(bytes after it, a 101, a head over the limits). Socket and parser failures become the
client's own errors (errors.py) here, where they arise.
"""

from __future__ import annotations

import asyncio
import collections

import httptools

from gateway.proxy.client.errors import (
    ProtocolError,
    ReadFailed,
    UpstreamError,
    UpstreamTimeout,
    WriteFailed,
    WriteTimeout,
)

Header = tuple[bytes, bytes]

# response bytes buffered per connection before we stop reading from the upstream socket
_READ_HIGH = 256 * 1024
# request bytes buffered in the transport before the client's body is read again
_WRITE_HIGH = 256 * 1024


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp at once; the reason is in `error`."""


class Connection(asyncio.Protocol):
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
        self.error: UpstreamError | None = None
        self.head_only = False  # the request was HEAD: no body follows the headers
        self.in_use = False  # a request was sent on it and its response is not released yet
        self.reset()
        self._write_paused = False
        self._drain: asyncio.Future | None = None
        self._wait_timer: asyncio.TimerHandle | None = None

    def reset(self) -> None:
        """Forget the last response, before the connection carries the next request."""
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
            self.error = ProtocolError("unexpected data from the upstream")
            self.close()
            return
        in_body, buffered = self.headers_done, self.buffered
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (an upgrade pause comes only after a 101, which on_headers_complete refuses)
            if self.error is None:
                self.error = ProtocolError(f"invalid response: {exc}")
            self.close()
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
            self.error = ReadFailed("the upstream closed the connection")
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(WriteFailed("the upstream closed the connection"))
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

    # used by the pool and its responses

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Close the socket: this connection carries no further request."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, reason: str) -> None:
        """From a parser callback: record the protocol error and stop llhttp here."""
        self.error = ProtocolError(reason)
        raise _Refused(reason)

    def _fail(self, reason: str) -> None:
        self.error = ProtocolError(reason)
        self.close()

    def wait(self, timeout: float, kind: type[UpstreamTimeout]) -> asyncio.Future:
        """A future done at the next thing from the upstream (bytes, end or error), or failing
        with `kind` after `timeout` seconds; the caller awaits it, then calls `waited()`.

        A future, not a coroutine: a request's task resumes through one frame fewer.
        """
        waiter = self.waiter = self.loop.create_future()
        self._wait_timer = self.loop.call_later(timeout, self._timeout, waiter, kind)
        return waiter

    def waited(self) -> None:
        """The wait is over (done, failed or cancelled): stop its timer."""
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self.waiter = None

    @staticmethod
    def _timeout(waiter: asyncio.Future, kind: type[UpstreamTimeout]) -> None:
        if not waiter.done():
            waiter.set_exception(kind("the upstream did not answer in time"))

    async def drain(self, timeout: float) -> None:
        """Wait until the transport's write buffer is below the high-water mark."""
        if self.closed:
            raise self.error or WriteFailed("the upstream closed the connection")
        if not self._write_paused:
            return
        self._drain = self.loop.create_future()
        handle = self.loop.call_later(timeout, self._timeout, self._drain, WriteTimeout)
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
