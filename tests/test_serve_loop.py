"""The serving loop accepts every connection waiting in the backlog at once.

The tail under load (bench/RESULTS.md, run E), counted here in loop iterations, never timed:
uvloop's own server accepts one connection per loop iteration.
"""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest
import uvicorn

WAITING = 64
ITERATIONS = 8  # loop iterations given to the server; uvloop alone accepts one in each


class Counted(asyncio.Protocol):
    made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counted.made.append(transport)


def accepted_within(loop: asyncio.AbstractEventLoop, iterations: int) -> int:
    """Connections made within `iterations` loop iterations, WAITING of them in the backlog."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(WAITING * 2)
    port = listener.getsockname()[1]
    # the kernel completes each handshake: all of them wait to be accepted
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(WAITING)]
    Counted.made = []

    async def serve() -> int:
        server = await asyncio.get_running_loop().create_server(
            Counted, sock=listener, backlog=WAITING * 2
        )
        for _ in range(iterations):
            await asyncio.sleep(0)
        made = len(Counted.made)
        server.close()
        await server.wait_closed()
        for transport in Counted.made:
            transport.close()
        await asyncio.sleep(0)
        return made

    try:
        return loop.run_until_complete(serve())
    finally:
        loop.close()
        listener.close()
        for client in clients:
            client.close()


def test_connections_waiting_in_the_backlog_are_accepted_together():
    pytest.importorskip("uvloop")
    from gateway.serve.accept import new_event_loop

    assert accepted_within(new_event_loop(), ITERATIONS) == WAITING


def test_one_worker_serves_on_the_accepting_loop_from_a_socket_bound_first(monkeypatch):
    pytest.importorskip("uvloop")
    from gateway.serve import server

    seen: dict = {}

    def run(self, sockets=None) -> None:
        seen["loop"] = self.config.loop
        seen["sockets"] = sockets
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    limits = {"max_request_line": 8192, "max_header_bytes": 16384, "max_headers": 100}
    settings = SimpleNamespace(host="127.0.0.1", port=0, header_timeout=10, **limits)
    server._run_uvicorn(SimpleNamespace(server=settings), 1)
    assert seen["loop"] == "gateway.serve.accept:new_event_loop"
    # a socket passed in is what serve/accept.py's create_server takes over
    [sock] = seen["sockets"]
    sock.close()


def test_a_closed_server_accepts_no_more():
    pytest.importorskip("uvloop")
    from gateway.serve.accept import new_event_loop

    loop = new_event_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def serve_then_close() -> bool:
        server = await asyncio.get_running_loop().create_server(Counted, sock=listener)
        assert server.is_serving()
        server.close()
        await server.wait_closed()
        return server.is_serving()

    try:
        assert loop.run_until_complete(serve_then_close()) is False
    finally:
        loop.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_several_workers_each_listen_on_a_socket_of_their_own():
    """Greedy accept for every worker: each of several on its own SO_REUSEPORT socket."""
    pytest.importorskip("uvloop")
    from gateway.serve.server import event_loop

    assert event_loop(1) == "gateway.serve.accept:new_event_loop"
    assert event_loop(2) == event_loop(8) == "gateway.serve.accept:new_worker_event_loop"


def test_a_worker_swaps_the_supervisors_socket_for_its_own_on_the_same_address():
    pytest.importorskip("uvloop")
    from gateway.serve.accept import new_worker_event_loop, reuseport_socket

    # the supervisor's: bound with SO_REUSEPORT, never listening
    supervisors = reuseport_socket(("127.0.0.1", 0))
    port = supervisors.getsockname()[1]
    inherited = supervisors.dup()  # what a worker process receives
    loop = new_worker_event_loop()

    async def serve() -> tuple[int, bool]:
        server = await asyncio.get_running_loop().create_server(Counted, sock=inherited)
        [own] = server.sockets
        own_socket = own is not inherited and own.getsockname()[1] == port
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        for _ in range(ITERATIONS):
            await asyncio.sleep(0)
        made = len(Counted.made)
        client.close()
        for transport in Counted.made:
            transport.close()
        server.close()
        await server.wait_closed()
        return made, own_socket

    Counted.made = []
    try:
        made, own_socket = loop.run_until_complete(serve())
    finally:
        loop.close()
    assert (made, own_socket) == (1, True)
    assert inherited.fileno() == -1  # the worker's copy is closed; the supervisor's stays
    assert supervisors.fileno() != -1
    supervisors.close()
