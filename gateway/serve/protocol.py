"""HTTP/1.1 parsing with limits: uvicorn's httptools protocol plus the bounds it does not enforce.

uvicorn's httptools mode reads a request head of any size, waits for it forever and appends
chunked trailers to the request's headers. Here the head is bounded (request line, header
bytes, header count), must arrive within a deadline, and trailers are dropped.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.serve.coalesce import CoalescingTransport


@dataclass(frozen=True)
class ProtocolLimits:
    """Bounds on one request head, from `[server]` (its defaults are the ones the README states)."""

    max_request_line: int
    max_header_bytes: int
    max_headers: int
    header_timeout: float


class HeadRefused(Exception):
    """The request head broke a limit; `status` is what the client is told."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 414, 431 or 408 and closes when a request head is abusive."""

    def __init__(self, *args: Any, limits: ProtocolLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._reading_head = True
        self._in_head = False  # a head has begun and not ended (its deadline runs)
        self._head_bytes = 0  # bytes received while the head is incomplete
        self._url_bytes = 0
        self._header_bytes = 0
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: a connection that never completes a head is closed."""
        super().connection_made(transport)
        # a response's head and body leave in one write (gateway/coalesce.py)
        self.transport = CoalescingTransport(transport, self.loop)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head timer with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, refusing a head that breaks a limit before it is buffered whole."""
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HeadRefused as exc:
            self._refuse(exc)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadRefused):
                self._refuse(exc.__context__)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        # a single header line may be fed in many small pieces: bound what httptools buffers
        limit = self.limits.max_request_line + self.limits.max_header_bytes
        if self._reading_head and self._head_bytes > limit:
            self._refuse(
                HeadRefused(431, "headers_too_large", "The request headers are too large.")
            )
        elif self._in_head:
            # a head begun in these bytes and not ended in them: its deadline starts now (a head
            # that arrives whole, nearly every one, never needs a timer)
            self._arm_head_timer()

    # parser callbacks

    def on_message_begin(self) -> None:
        """A new request head starts: reset the counters, keep any running deadline."""
        super().on_message_begin()
        self._reading_head = True
        self._in_head = True
        self._url_bytes = self._header_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        """Count the request target; 414 past the limit."""
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_request_line:
            raise HeadRefused(414, "uri_too_long", "The request target is too long.")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header fields; drop chunked trailers, which uvicorn would add to the headers."""
        if not self._reading_head:
            # trailers arrive after the app has the headers: they must not become headers
            return
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            raise HeadRefused(431, "too_many_headers", "The request has too many headers.")
        if self._header_bytes > self.limits.max_header_bytes:
            raise HeadRefused(431, "headers_too_large", "The request headers are too large.")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is whole: stop its clock and hand the request on."""
        self._reading_head = False
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The body is read; the next bytes on this connection begin another head."""
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    # the head deadline

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.limits.header_timeout > 0:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # a response is still being written: judge the next head once it is done
            self._arm_head_timer()
            return
        if self._reading_head and self._head_bytes == 0 and self.cycle is not None:
            # idle between keep-alive requests: uvicorn's keep-alive timeout handles it
            return
        self._refuse(HeadRefused(408, "request_timeout", "The request headers took too long."))

    def _refuse(self, exc: HeadRefused) -> None:
        self._cancel_head_timer()
        self.logger.warning("request head refused: %s", exc.detail)
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            body = json.dumps({"error": exc.code, "detail": exc.detail}).encode("ascii")
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[exc.status],
                        b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"cache-control: no-store\r\n",
                        b"x-content-type-options: nosniff\r\n",
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
        self.transport.close()
