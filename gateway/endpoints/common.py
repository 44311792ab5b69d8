"""What every endpoint shares: the error shape, its security headers, a bounded body."""

from __future__ import annotations

import asyncio
import hmac
import json
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.core.csrf import cross_site
from gateway.core.responses import SECURITY_HEADERS

MAX_FORM_BYTES = 16 * 1024
# seconds a form or JSON body posted to the gateway's own endpoints may take to arrive whole
# (the head has [server] header_timeout; a body trickled a byte a second would hold on forever)
BODY_SECONDS = 10.0
# an answer given before the body was read whole: the rest is not read, the connection closes
_CLOSE = {"connection": "close"}
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
    """The whole body, or Refused 413 past MAX_FORM_BYTES (read no further than that) or 408
    when it takes longer than BODY_SECONDS; either closes the connection."""
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    raise Refused(
                        413, "payload_too_large", "The request body is too large.", _CLOSE
                    )
    except TimeoutError:
        raise Refused(408, "request_timeout", "The request body took too long.", _CLOSE) from None
    return bytes(body)


def json_object(body: bytes, shape: str = "Send a JSON object.", empty: bool = False) -> dict:
    """The body as a JSON object (`empty`: an empty body is {}), or Refused 400 saying `shape`."""
    if empty and not body:
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "bad_request", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Refused(400, "bad_request", shape)
    return data


def form_fields(body: bytes) -> dict[str, str]:
    """A urlencoded form of at most 20 fields, or Refused 400."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), max_num_fields=20, keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "bad_request", "The form could not be read.") from None


def check_csrf(request: Request, cookie: str, fields: dict[str, str], expired: str) -> None:
    """Refused 403 unless the form's `csrf` is the token in cookie `cookie` (double submit: a
    cross-site form cannot read our cookie to copy it into the form)."""
    held = request.cookies.get(cookie, "")
    sent = fields.get("csrf", "")
    # bytes: compare_digest raises on a str that is not ASCII (a 500 for `csrf=é`)
    if not held or not sent or not hmac.compare_digest(held.encode(), sent.encode()):
        raise Refused(403, "csrf", expired)
