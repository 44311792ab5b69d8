"""`gateway explain`: which route and which rule decide a request, and why; pure.

It asks the same Router and the same policy.decide the proxy, the middleware and /verify
ask, for a request described on the command line instead of received.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import Config, Route
from gateway.core.context import Identity
from gateway.core.policy import Outcome, decide
from gateway.core.routing import BadPath, Router, normalize_path, under_prefix
from gateway.sources.base import canonical_username

_VERDICT = {
    Outcome.ALLOW: "allow",
    Outcome.LOGIN: "sign in first (browser: 302 to the sign-in page; API: 401)",
    Outcome.FORBIDDEN: "forbidden (403)",
    Outcome.METHOD: "method not allowed (405)",
    Outcome.STEP_UP: "second factor first (browser: 302 to the factor page; API: 401)",
}


@dataclass(frozen=True)
class Explanation:
    """What the gateway would do: the route (None: 404 or our own endpoint) and the rule."""

    route: Route | None
    verdict: str
    rule: str
    path: str


def explain(
    config: Config,
    method: str,
    url: str,
    user: str | None = None,
    roles: tuple[str, ...] = (),
    client: str = "",
    second_factor: bool = False,
) -> Explanation:
    """The decision for `method url` by `user` (with `roles`, signed in with a password and,
    with `second_factor`, a one-time code too) from `client`."""
    parts = urlsplit(url if "://" in url else f"http://placeholder{url}")
    host = None if "://" not in url else parts.netloc.rsplit("@", 1)[-1] or None
    raw = (parts.path or "/").encode("utf-8", "surrogateescape")
    path = normalize_path(raw)
    if isinstance(path, BadPath):
        return Explanation(None, "bad request (400)", f"the path is refused: {path.detail}", "")
    prefix = config.auth.prefix
    if under_prefix(path, prefix):
        return Explanation(None, "the gateway's own endpoint", f"under auth.prefix {prefix}", path)
    route = Router(config.routes).match(host, path)
    if route is None:
        return Explanation(None, "not found (404)", "no route matches host and path", path)
    identity = None
    if user:
        name = canonical_username(user)
        amr = ("pwd", "otp") if second_factor else ("pwd",)
        identity = Identity(name, tuple(roles), "explain", 0.0, "cookie", amr)
    decision = decide(identity, route, method, client, config.mfa.required)
    return Explanation(route, _VERDICT[decision.outcome], decision.rule, path)


def describe(route: Route) -> str:
    """One line naming a route the way gateway.toml does."""
    where = f"host {route.host}, " if route.host else ""
    return f"{route.name} ({where}path {route.path}, auth {route.auth})"
