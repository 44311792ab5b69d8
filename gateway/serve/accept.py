"""uvloop, but connections waiting to be accepted are taken all at once, as asyncio does.

libuv accepts one connection per event-loop iteration (since 1.45, libuv/libuv#3696; uvloop
0.23 ships 1.52). Under load an iteration lasts as long as the work of every connection that
was ready in it, so a burst of new connections waits in the listen backlog for one whole
iteration each: at 256 connections to one busy worker the last were accepted 1.5-2 s after
they connected, and their first requests were the whole p99 (bench/RESULTS.md, run E).
asyncio's own loop accepts up to `backlog` connections per readiness of the listening socket.

Here the listening socket is polled with `add_reader`, accepted in Python until the backlog
is empty (at most `backlog` per readiness, like asyncio), and each connection is handed to
uvloop with `connect_accepted_socket`: its transport, and everything after the accept, are
uvloop's own. Only sockets passed in (`create_server(sock=...)`, which is how serve.server
starts uvicorn) and no TLS take this path; anything else is uvloop's create_server.

Several workers each listen on a socket of their own (`ReusePortLoop`): the inherited socket
is swapped for a fresh one bound to the same address with SO_REUSEPORT, so the kernel spreads
new connections evenly among the workers' sockets by their addresses and ports, and each worker
accepts greedily from its own. Sharing one socket, a busy worker accepted more slowly than an
idle one, and 64 connections split anywhere from 46/18 to 25/39 (bench/RESULTS.md, run E).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

log = logging.getLogger("gateway.serve")

# out of file descriptors or memory: stop accepting for this long, as asyncio does
RETRY_DELAY = 1.0
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptingServer(asyncio.AbstractServer):
    """Listening sockets accepted from in batches; each connection served by uvloop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: Iterable[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._sockets = list(sockets)
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._batch = max(1, backlog)
        self._serving = False
        self._closed = False
        self._handshakes: set[asyncio.Task] = set()

    # accepting

    def _listen(self, sock: socket.socket) -> None:
        self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        """The listening socket is readable: take every waiting connection (up to a batch)."""
        for _ in range(self._batch):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.error("accept failed (%s): not accepting for %gs", exc, RETRY_DELAY)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(RETRY_DELAY, self._resume, sock)
                return
            self._serve(conn)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving and sock.fileno() != -1:
            self._listen(sock)

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            task = self._loop.create_task(
                self._loop.connect_accepted_socket(self._protocol_factory, conn)
            )
        except Exception:
            conn.close()
            raise
        self._handshakes.add(task)
        task.add_done_callback(lambda task: self._connected(task, conn))

    def _connected(self, task: asyncio.Task, conn: socket.socket) -> None:
        self._handshakes.discard(task)
        if task.cancelled():
            conn.close()
            return
        exc = task.exception()
        if exc is not None:
            conn.close()
            log.error("cannot serve an accepted connection: %r", exc)

    # asyncio.AbstractServer

    def start(self) -> None:
        """Listen on every socket and accept from it as the loop runs."""
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(self._backlog)
            self._listen(sock)
        self._serving = True

    async def start_serving(self) -> None:
        if not self._serving and not self._closed:
            self.start()

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.get_running_loop().create_future()

    def close(self) -> None:
        """Stop accepting and close the listening sockets; accepted connections stay open."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for sock in self._sockets:
            if sock.fileno() != -1:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def wait_closed(self) -> None:
        return None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)


class Loop(uvloop.Loop):
    """uvloop whose servers on given sockets accept every waiting connection at once."""

    async def create_server(  # type: ignore[override]
        self, protocol_factory, host=None, port=None, *, sock=None, backlog=100, **kwargs: Any
    ):
        extra = {key: value for key, value in kwargs.items() if value is not None}
        if sock is None or host is not None or port is not None or extra:
            # a host to bind, TLS, or options: uvloop's own server
            return await super().create_server(
                protocol_factory, host, port, sock=sock, backlog=backlog, **kwargs
            )
        server = AcceptingServer(self, [sock], protocol_factory, backlog)
        server.start()
        return server


def reuseport_socket(address: tuple, family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket bound to `address` with SO_REUSEADDR and SO_REUSEPORT, not listening."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class ReusePortLoop(Loop):
    """The accepting loop for one of several workers: it listens on a socket of its own.

    The supervisor binds the address with SO_REUSEPORT and never listens on it (a bound socket
    that does not listen takes no connection); each worker binds the same address again and
    listens, and the kernel balances new connections among the listening sockets.
    """

    async def create_server(  # type: ignore[override]
        self, protocol_factory, host=None, port=None, *, sock=None, backlog=100, **kwargs: Any
    ):
        if (
            sock is not None
            and host is None
            and port is None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        ):
            own = reuseport_socket(sock.getsockname(), sock.family)
            sock.close()  # this process's copy of the supervisor's: it goes on existing there
            sock = own
        return await super().create_server(
            protocol_factory, host, port, sock=sock, backlog=backlog, **kwargs
        )


def new_event_loop() -> Loop:
    """The loop factory uvicorn is given (`loop="gateway.serve.accept:new_event_loop"`)."""
    return Loop()


def new_worker_event_loop() -> ReusePortLoop:
    """The loop factory for each of several workers (`gateway.serve.accept:new_worker_...`)."""
    return ReusePortLoop()
