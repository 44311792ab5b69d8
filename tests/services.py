"""Real services the tests talk to, and the skip-or-fail rule for when one is missing.

A test that needs Redis, PostgreSQL, MariaDB, nginx or a browser skips on a machine
without it, unless GATEWAY_TEST_REQUIRE names it (CI sets it): then it fails.
"""

from __future__ import annotations

import os
import socket

import pytest


def required_services() -> set[str]:
    """The services GATEWAY_TEST_REQUIRE names (comma-separated)."""
    raw = os.environ.get("GATEWAY_TEST_REQUIRE", "")
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need(service: str, available: bool, why: str = "") -> None:
    """Skip (or fail, when CI requires the service) if `available` is false."""
    if available:
        return
    message = f"{service} is not available{': ' + why if why else ''}"
    if service.lower() in required_services():
        pytest.fail(f"{message} (GATEWAY_TEST_REQUIRE names it)")
    pytest.skip(message)


def need_port(service: str, port: int, host: str = "127.0.0.1") -> None:
    """Skip or fail unless the service listens on host:port."""
    need(service, port_open(host, port), f"nothing listens on {host}:{port}")
