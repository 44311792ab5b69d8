"""Identity + route -> allow, sign in first, forbidden or method not allowed: pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote

from gateway.config import Route
from gateway.core.context import Identity
from gateway.core.routing import encode_path


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


def original_target(query: bytes, path: str) -> str:
    """The normalized path plus the query, as `next` carries it."""
    target = encode_path(path).decode("ascii")
    if query:
        target += "?" + query.decode("latin-1")
    return target
