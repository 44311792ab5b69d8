"""What every endpoint shares: the error shape, its security headers, a bounded body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core.csrf import cross_site
from gateway.core.responses import SECURITY_HEADERS

MAX_FORM_BYTES = 16 * 1024
HEADERS = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}


class Refused(Exception):
    """A request the endpoints answer with an error status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def json_error(status: int, code: str, detail: str, headers: dict | None = None) -> Response:
    """The gateway's error shape as a Starlette response."""
    return JSONResponse(
        {"error": code, "detail": detail}, status, headers={**HEADERS, **(headers or {})}
    )


def wants_json(request: Request) -> bool:
    """True for an API client: a JSON body, or JSON accepted and HTML not."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    accept = request.headers.get("accept", "").lower()
    return ctype == "application/json" or (
        "application/json" in accept and "text/html" not in accept
    )


def same_origin(request: Request, allowed: frozenset[str]) -> bool:
    """False when the browser says the request comes from a page of another origin."""
    return not cross_site(request.scope["headers"], allowed)


async def read_body(request: Request) -> bytes:
    """The whole body, or Refused 413 past MAX_FORM_BYTES (read no further than that)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "payload_too_large", "The request body is too large.")
    return bytes(body)
