"""The access-log line is written without json.dumps: it must be exactly what json.dumps writes.

tests/test_ops.py reads the lines of a running gateway; these hold the hand-built line and the
cached timestamp to the library's own output for the values that need escaping or rounding.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from datetime import UTC, datetime

import pytest

from gateway import accesslog
from gateway.accesslog import FIELDS, _Exchange, iso_millis
from gateway.config import Route
from gateway.core.context import SCOPE_KEY, Identity, RequestContext
from gateway.core.ingress import ClientView


def _reference(exchange: _Exchange, duration_ms: float) -> str:
    """The line as json.dumps of a dict of the FIELDS, in order."""
    ctx = exchange.scope.get(SCOPE_KEY)
    client = exchange.scope.get("client")
    user = None
    if ctx is not None:
        user = ctx.identity.sub if ctx.identity is not None else ctx.user_for_log
    route = None
    if ctx is not None:
        route = "_auth" if ctx.endpoint else (ctx.route.name if ctx.route else None)
    record = {
        "time": datetime.fromtimestamp(exchange.wall, UTC).isoformat(timespec="milliseconds"),
        "request_id": ctx.request_id if ctx else None,
        "client": ctx.view.ip if ctx else (client[0] if client else None),
        "method": exchange.scope.get("method", "GET"),
        "path": ctx.path if ctx else exchange.scope.get("path", ""),
        "route": route,
        "status": exchange.status if exchange.status is not None else 499,
        "upstream_status": ctx.upstream_status if ctx else None,
        "user": user,
        "auth_error": ctx.auth_error if ctx else None,
        "duration_ms": duration_ms,
        "bytes": exchange.bytes,
    }
    assert tuple(record) == FIELDS
    return json.dumps(record)


def _ctx(path: str, user: str | None, **kw) -> RequestContext:
    view = ClientView("2001:db8::1", "https", "app.example", False, "2001:db8::1")
    identity = Identity(user, ("staff",), "sid", 0.0, "cookie") if user is not None else None
    route = Route(name='svc "0"', path="/", upstream="http://127.0.0.1:1")
    return RequestContext(
        request_id="abc", path=path, view=view, route=route, identity=identity, **kw
    )


@pytest.mark.parametrize(
    "scope_extra,status,nbytes,duration",
    [
        ({SCOPE_KEY: _ctx("/plain", "alice", upstream_status=200)}, 200, 12, 1.2),
        ({SCOPE_KEY: _ctx('/q"uote\\back\x7f/é/😀', "zoë\n", auth_error="expired")}, 302, 0, 0.0),
        ({SCOPE_KEY: _ctx("/", None, user_for_log="bob", endpoint=True)}, None, 0, 12345.6),
        ({"path": "/no ctx\t", "client": ("10.0.0.1", 1)}, 400, 70, 0.1),
        ({"path": "/", "client": None, "method": "PÖST"}, None, 0, 3.0),
    ],
)
def test_the_line_is_what_json_dumps_writes(scope_extra, status, nbytes, duration):
    scope = {"type": "http", "method": "GET", **scope_extra}
    exchange = _Exchange(scope)
    exchange.status, exchange.bytes = status, nbytes
    line = exchange.line(duration)
    assert line == _reference(exchange, duration)
    assert list(json.loads(line)) == list(FIELDS)


def test_the_cached_second_gives_datetime_s_own_text():
    rng = random.Random(17)
    walls = [1_700_000_000 + rng.random() * 1e8 for _ in range(20_000)]
    # fractions at the rounding edges: .9995 ms, a microsecond short of the next second
    walls += [1_765_000_000.9999995, 1_765_000_000.0004995, 1_765_000_001.0, 0.0005, 86399.9999996]
    walls += sorted(walls[:2000])  # the cache in use: many walls within one second
    for wall in walls:
        expected = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
        assert iso_millis(wall) == expected, wall


def test_the_lines_of_one_loop_step_leave_in_one_write_and_none_is_held_back(monkeypatch):
    writes: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            writes.append(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Stream())
    accesslog._configure()
    assert accesslog.log.handlers == [accesslog._OWN_HANDLER]

    async def step() -> None:
        accesslog._write('{"n": 1}')
        accesslog._write('{"n": 2}')
        assert writes == []  # held until this step ends
        await asyncio.sleep(0)
        assert writes == ['{"n": 1}\n{"n": 2}\n']
        accesslog._write('{"n": 3}')
        # the loop ends inside the step that wrote it: still written

    asyncio.run(step())
    assert writes[-1] == '{"n": 3}\n'
    accesslog._write('{"n": 4}')  # outside any loop: at once
    assert writes[-1] == '{"n": 4}\n'

    # a loop closed before its flush ran: the next loop in this thread writes what it held
    loop = asyncio.new_event_loop()

    async def stopped() -> None:
        accesslog._write('{"n": 5}')
        asyncio.get_running_loop().stop()

    task = loop.create_task(stopped())
    loop.run_forever()
    assert task.done()
    loop.close()
    assert writes[-1] == '{"n": 4}\n'

    async def next_loop() -> None:
        accesslog._write('{"n": 6}')
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    assert writes[-1] == '{"n": 5}\n{"n": 6}\n'
