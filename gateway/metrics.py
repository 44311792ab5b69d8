"""Prometheus metrics, and the admin listener that serves them apart from the public port.

With `gateway run --workers N` (N > 1) every worker is its own process: `serve()` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before this module is first imported, each
worker writes its values to files there, and the admin listener (in the parent) sums them.
A single-process gateway (one worker, or the middleware) counts in memory.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("gateway.metrics")

# route label for the gateway's own endpoints, and for requests refused before a route matched
ENDPOINTS_ROUTE = "_auth"
NO_ROUTE = "_none"

REQUESTS = Counter(
    "gateway_requests_total", "Requests answered, by route and status.", ["route", "status"]
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from the request to the end of the response body, by route and status.",
    ["route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Upstream failures by route and kind (connect, timeout, other).",
    ["route", "kind"],
)
LOGINS = Counter(
    "gateway_logins_total", "Sign-in attempts by outcome (ok, failed, locked, error).", ["outcome"]
)
REISSUES = Counter("gateway_token_reissues_total", "Session tokens re-issued in a fresh cookie.")
STORE_ERRORS = Counter(
    "gateway_store_errors_total", "Session store (or users database) failures, by step.", ["step"]
)
RELOADS = Counter("gateway_config_reloads_total", "SIGHUP config reloads by outcome.", ["outcome"])


# the (counter, histogram) children per (route, status), resolved once: `labels()` takes a
# lock and builds a key on every call. Routes and status codes are few, so this stays small.
_REQUEST_CHILDREN: dict[tuple[str, int], tuple[Any, Any]] = {}


def observe_request(route: str, status: int, seconds: float) -> None:
    """Count one finished request and its duration."""
    children = _REQUEST_CHILDREN.get((route, status))
    if children is None:
        code = str(status)
        children = (REQUESTS.labels(route, code), LATENCY.labels(route, code))
        _REQUEST_CHILDREN[(route, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def upstream_failure(route: str, kind: str) -> None:
    """Count an upstream failure of a route by kind: connect, timeout or other."""
    UPSTREAM_ERRORS.labels(route, kind).inc()


def login(outcome: str) -> None:
    """Count a sign-in attempt: ok, failed, locked or error."""
    LOGINS.labels(outcome).inc()


def token_reissued() -> None:
    """Count a session token re-issued past half its life."""
    REISSUES.inc()


def store_error(step: str) -> None:
    """Count a store failure seen by a step (authn, login, logout, ready)."""
    STORE_ERRORS.labels(step).inc()


def config_reload(outcome: str) -> None:
    """Count a config reload: ok or refused."""
    RELOADS.labels(outcome).inc()


def exposition_registry() -> CollectorRegistry:
    """What /metrics shows: every worker's files in multiprocess mode, else this process."""
    # the value class is fixed when prometheus_client is imported; trust it, not the env now
    if getattr(values.ValueClass, "_multiprocess", False):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingWSGIServer):
    pass


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class AdminListener:
    """`GET /metrics` on its own socket, served from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        registry = exposition_registry()

        def app(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found; metrics are at /metrics\n"]
            if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
                start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
                return [b""]
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]

        server_class = _Server6 if ":" in host else _Server
        self.server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="gateway-admin", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """Stop serving and release the socket."""
        self.server.shutdown()
        self.server.server_close()


def start_admin_listener(host: str, port: int) -> AdminListener | None:
    """Serve /metrics on host and port (server.admin_listen, parsed once by the config).

    None (logged) when the address cannot be bound.
    """
    try:
        return AdminListener(host, port)
    except OSError as exc:
        # metrics are a side door: a taken admin port must not stop the gateway serving traffic
        log.error("metrics listener not started on %s port %d: %s", host, port, exc.strerror or exc)
        return None
