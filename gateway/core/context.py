"""What the gateway learns about one request as it flows through, kept in the ASGI scope."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import Route
from gateway.core.ingress import NO_BODY, ClientView, Framing

SCOPE_KEY = "gateway"


@dataclass(frozen=True)
class Identity:
    """A verified caller: from a session cookie or a bearer token."""

    sub: str
    roles: tuple[str, ...]
    sid: str
    exp: float
    source: str  # "cookie" | "bearer"
    amr: tuple[str, ...] = ()  # how the session signed in: ("pwd",), ("pwd", "otp"), ("hwk",)
    # the name the users source finds `sub` by, when that is not `sub` itself
    username: str = ""


@dataclass(slots=True)
class RequestContext:
    """Per-request facts decided once and read by every later step."""

    request_id: str
    path: str  # normalized, decoded: what was matched and what is forwarded
    view: ClientView  # client address, scheme and host, forwarded headers judged
    route: Route | None = None
    endpoint: bool = False  # under auth.prefix: served by the gateway itself
    identity: Identity | None = None
    auth_error: str | None = None  # why a presented token was refused (safe to log)
    used_bearer: bool = False  # Authorization carried our token: never forwarded
    # the OpenID provider's access token of the session, for a `pass_access_token` route
    access_token: str | None = None
    set_cookies: list[str] = field(default_factory=list)  # added to the response
    upstream_status: int | None = None
    user_for_log: str | None = None
    # the body's Content-Length or chunked framing, judged unambiguous by ingress
    framing: Framing = NO_BODY


def context_of(scope: dict) -> RequestContext:
    """The RequestContext that ingress put in the scope."""
    return scope[SCOPE_KEY]
