"""Identity + route -> allow, redirect to login, 401, 403 or 405."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote

from gateway.config import Route
from gateway.context import Identity, context_of
from gateway.errors import send_error, wants_html
from gateway.routing import encode_path


class Outcome(Enum):
    """What the policy says about one request."""

    ALLOW = "allow"
    LOGIN = "login"  # not authenticated on a required route
    FORBIDDEN = "forbidden"  # authenticated, but without a needed role
    METHOD = "method"  # the route does not take this method


@dataclass(frozen=True)
class Decision:
    """The outcome and, for 405, the methods the route takes."""

    outcome: Outcome
    allow: tuple[str, ...] = ()


ALLOW = Decision(Outcome.ALLOW)


def decide(identity: Identity | None, route: Route, method: str) -> Decision:
    """The route's verdict on this caller and method; pure, so tests can table-drive it."""
    if route.methods is not None and method not in route.methods:
        return Decision(Outcome.METHOD, tuple(sorted(route.methods)))
    if route.auth != "required":
        return ALLOW
    if identity is None:
        return Decision(Outcome.LOGIN)
    if route.roles and not set(route.roles) & set(identity.roles):
        return Decision(Outcome.FORBIDDEN)
    return ALLOW


def login_location(public_url: str, prefix: str, next_target: str) -> str:
    """Where an unauthenticated browser is sent: built from public_url, never from Host."""
    return f"{public_url}{prefix}/login?next={quote(next_target, safe='')}"


def original_target(scope: dict, path: str) -> str:
    """The normalized path plus the query, as `next` carries it."""
    query = scope.get("query_string", b"")
    target = encode_path(path).decode("ascii")
    if query:
        target += "?" + query.decode("latin-1")
    return target


class EnforcePolicy:
    """Pure ASGI: apply `decide` to the matched route; only ALLOW reaches the next app."""

    def __init__(self, app, *, public_url: str, prefix: str) -> None:
        self.app = app
        self.public_url = public_url
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        ctx = context_of(scope)
        route = ctx.route
        assert route is not None  # ingress answers 404 before this
        method = scope.get("method", "GET")
        decision = decide(ctx.identity, route, method)
        if decision.outcome is Outcome.ALLOW:
            await self.app(scope, receive, send)
            return
        # a refused websocket upgrade gets the same 401/403/405 (never a redirect: no method,
        # so not a browser navigation); gateway.websocket turns it into the handshake answer
        html = wants_html(scope)
        head = method == "HEAD"
        if decision.outcome is Outcome.METHOD:
            allow = ", ".join(decision.allow).encode("ascii")
            await send_error(
                send,
                405,
                "method_not_allowed",
                f"This route does not accept {method}.",
                headers=[(b"allow", allow)],
                head=head,
            )
        elif decision.outcome is Outcome.FORBIDDEN:
            await send_error(
                send,
                403,
                "forbidden",
                "You do not have access to this page.",
                as_html=html,
                head=head,
                prefix=self.prefix,
            )
        elif html:
            location = login_location(
                self.public_url, self.prefix, original_target(scope, ctx.path)
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 302,
                    "headers": [
                        (b"location", location.encode("latin-1")),
                        (b"content-length", b"0"),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        else:
            await send_error(
                send,
                401,
                "unauthenticated",
                "Sign in, or send a valid bearer token.",
                headers=[(b"www-authenticate", b'Bearer realm="gateway"')],
                head=head,
            )
