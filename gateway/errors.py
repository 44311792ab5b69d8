"""One response shape for everything the gateway refuses: JSON, or HTML for a browser page."""

from __future__ import annotations

import json
from collections.abc import Iterable

from gateway.pages import render_error_page

# the gateway's pages load only their own stylesheet and may not be framed (clickjacking)
PAGE_CSP = (
    b"default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    + b"base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        PAGE_CSP,
    ),
)


def wants_html(scope: dict) -> bool:
    """A browser navigation: GET or HEAD whose Accept names text/html."""
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    for name, value in scope.get("headers", ()):
        if name == b"accept" and b"text/html" in value.lower():
            return True
    return False


async def send_error(
    send,
    status: int,
    code: str,
    detail: str,
    *,
    as_html: bool = False,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
    prefix: str = "/.auth",
) -> None:
    """Answer with {"error", "detail"} (or a small HTML page) and the security headers."""
    if as_html:
        body = render_error_page(status, detail, prefix).encode("utf-8")
        ctype = b"text/html; charset=utf-8"
    else:
        body = json.dumps({"error": code, "detail": detail}).encode("utf-8")
        ctype = b"application/json"
    out = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": b"" if head else body})
