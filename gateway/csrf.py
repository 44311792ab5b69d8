"""Cross-site request forgery: a cookie-authenticated unsafe request must come from our origin."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from gateway.context import context_of
from gateway.errors import send_error

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


def refused(scope: dict, allowed: frozenset[str]) -> bool:
    """The CSRF rule for one proxied request, after authentication."""
    ctx = context_of(scope)
    identity = ctx.identity
    if identity is None or identity.source != "cookie":
        return False
    # browsers send cookies on cross-site websocket upgrades (a GET): judge those by Origin
    if scope["type"] == "http" and scope.get("method", "GET") in SAFE_METHODS:
        return False
    return cross_site(scope["headers"], allowed)


class RefuseCrossSite:
    """Pure ASGI: 403 for a cross-site unsafe request carrying our cookie, before the upstream."""

    def __init__(self, app, *, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and refused(scope, self.allowed):
            await send_error(
                send, 403, "cross_site", "Cross-site requests with the session cookie are refused."
            )
            return
        await self.app(scope, receive, send)
