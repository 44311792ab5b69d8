"""Cross-site request forgery: a cookie-authenticated unsafe request must come from our origin."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL, lower case ("" when it has none)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def allowed_origins(public_url: str, extra: Iterable[str]) -> frozenset[str]:
    """Our own origin plus the configured `allowed_origins`."""
    return frozenset({origin_of(public_url), *extra})


def cross_site(headers: Iterable[tuple[bytes, bytes]], allowed: frozenset[str]) -> bool:
    """True when Origin (or, without it, Referer) names an origin not in `allowed`.

    A request with neither is not from a browser page and is let through.
    """
    origin = referer = None
    for key, value in headers:
        if key == b"origin" and origin is None:
            origin = value.decode("latin-1").strip().lower()
        elif key == b"referer" and referer is None:
            referer = value.decode("latin-1").strip()
    if origin is not None:
        # "null" comes from sandboxed frames, file: pages and cross-origin redirects
        return origin not in allowed
    if referer is not None:
        return origin_of(referer) not in allowed
    return False
