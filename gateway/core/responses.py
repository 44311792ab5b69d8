"""One shape for every refusal: a value the core returns, rendered the same way by every mode."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.pages import render_error_page

Header = tuple[bytes, bytes]

# the gateway's pages load only their own stylesheet and may not be framed (clickjacking)
PAGE_CSP = (
    b"default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    + b"base-uri 'none'"
)
# a page that makes the WebAuthn calls runs the gateway's own script, and no other, which
# fetches the ceremony's options from the gateway itself
PAGE_CSP_SCRIPT = PAGE_CSP.replace(
    b"default-src 'none';", b"default-src 'none'; script-src 'self'; connect-src 'self';"
)
SECURITY_HEADERS: tuple[Header, ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", PAGE_CSP),
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer instead of the app: status, error code, human detail, and how to show it.

    `location` makes it a redirect (302 to sign-in); `html` an error page for a browser.
    """

    status: int
    code: str
    detail: str
    headers: tuple[Header, ...] = ()
    location: str | None = None
    html: bool = False
    # `mfa_required`: the second factors that would do, as the JSON body's "methods"
    methods: tuple[str, ...] | None = None


def wants_html(method: str, headers: Iterable[Header]) -> bool:
    """A browser navigation: GET or HEAD whose Accept names text/html."""
    if method not in ("GET", "HEAD"):
        return False
    for name, value in headers:
        if name == b"accept" and b"text/html" in value.lower():
            return True
    return False


def render(refusal: Refusal, prefix: str = "/.auth") -> tuple[int, list[Header], bytes]:
    """Status, headers and body of a refusal, as every mode sends it."""
    if refusal.location is not None:
        headers = [
            (b"location", refusal.location.encode("latin-1")),
            (b"content-length", b"0"),
            *SECURITY_HEADERS,
            *refusal.headers,
        ]
        return refusal.status, headers, b""
    if refusal.html:
        body = render_error_page(refusal.status, refusal.detail, prefix).encode("utf-8")
        ctype = b"text/html; charset=utf-8"
    else:
        doc: dict[str, object] = {"error": refusal.code, "detail": refusal.detail}
        if refusal.methods is not None:
            doc["methods"] = list(refusal.methods)
        body = json.dumps(doc).encode("utf-8")
        ctype = b"application/json"
    headers = [
        (b"content-type", ctype),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
        *refusal.headers,
    ]
    return refusal.status, headers, body


async def send_refusal(
    send, refusal: Refusal, *, head: bool = False, prefix: str = "/.auth", extra=()
) -> None:
    """Answer an ASGI request with the refusal (no body for HEAD), `extra` headers appended."""
    status, headers, body = render(refusal, prefix)
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_error(
    send,
    status: int,
    code: str,
    detail: str,
    *,
    headers: Iterable[Header] = (),
    head: bool = False,
) -> None:
    """Answer with {"error", "detail"} and the security headers (outside the decision)."""
    await send_refusal(send, Refusal(status, code, detail, tuple(headers)), head=head)
