"""The decision every mode asks for: from what a request is to allow (with an identity) or refuse.

    framing -> one normalized path -> route or endpoint -> identity (cookie or bearer)
            -> cross-site rule -> route policy -> websocket rule

The proxy, the ASGI and WSGI middleware and forward-auth (`/verify`) all call `Core`: a rule
changed here changes in every mode at once. Nothing here sends a response; a refusal is a value
(`gateway.core.responses.Refusal`) the adapter renders.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.auth.redirects import safe_next
from gateway.core.authn import Authenticator
from gateway.core.context import RequestContext
from gateway.core.csrf import SAFE_METHODS, allowed_origins, cross_site, host_origins
from gateway.core.ingress import Header, client_view, read_framing
from gateway.core.policy import Outcome, decide, login_location, original_target
from gateway.core.responses import Refusal, wants_html
from gateway.core.routing import (
    BadPath,
    Router,
    normalize_forwarded_uri,
    normalize_path,
    under_prefix,
)
from gateway.mfa import mfa_methods
from gateway.store.base import StoreUnavailable

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.authn")

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
STORE_DOWN = Refusal(503, "store_unavailable", "The session store is unavailable; try again.")
NO_ROUTE = Refusal(404, "not_found", "No route matches this path.")


@dataclass(slots=True)
class Decision:
    """What the core says: `refusal` None means allowed (or, for `ctx.endpoint`, ours to serve).

    `ctx` is None only when the request was refused before it had a path and a route.
    """

    ctx: RequestContext | None
    refusal: Refusal | None = None


class Core:
    """One gateway's decision, built once per config from its runtime and routes."""

    def __init__(self, rt: Runtime, router: Router) -> None:
        config = rt.config
        self.router = router
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.trusted = tuple(config.server.trusted_proxies)
        self.allowed_origins = allowed_origins(
            config.server.public_url, config.server.allowed_origins
        )
        # a host route's app posts its own forms from its own origin: that origin is ours too
        self.route_origins = {
            route.name: self.allowed_origins | host_origins(route.host, config.server.public_url)
            for route in config.routes
            if route.host
        }
        self.oidc = rt.oidc
        self.mfa_everyone = config.mfa.required
        # what a client stepped up may use, as 401 mfa_required names them
        self.mfa_methods = mfa_methods(config)
        self.authn = Authenticator(
            tokens=rt.tokens,
            sessions=rt.sessions,
            cookies=rt.cookies,
            strict=config.session.revocation == "strict",
            users=rt.identities,
            refresh=config.auth.refresh,
            services=rt.services,
            roles=rt.roles,
        )

    async def decide(self, scope: dict) -> Decision:
        """The verdict on one ASGI http or websocket request."""
        headers = scope["headers"]
        view = client_view(scope, self.trusted)
        # websocket upgrades too: two Host headers would let a host route be matched on one
        framing = read_framing(headers)
        if isinstance(framing, str):
            return Decision(None, Refusal(400, "bad_request", f"Refused: {framing}."))
        path = normalize_path(scope.get("raw_path") or scope["path"].encode("utf-8"))
        if isinstance(path, BadPath):
            return Decision(None, Refusal(400, "bad_request", f"Refused: {path.detail}."))
        endpoint = under_prefix(path, self.prefix)
        route = None if endpoint else self.router.match(view.host or None, path)
        if route is None and not endpoint:
            return Decision(None, NO_ROUTE)
        ctx = RequestContext(
            request_id=_request_id(headers, view.trusted),
            path=path,
            view=view,
            route=route,
            endpoint=endpoint,
            framing=framing,
        )
        refused = await self._identify(ctx, headers)
        if refused is not None or endpoint:
            return Decision(ctx, refused)
        method = scope.get("method", "GET")
        websocket = scope["type"] == "websocket"

        # what only a refusal needs, worked out only for one
        def html() -> bool:
            return not websocket and wants_html(method, headers)

        def next_target() -> str:
            target = original_target(scope.get("query_string", b""), path)
            if route.host is not None:
                # a host route: `next` names the host too, so sign-in at the portal lands here
                target = self._absolute(view.scheme, view.host, target)
            return target

        refusal = self.judge(ctx, method, headers, websocket, html, next_target)
        if refusal is None and route.pass_access_token:
            refusal = await self._access_token(ctx)
        return Decision(ctx, refusal)

    async def decide_forwarded(
        self, verify_ctx: RequestContext, method: str, uri: str, host: str, headers: list[Header]
    ) -> Decision:
        """The verdict on the request a front proxy names (forward-auth), as the proxy would reach.

        `verify_ctx` is the check request's own context: its identity is the caller's.
        """
        path = normalize_forwarded_uri(uri)
        if isinstance(path, BadPath):
            return Decision(None, Refusal(403, "bad_request", f"Refused: {path.detail}."))
        route = self.router.match(host or None, path)
        if route is None:
            return Decision(None, Refusal(403, "not_found", "No route matches this path."))
        ctx = RequestContext(
            request_id=verify_ctx.request_id,
            path=path,
            view=verify_ctx.view,
            route=route,
            identity=verify_ctx.identity,
            auth_error=verify_ctx.auth_error,
            used_bearer=verify_ctx.used_bearer,
            set_cookies=verify_ctx.set_cookies,
        )
        if verify_ctx.used_bearer and not route.bearer:
            # the check request itself reads a bearer token; this route takes the cookie only,
            # as the proxy would: identify again from the cookie alone
            ctx.identity, ctx.auth_error, ctx.used_bearer = None, None, False
            refused = await self._identify(ctx, headers)
            if refused is not None:
                return Decision(ctx, refused)

        def html() -> bool:
            # nginx's auth_request turns a redirect into an error: it gets 401 with a Location
            return wants_html(method, headers) and not any(
                k == b"x-original-uri" for k, _ in headers
            )

        def next_target() -> str:
            target = safe_next(uri)
            if route.host is not None:
                target = self._absolute(verify_ctx.view.scheme, host, target)
            return target

        refusal = self.judge(ctx, method, headers, False, html, next_target, forward_auth=True)
        if refusal is None and route.pass_access_token:
            refusal = await self._access_token(ctx)
        return Decision(ctx, refusal)

    def judge(
        self,
        ctx: RequestContext,
        method: str,
        headers: list[Header],
        websocket: bool,
        html: Callable[[], bool],
        next_target: Callable[[], str],
        *,
        forward_auth: bool = False,
    ) -> Refusal | None:
        """Cross-site rule, route policy and websocket rule for an identified request.

        `html` (does the client want a page, not JSON?) and `next_target` (where sign-in
        returns to) are asked only when the answer is a refusal that needs them.
        """
        route = ctx.route
        assert route is not None
        identity = ctx.identity
        # a cookie rides along on cross-site requests; a bearer token never does. Browsers send
        # cookies on cross-site websocket upgrades (a GET): judge those by Origin too
        if (
            identity is not None
            and identity.source == "cookie"
            # a forward-auth check never sees the upgrade (proxies strip Upgrade from it), so
            # there any request that names a foreign Origin is judged as an upgrade could be
            and (
                websocket
                or method not in SAFE_METHODS
                or (forward_auth and any(k == b"origin" for k, _ in headers))
            )
            and cross_site(headers, self.route_origins.get(route.name, self.allowed_origins))
        ):
            return Refusal(
                403, "cross_site", "Cross-site requests with the session cookie are refused."
            )
        verdict = decide(identity, route, method, ctx.view.ip, self.mfa_everyone)
        if verdict.outcome is Outcome.ALLOW:
            if websocket and not route.websocket:
                return Refusal(
                    403, "websocket_refused", "This route does not accept WebSocket upgrades."
                )
            return None
        if verdict.outcome is Outcome.STEP_UP:
            location = login_location(self.public_url, self.prefix, next_target(), "mfa")
            if html():
                return Refusal(302, "mfa_required", "A second factor first.", location=location)
            return Refusal(
                401,
                "mfa_required",
                "This route needs a second factor: complete it at the factor page.",
                ((b"location", location.encode("latin-1")),) if forward_auth else (),
                methods=self.mfa_methods,
            )
        if verdict.outcome is Outcome.LOGIN:
            location = login_location(self.public_url, self.prefix, next_target())
            if html():
                return Refusal(302, "unauthenticated", "Sign in first.", location=location)
            hint = (b"location", location.encode("latin-1")) if forward_auth else None
            return Refusal(
                401,
                "unauthenticated",
                "Sign in, or send a valid bearer token.",
                (_BEARER_CHALLENGE, hint) if hint else (_BEARER_CHALLENGE,),
            )
        if verdict.outcome is Outcome.FORBIDDEN or (
            # a proxy's auth_request passes on 401 and 403 only: a method rule answers 403
            forward_auth and verdict.outcome is Outcome.METHOD
        ):
            return Refusal(403, "forbidden", "You do not have access to this page.", html=html())
        if verdict.outcome is Outcome.METHOD:
            allow = ", ".join(verdict.allow).encode("ascii")
            return Refusal(
                405,
                "method_not_allowed",
                f"This route does not accept {method}.",
                ((b"allow", allow),),
            )
        raise AssertionError(f"unhandled outcome {verdict.outcome}")

    def _absolute(self, scheme: str, host: str, next_target: str) -> str:
        """`next` as a URL on `host` (https when public_url is), for the portal to judge."""
        if not host:
            return next_target
        if self.public_url.startswith("https://"):
            scheme = "https"
        return f"{scheme}://{host}{next_target}"

    async def _access_token(self, ctx: RequestContext) -> Refusal | None:
        """The provider's access token of a signed-in session, for the next hop (none for a
        password user or a service: they have none)."""
        identity = ctx.identity
        if identity is None or identity.source == "service" or not self.oidc:
            return None
        if self.oidc.provider_for(identity.sub) is None:
            return None  # a password user's id: no provider, no store read
        try:
            ctx.access_token = await self.oidc.access_token(identity.sid)
        except StoreUnavailable as exc:
            log.warning("access token unavailable request_id=%s: %s", ctx.request_id, exc)
            metrics.store_error("authn")
            return STORE_DOWN
        return None

    async def _identify(self, ctx: RequestContext, headers: list[Header]) -> Refusal | None:
        try:
            await self.authn.identify(headers, ctx)
        except StoreUnavailable as exc:
            log.warning("session store unavailable request_id=%s: %s", ctx.request_id, exc)
            metrics.store_error("authn")
            return STORE_DOWN
        return None


_BEARER_CHALLENGE = (b"www-authenticate", b'Bearer realm="gateway"')


def _request_id(headers: list[Header], trusted: bool) -> str:
    """A trusted proxy's X-Request-Id, else a new one: 128 random bits as 32 hex digits (a
    uuid4's text without building the UUID, a fifth of its cost)."""
    if trusted:
        for key, value in headers:
            if key == b"x-request-id" and _REQUEST_ID.match(value):
                return value.decode("ascii")
    return os.urandom(16).hex()
