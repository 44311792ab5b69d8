"""One JSON access-log line and the request metrics per request, taken at the end of the response.

The line holds what an operator needs to follow a request and nothing a thief could use:
the path is logged without its query string (queries carry tokens and reset codes), and no
header, cookie or body is ever read here.
"""

from __future__ import annotations

import json
import logging
import sys
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
    """
    if (
        log.handlers == [_OWN_HANDLER]
        and not log.filters
        and not log.propagate
        and not (log.disabled or _OWN_HANDLER.filters)
    ):
        if log.isEnabledFor(logging.INFO):
            stream = sys.stdout
            stream.write(line + "\n")
            stream.flush()
        return
    log.info(line)


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

    def record(self) -> dict:
        ctx: RequestContext | None = self.scope.get(SCOPE_KEY)
        scope = self.scope
        client = scope.get("client")
        user = None
        if ctx is not None:
            user = ctx.identity.sub if ctx.identity is not None else ctx.user_for_log
        return {
            "time": datetime.fromtimestamp(self.wall, UTC).isoformat(timespec="milliseconds"),
            "request_id": ctx.request_id if ctx else None,
            "client": ctx.view.ip if ctx else (client[0] if client else None),
            "method": scope.get("method", "GET"),
            "path": ctx.path if ctx else scope.get("path", ""),
            "route": route_label(ctx, None),
            "status": self.status if self.status is not None else CLIENT_CLOSED,
            "upstream_status": ctx.upstream_status if ctx else None,
            "user": user,
            # why a presented cookie or bearer token was refused: "expired", "signature", ...
            "auth_error": ctx.auth_error if ctx else None,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 1),
            "bytes": self.bytes,
        }


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
        record = exchange.record()
        metrics.observe_request(
            route_label(exchange.scope.get(SCOPE_KEY)),
            record["status"],
            record["duration_ms"] / 1000,
        )
        _write(json.dumps(record))
