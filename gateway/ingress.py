"""Framing checks on the request head: what a smuggling attempt looks like."""

from __future__ import annotations

from collections.abc import Sequence


def framing_problem(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why the request's body framing is ambiguous (a smuggling vector), or None."""
    # two Host headers: the route may be matched on one and the upstream read the other
    if sum(1 for k, _ in headers if k == b"host") > 1:
        return "more than one Host header"
    lengths = [v for k, v in headers if k == b"content-length"]
    encodings = [v for k, v in headers if k == b"transfer-encoding"]
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding"
    if len(set(lengths)) > 1 or any(b"," in v for v in lengths):
        return "conflicting Content-Length headers"
    if lengths and not lengths[0].strip().isdigit():
        return "invalid Content-Length"
    if encodings and (len(encodings) > 1 or encodings[0].strip().lower() != b"chunked"):
        return "unsupported Transfer-Encoding"
    return None
