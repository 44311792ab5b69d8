"""The core embedded in someone else's app: what gateway.asgi and gateway.wsgi share.

The wrapped app takes the place of the proxy's forwarding step. The same chain decides
(ingress -> authenticate -> endpoints | cross-site check -> policy), and an allowed request
reaches the app with the identity added, after every client-sent copy of it is removed.

Config: the same gateway.toml, read with `require_upstream=False`: a route may leave out
`upstream` (one that has it is accepted and the upstream ignored, so a file can be shared with
the proxy). `upstream`, `strip_prefix`, `preserve_host` and `timeout` mean nothing here; paths,
`auth`, `roles`, `methods`, `bearer`, `websocket`, `strip_headers` and the identity headers
apply as in the proxy. A path no route matches is 404, as in the proxy: add a `path = "/"`
route to cover the rest of the app.
"""

from __future__ import annotations

import os

from gateway.config import Config, Route, load_config
from gateway.context import RequestContext
from gateway.headers import LEGACY, canonical, cookie_names, identity_names, sets_our_cookie
from gateway.tokens import Tokens

Header = tuple[bytes, bytes]


def middleware_config(config: Config | str | os.PathLike[str]) -> Config:
    """A Config as given, or the gateway.toml at that path read for the middleware."""
    if isinstance(config, Config):
        return config
    return load_config(config, require_upstream=False)


class AppHeaders:
    """What the wrapped app receives: the headers removed and the identity headers added."""

    def __init__(self, config: Config, tokens: Tokens) -> None:
        self.tokens = tokens
        self.cookie_names = cookie_names(config)
        # as the proxy strips them (headers.UpstreamHeaders), in every spelling; framing, Host
        # and X-Forwarded-* stay as the app's own server set them: no hop lies between
        self.strip = {
            route.name: frozenset(
                LEGACY
                | identity_names(config)
                | {canonical(h.encode("latin-1")) for h in route.strip_headers}
            )
            for route in config.routes
        }

    def removed(self, route: Route, name: bytes) -> bool:
        """True for a client-sent header the app must not see (name in any case or spelling)."""
        return canonical(name) in self.strip[route.name]

    def added(self, ctx: RequestContext, method: str) -> list[Header]:
        """The identity headers for this request (lower-case names); none when anonymous."""
        identity, route = ctx.identity, ctx.route
        if identity is None or route is None:
            return []
        names = route.identity
        out = [(names.user_header.lower().encode("latin-1"), identity.sub.encode("utf-8"))]
        if names.roles_header:
            roles = ",".join(identity.roles).encode("utf-8")
            out.append((names.roles_header.lower().encode("latin-1"), roles))
        if names.assertion_header:
            assertion = self.tokens.mint_assertion(
                identity.sub, identity.roles, route.name, method, ctx.path
            )
            out.append((names.assertion_header.lower().encode("latin-1"), assertion.encode()))
        return out

    def sets_our_cookie(self, set_cookie: bytes) -> bool:
        """True for a Set-Cookie value that would set or clear the gateway's session cookie."""
        return sets_our_cookie(set_cookie, self.cookie_names)
