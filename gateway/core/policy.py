"""Identity + route -> allow, sign in first, forbidden or method not allowed: pure."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
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
    STEP_UP = "step_up"  # allowed once the session has a second factor


@dataclass(frozen=True)
class Decision:
    """The outcome, for 405 the methods the route takes, and the rule that decided (`explain`)."""

    outcome: Outcome
    allow: tuple[str, ...] = ()
    rule: str = field(default="", compare=False)


ALLOW = Decision(Outcome.ALLOW)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _inside(client: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False  # no address (a unix socket), or garbage: inside nothing
    return any(address in network for network in networks)


# RFC 8176 methods that are a second factor (or, for a passkey, both at once)
SECOND_FACTORS = frozenset({"otp", "hwk"})


def has_second_factor(amr: tuple[str, ...]) -> bool:
    """True when the session's sign-in included a one-time code or a security key."""
    return not SECOND_FACTORS.isdisjoint(amr)


def decide(
    identity: Identity | None,
    route: Route,
    method: str,
    client: str = "",
    mfa_everyone: bool = False,
) -> Decision:
    """The route's verdict on this caller, method and client address; pure, table-driven.

    The order (README "Route rules"): deny, networks, methods, public/optional,
    bypass_networks, signed in, users or roles, then the second factor (the route's `mfa`,
    or `mfa_everyone` from `[mfa] required`, which service tokens are exempt from).
    """
    verdict = _first_factor(identity, route, method, client)
    if verdict.outcome is not Outcome.ALLOW or identity is None or route.auth != "required":
        return verdict
    if route.bypass_networks and _inside(client, route.bypass_networks):
        return verdict  # no sign-in needed from there: a session is not asked for more
    if not (route.mfa or (mfa_everyone and identity.source != "service")):
        return verdict
    if has_second_factor(identity.amr):
        return Decision(Outcome.ALLOW, rule=f"{verdict.rule}; mfa: a second factor was used")
    if identity.source == "service":
        return Decision(Outcome.FORBIDDEN, rule="mfa: a service token has no second factor")
    why = "mfa = true" if route.mfa else "[mfa] required"
    return Decision(Outcome.STEP_UP, rule=f"{why}: {identity.sub} has no second factor yet")


def _first_factor(identity: Identity | None, route: Route, method: str, client: str) -> Decision:
    if route.auth == "deny":
        return Decision(Outcome.FORBIDDEN, rule='auth = "deny": nobody reaches this route')
    if route.networks and not _inside(client, route.networks):
        return Decision(Outcome.FORBIDDEN, rule=f"networks: {client or 'no address'} is outside")
    if route.methods is not None and method not in route.methods:
        return Decision(
            Outcome.METHOD, tuple(sorted(route.methods)), rule=f"methods: {method} is not listed"
        )
    if route.auth != "required":
        return Decision(Outcome.ALLOW, rule=f'auth = "{route.auth}": anyone')
    if route.bypass_networks and _inside(client, route.bypass_networks):
        return Decision(Outcome.ALLOW, rule=f"bypass_networks: {client} needs no sign-in")
    if identity is None:
        return Decision(Outcome.LOGIN, rule='auth = "required": not signed in')
    if not route.roles and not route.users:
        return Decision(Outcome.ALLOW, rule='auth = "required": any signed-in user')
    if identity.sub in route.users:
        return Decision(Outcome.ALLOW, rule=f"users: {identity.sub} is listed")
    shared = sorted(set(route.roles) & set(identity.roles))
    if shared:
        return Decision(Outcome.ALLOW, rule=f"roles: {identity.sub} has {shared[0]}")
    return Decision(
        Outcome.FORBIDDEN, rule=f"users/roles: {identity.sub} is not listed and has none of them"
    )


def login_location(public_url: str, prefix: str, next_target: str, page: str = "login") -> str:
    """Where an unauthenticated browser is sent (or, `page = "mfa"`, one to step up): built
    from public_url, never from Host."""
    return f"{public_url}{prefix}/{page}?next={quote(next_target, safe='')}"


def original_target(query: bytes, path: str) -> str:
    """The normalized path plus the query, as `next` carries it."""
    target = encode_path(path).decode("ascii")
    if query:
        target += "?" + query.decode("latin-1")
    return target
