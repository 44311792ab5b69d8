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


def host_origins(host: str, public_url: str) -> frozenset[str]:
    """The origins a host route's own pages have: its host over https (and http when
    public_url is http), on the default port and on public_url's port."""
    parts = urlsplit(public_url)
    schemes = ("https", "http") if parts.scheme == "http" else ("https",)
    name = host.lower()
    out = {f"{scheme}://{name}" for scheme in schemes}
    if parts.port and ":" not in name:
        out |= {f"{scheme}://{name}:{parts.port}" for scheme in schemes}
    return frozenset(out)


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
