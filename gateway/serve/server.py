"""Serving on uvicorn, and the startup summary printed before it."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gateway.config import Config

if TYPE_CHECKING:
    import uvicorn


def configure_logging() -> None:
    """The gateway's log lines on stderr: for the CLI, and for each spawned worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every upstream URL at INFO, query string (tokens, reset codes) and all
    logging.getLogger("httpx").setLevel(logging.WARNING)


def table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def routes_table(config: Config) -> str:
    """The routes as an aligned text table, in config order."""
    rows = [["NAME", "HOST", "PATH", "AUTH", "ROLES", "METHODS", "UPSTREAM"]]
    for route in config.routes:
        rows.append(
            [
                route.name,
                route.host or "*",
                route.path + (" (strip)" if route.strip_prefix else ""),
                route.auth,
                ",".join(route.roles) or "-",
                ",".join(sorted(route.methods)) if route.methods else "any",
                route.upstream,
            ]
        )
    return table(rows)


def startup_summary(config: Config, workers: int) -> str:
    """What `run` and `demo` print before serving: address, routes, store, keys."""
    from gateway.auth.keys import load_keys

    if config.keys.algorithm == "HS256":
        kids = "HS256 shared secret"
    else:
        kids = ", ".join(
            k.kid for k in load_keys(config.keys.dir) if k.algorithm == config.keys.algorithm
        )
    return "\n".join(
        [
            f"gateway listening on http://{config.server.host}:{config.server.port} "
            f"({workers} worker{'s' if workers != 1 else ''})",
            f"public URL: {config.server.public_url}",
            f"store: {_redact(config.store.url)}    keys: {config.keys.algorithm} [{kids}]",
            f"metrics: http://{config.server.admin_listen}/metrics",
            routes_table(config),
        ]
    )


def _redact(url: str) -> str:
    """A store URL without its secrets: userinfo, and any `...password=` query value."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://***@{rest.split('@', 1)[1]}"
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        parts.append(f"{key}=***" if eq and "password" in key.lower() else item)
    return base + "?" + "&".join(parts)


def protocol_factory(config: Config) -> functools.partial:
    """The uvicorn HTTP protocol: httptools bounded by the `[server]` head limits."""
    from gateway.serve.protocol import LimitedHttpToolsProtocol, ProtocolLimits

    server = config.server
    limits = ProtocolLimits(
        max_request_line=server.max_request_line,
        max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        header_timeout=server.header_timeout,
    )
    return functools.partial(LimitedHttpToolsProtocol, limits=limits)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# uvicorn's loop: a loop factory, uvloop with asyncio's greedy accept (serve/accept.py), and
# for several workers each on a SO_REUSEPORT socket of its own
ACCEPTING_UVLOOP = "gateway.serve.accept:new_event_loop"
WORKER_UVLOOP = "gateway.serve.accept:new_worker_event_loop"


def event_loop(workers: int) -> str:
    """uvicorn's `loop` for this many workers: uvloop, accepting greedily.

    One worker takes every waiting connection at once (serve/accept.py: the tail at 256
    connections). Several workers each listen on their own SO_REUSEPORT socket, among which
    the kernel spreads connections, and accept greedily from it (a greedy accept on one shared
    socket let one worker take 46 of 64 connections; run E).
    """
    if importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return ACCEPTING_UVLOOP if workers <= 1 else WORKER_UVLOOP


def worker_socket(settings: uvicorn.Config) -> socket.socket:
    """The supervisor's socket for several workers: bound with SO_REUSEPORT, never listening;
    each worker listens on its own copy of the address (serve/accept.py's ReusePortLoop).

    Without uvloop (or SO_REUSEPORT) the workers share uvicorn's socket as uvicorn binds it.
    """
    if not hasattr(socket, "SO_REUSEPORT") or settings.loop != WORKER_UVLOOP:
        return settings.bind_socket()
    from uvicorn.config import STARTUP_FAILURE

    from gateway.serve.accept import reuseport_socket

    # uvicorn's own socket first, as it always binds it: an address in use fails here as it
    # would there. (SO_REUSEPORT alone would let a second gateway of the same user bind the
    # same port and silently take half its connections.)
    plain = settings.bind_socket()
    address, family = plain.getsockname(), plain.family
    plain.close()
    try:
        sock = reuseport_socket(address, family)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error(exc)
        raise SystemExit(STARTUP_FAILURE) from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this run's worker processes, removed at exit."""
    directory = tempfile.mkdtemp(prefix="gateway-metrics-")
    # prometheus_client picks file-backed values when first imported: set it before that
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(config: Config, workers: int) -> None:
    """Run the gateway on uvicorn until stopped; keys exist before any worker starts.

    Several workers count in files the admin listener sums; one worker, which runs in this
    process beside the admin listener, counts in memory (a file-backed value cost 2.5 times
    as much per request).
    """
    with metrics_dir() if workers > 1 else contextlib.nullcontext():
        _serve(config, workers)


def _serve(config: Config, workers: int) -> None:
    from gateway.auth.keys import ensure_key
    from gateway.metrics import start_admin_listener
    from gateway.serve.reload import HUP
    from gateway.serve.worker import CONFIG_ENV

    ensure_key(config.keys.dir, config.keys.algorithm)
    assert config.source is not None
    os.environ[CONFIG_ENV] = str(config.source)
    # uvicorn drains in-flight requests on SIGTERM, then raises it again with the handler
    # it found: make that a clean exit 0 (SIGINT still ends with KeyboardInterrupt)
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    # a SIGHUP before the app (or the supervisor) can act on it waits until it can, in this
    # thread and in the threads and workers started from it (serve/reload.py's docstring);
    # blocked again by the app as it stops, one that comes after waits out the process
    signal.pthread_sigmask(signal.SIG_BLOCK, HUP)
    admin = start_admin_listener(config.server.admin_host, config.server.admin_port)
    print(startup_summary(config, workers), flush=True)
    try:
        _run_uvicorn(config, workers)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if admin is not None:
            admin.close()


def _run_uvicorn(config: Config, workers: int) -> None:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    settings = uvicorn.Config(
        "gateway.serve.worker:app_from_env",
        factory=True,
        host=config.server.host,
        port=config.server.port,
        workers=workers,
        # forwarded headers are judged by the gateway from trusted_proxies, never by uvicorn
        proxy_headers=False,
        server_header=False,
        # the upstream's Date passes through; a second one from uvicorn would duplicate it
        date_header=False,
        access_log=False,
        # httptools with our limits on the request head (size, count, read time, trailers)
        http=protocol_factory(config),
        loop=event_loop(workers),
        lifespan="on",
        timeout_graceful_shutdown=30,
        log_level="info",
    )
    # what uvicorn.run does, except that with several workers SIGHUP reloads each in place
    server = uvicorn.Server(settings)
    try:
        if workers > 1:
            from gateway.serve.reload import forwarding_supervisor

            forwarding_supervisor()(settings, sockets=[worker_socket(settings)]).run()
        else:
            # bound here, not by uvicorn, so that serve/accept.py's server accepts from it
            server.run(sockets=[settings.bind_socket()])
    except KeyboardInterrupt:
        pass
    if workers <= 1 and not server.started:
        raise SystemExit(STARTUP_FAILURE)
