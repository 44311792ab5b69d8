"""The upstream client's failures: the only exception names the rest of the gateway knows.

The client raises these and nothing else; OSError and parser errors are translated where they
arise (connection.py, pool.py), as httpx's transports map their backend's errors once. An
adapter over another HTTP client (bench/transports.py) translates that client's errors into
these too. Forward answers an UpstreamTimeout with 504 and any other UpstreamError with 502.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not be reached, or did not answer with one valid response."""

    # the `kind` label of gateway_upstream_errors_total: connect, timeout or other
    kind = "other"


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, accept the request or answer in time."""

    kind = "timeout"


class ConnectTimeout(UpstreamTimeout):
    """Opening the connection took longer than the route's timeout."""


class ReadTimeout(UpstreamTimeout):
    """The response head, or the next piece of its body, did not arrive in time."""


class WriteTimeout(UpstreamTimeout):
    """The upstream stopped reading the request body for longer than the route's timeout."""


class ConnectFailed(UpstreamError):
    """The connection could not be opened: refused, unreachable, name or TLS failure."""

    kind = "connect"


class ProtocolError(UpstreamError):
    """The answer is not exactly one valid response (malformed, too big, a 101, bytes after it)."""


class ReadFailed(UpstreamError):
    """The upstream closed the connection while the response was being read."""


class WriteFailed(UpstreamError):
    """The upstream closed the connection while the request was being written."""
