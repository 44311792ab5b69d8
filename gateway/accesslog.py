"""One JSON access-log line and the request metrics per request, taken at the end of the response.

The line holds what an operator needs to follow a request and nothing a thief could use:
the path is logged without its query string (queries carry tokens and reset codes), and no
header, cookie or body is ever read here.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

from gateway import metrics
from gateway.core.context import SCOPE_KEY, RequestContext

log = logging.getLogger("gateway.access")

FIELDS = (
    "time",
    "request_id",
    "client",
    "method",
    "path",
    "route",
    "status",
    "upstream_status",
    "user",
    "auth_error",
    "duration_ms",
    "bytes",
)
# a request that ended with no response started: the client went away (nginx's 499)
CLIENT_CLOSED = 499


class _StdoutHandler(logging.StreamHandler):
    """Writes each line to whatever sys.stdout is when it is written."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


_OWN_HANDLER = _StdoutHandler()
_OWN_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _configure() -> None:
    # spawned workers never see the CLI's logging setup: the access log stands on its own
    if not log.handlers:
        log.addHandler(_OWN_HANDLER)
        log.setLevel(logging.INFO)
        log.propagate = False


def _write(line: str) -> None:
    """One access-log line: straight to stdout while the logger is as _configure left it.

    A record, a handler lock and a formatter per request are what logging adds for a line
    that is already text; a host app that adds handlers or filters gets the logging path.
    Inside an event loop the lines of one loop step are held and written together when the
    step ends (one write for all the responses that finished in it).
    """
    if (
        log.handlers == [_OWN_HANDLER]
        and not log.filters
        and not log.propagate
        and not (log.disabled or _OWN_HANDLER.filters)
    ):
        if log.isEnabledFor(logging.INFO):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                _emit([line])
                return
            # the lines of one event-loop step leave in one write, at the end of that step
            held = _held
            if not held.lines or held.loop is not loop:
                # (a loop that stopped before its flush ran leaves lines for the next one)
                held.loop = loop
                loop.call_soon(_flush, held.lines)
            held.lines.append(line)
        return
    log.info(line)


class _Held(threading.local):
    """The lines written in this thread's current loop step (each loop runs in one thread)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # where their flush is scheduled


_held = _Held()


def _emit(lines: list[str]) -> None:
    stream = sys.stdout
    stream.write("\n".join(lines) + "\n")
    stream.flush()


def _flush(held: list[str]) -> None:
    """Write the lines held since the start of this loop step."""
    if held:
        lines = held[:]
        held.clear()
        _emit(lines)


# a line whose loop step never ended (the process exits from inside it) is written at exit
atexit.register(lambda: _flush(_held.lines))


class _Exchange:
    """What is known about one request/response while it is being answered."""

    __slots__ = ("bytes", "complete", "done", "scope", "started", "status", "wall")

    def __init__(self, scope: dict) -> None:
        self.scope = scope
        self.started = time.perf_counter()
        self.wall = time.time()
        self.status: int | None = None
        self.bytes = 0
        self.complete = False
        self.done = False

    def see(self, message: dict) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            self.status = message["status"]
        elif kind in ("http.response.body", "websocket.http.response.body"):
            self.bytes += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        elif kind == "websocket.accept":
            self.status = 101
        elif kind == "websocket.send":
            data = message.get("bytes")
            self.bytes += len(data) if data is not None else len(message.get("text") or "")
        elif kind == "websocket.close" and self.status is None:
            # a close before accept is answered 403 by the server
            self.status = 403

    def line(self, duration_ms: float) -> str:
        """The JSON line: json.dumps of the FIELDS in order, written out without building a
        dict (tests/test_accesslog.py holds it to json.dumps' output)."""
        ctx: RequestContext | None = self.scope.get(SCOPE_KEY)
        scope = self.scope
        if ctx is not None:
            user = ctx.identity.sub if ctx.identity is not None else ctx.user_for_log
            request_id, client, path = ctx.request_id, ctx.view.ip, ctx.path
            upstream_status, auth_error = ctx.upstream_status, ctx.auth_error
        else:
            peer = scope.get("client")
            user = request_id = upstream_status = auth_error = None
            client, path = (peer[0] if peer else None), scope.get("path", "")
        status = self.status if self.status is not None else CLIENT_CLOSED
        return (
            f'{{"time": "{iso_millis(self.wall)}", "request_id": {_text(request_id)}, '
            f'"client": {_text(client)}, "method": {_text(scope.get("method", "GET"))}, '
            f'"path": {_text(path)}, "route": {_text(route_label(ctx, None))}, '
            f'"status": {int(status)}, "upstream_status": {_number(upstream_status)}, '
            f'"user": {_text(user)}, "auth_error": {_text(auth_error)}, '
            f'"duration_ms": {float(duration_ms)!r}, "bytes": {int(self.bytes)}}}'
        )


def _text(value: str | None) -> str:
    # the C encoder json.dumps uses (ensure_ascii: a control or non-ASCII character escaped)
    return "null" if value is None else _encode_string(value)


def _number(value: int | None) -> str:
    return "null" if value is None else str(int(value))


_encode_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_second_text: tuple[int, str] = (-1, "")


def iso_millis(wall: float) -> str:
    """`datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")`, with the part up
    to the second formatted once per second."""
    global _second_text
    second = int(wall)
    # as datetime rounds a timestamp: its fraction to microseconds, half to even
    micro = round((wall - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    cached = _second_text
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _second_text = (second, text)
    return f"{cached[1]}.{micro // 1000:03d}+00:00"


def route_label(ctx: RequestContext | None, default: str | None = metrics.NO_ROUTE) -> str | None:
    """The route name, `_auth` for the gateway's endpoints, `default` when nothing matched."""
    if ctx is None:
        return default
    if ctx.endpoint:
        return metrics.ENDPOINTS_ROUTE
    return ctx.route.name if ctx.route is not None else default


class AccessLog:
    """Pure ASGI, outermost: log and count each request once its response body has been sent."""

    def __init__(self, app) -> None:
        self.app = app
        _configure()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope)

        async def observed_send(message: dict) -> None:
            exchange.see(message)
            await send(message)
            if exchange.complete and not exchange.done:
                self.finish(exchange)

        try:
            await self.app(scope, receive, observed_send)
        except BaseException:
            if exchange.status is None:
                exchange.status = 500  # what the server answers for an app that raised
            raise
        finally:
            if not exchange.done:
                self.finish(exchange)

    @staticmethod
    def finish(exchange: _Exchange) -> None:
        """Write the line and count the request (once)."""
        exchange.done = True
        duration_ms = round((time.perf_counter() - exchange.started) * 1000, 1)
        status = exchange.status if exchange.status is not None else CLIENT_CLOSED
        metrics.observe_request(
            route_label(exchange.scope.get(SCOPE_KEY)), status, duration_ms / 1000
        )
        _write(exchange.line(duration_ms))
