"""Config reload on SIGHUP: build the new gateway beside the old one, swap, let the old one drain.

Each request runs on the generation that was current when it arrived, so a swap never touches
a request in flight; the old generation's upstream clients (and store, if the new config names
another one) are closed only once its last request has finished. A config that does not
validate, or does not build, is refused and logged with its errors; the old one keeps serving.

This runs inside each serving process. With `gateway run --workers N` the SIGHUP goes to the
supervisor (ForwardingSupervisor below), which passes it on to every worker, so each reloads in
place like a single process does. uvicorn's own supervisor would instead replace the workers
one by one, and a worker stopping closes connections it has accepted but not yet read a
request from: a request sent at that moment would be lost.

A SIGHUP that comes while a process is starting waits: `gateway run` blocks it before it
starts anything, every worker is born with it blocked, and each process unblocks it only once
its handler is in place. The default action of SIGHUP ends a process, and a signal merely
ignored would be lost: held, it is delivered then, and the process reloads the file it may
have read before the change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import audit, metrics
from gateway.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from gateway.proxy.app import GatewayApp
    from gateway.store.base import Store

log = logging.getLogger("gateway.reload")

Build = Callable[[Config, "Store | None"], "GatewayApp"]

HUP = {signal.SIGHUP}


@contextmanager
def sighup_held() -> Iterator[None]:
    """SIGHUP blocked in this thread, and in every process started from it, until the end."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HUP)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@dataclass(eq=False)
class Generation:
    """One built gateway and the requests currently running on it."""

    app: GatewayApp
    in_flight: int = 0
    retired: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.retired and self.in_flight == 0:
            self.drained.set()

    def retire(self) -> None:
        self.retired = True
        if self.in_flight == 0:
            self.drained.set()


def _same_store(old: Config, new: Config) -> bool:
    return old.store.url == new.store.url and old.base_dir == new.base_dir


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply: the sockets are bound once, at start."""
    changed = []
    if (old.server.host, old.server.port) != (new.server.host, new.server.port):
        changed.append("server.listen")
    if old.server.admin_listen != new.server.admin_listen:
        changed.append("server.admin_listen")
    if old.telemetry != new.telemetry:
        changed.append("telemetry")
    return changed


def _log_errors(headline: str, exc: ConfigError) -> None:
    log.error("%s", headline)
    for line in exc.errors:
        log.error("config error: %s", line)


class ReloadingApp:
    """Pure ASGI: serve the current generation; `reload()` (on SIGHUP) swaps in a new one."""

    def __init__(self, source: Path, build: Build) -> None:
        self.source = source
        self.build = build
        try:
            config = load_config(source)
        except ConfigError as exc:
            # a worker started by a rolling restart (--workers N) after the file went bad:
            # say why in the gateway's words, and let the supervisor keep the old workers
            _log_errors(f"worker not started: {len(exc.errors)} error(s) in {source}", exc)
            raise SystemExit(1) from None
        self.current = Generation(build(config, None))
        self.draining: set[asyncio.Task] = set()
        self._lock: asyncio.Lock | None = None
        self._signal_loop: asyncio.AbstractEventLoop | None = None

    @property
    def config(self) -> Config:
        """The config new requests are served with."""
        return self.current.app.config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        generation = self.current
        generation.enter()
        try:
            # straight to its request chain: GatewayApp.__call__ adds only the lifespan branch,
            # answered here (one coroutine frame fewer for every resumption of a request)
            await generation.app.app(scope, receive, send)
        finally:
            generation.leave()

    async def reload(self) -> bool:
        """Load the config file again and swap it in; False (logged) when it is refused."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._reload()

    async def _reload(self) -> bool:
        old = self.current
        try:
            config = load_config(self.source)
        except ConfigError as exc:
            count = len(exc.errors)
            _log_errors(f"reload refused: {count} error(s) in {self.source}; old config stays", exc)
            audit.event("config.refused", config=str(self.source), reason=exc.errors[0])
            metrics.config_reload("refused")
            return False
        shared = old.app.runtime.store if _same_store(old.app.config, config) else None
        try:
            app = self.build(config, shared)
        # whatever stops the new config from building (keys dir, users backend, store URL)
        # must leave the old one serving, so nothing is let through here
        except Exception as exc:
            log.error("reload refused: %s could not be built: %s", self.source, exc)
            audit.event(
                "config.refused", config=str(self.source), reason=f"{exc.__class__.__name__}: {exc}"
            )
            metrics.config_reload("refused")
            return False
        for name in restart_only_changes(old.app.config, config):
            log.warning("reload: %s changed; it takes effect only after a restart", name)
        self.current = Generation(app)
        old.retire()
        task = asyncio.get_running_loop().create_task(self._close_when_drained(old, shared))
        self.draining.add(task)
        task.add_done_callback(self.draining.discard)
        log.info("reloaded %s: %d route(s)", self.source, len(config.routes))
        audit.event("config.reloaded", config=str(self.source), routes=len(config.routes))
        metrics.config_reload("ok")
        return True

    @staticmethod
    async def _close_when_drained(old: Generation, shared: Store | None) -> None:
        try:
            await old.drained.wait()
        finally:
            # at shutdown this task is cancelled: the server has drained the requests by then
            await old.app.aclose(close_store=shared is None)
            log.info("the previous config finished its last request and was closed")

    def on_sighup(self) -> None:
        """Signal handler: reload in a task on the running loop."""
        log.info("SIGHUP: reloading %s", self.source)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self.reload())
        self.draining.add(task)
        task.add_done_callback(self.draining.discard)

    def _install_sighup(self) -> None:
        # signals reach only the main thread; an app served from a test thread has none
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("SIGHUP reload unavailable on this event loop")
            return
        self._signal_loop = loop
        # held since the process started (module docstring): one sent meanwhile arrives now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HUP)

    def _remove_sighup(self) -> None:
        if self._signal_loop is not None:
            # shutting down: a SIGHUP now must neither end the process nor start a reload
            signal.pthread_sigmask(signal.SIG_BLOCK, HUP)
            self._signal_loop.remove_signal_handler(signal.SIGHUP)
            self._signal_loop = None

    async def _lifespan(
        self, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._install_sighup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._remove_sighup()
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close the current generation and any still draining (the server has drained them)."""
        for task in list(self.draining):
            task.cancel()
        await asyncio.gather(*self.draining, return_exceptions=True)
        await self.current.app.aclose()


def forwarding_supervisor() -> type:
    """uvicorn's multi-worker supervisor, with SIGHUP passed on to the workers (not restarts)."""
    from uvicorn.supervisors.multiprocess import Multiprocess

    class ForwardingSupervisor(Multiprocess):
        # every worker is started with SIGHUP held, so that one passed on while it starts
        # waits for its handler (module docstring). uvicorn starts them in these three places
        # and in restart_all, which only its handle_hup calls, replaced below

        def init_processes(self) -> None:
            with sighup_held():
                super().init_processes()
            # held since `gateway run` started: from here on it is passed on as it comes
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HUP)

        def keep_subprocess_alive(self) -> None:
            with sighup_held():
                super().keep_subprocess_alive()

        def handle_ttin(self) -> None:
            with sighup_held():
                super().handle_ttin()

        def handle_hup(self) -> None:
            log.info("SIGHUP: every worker reloads its config")
            for process in self.processes:
                pid = process.pid
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass  # a worker that just died is restarted with the new config anyway

    return ForwardingSupervisor
