"""GET/HEAD/POST {prefix}/verify: forward-auth for nginx, Traefik and Caddy, deciding nothing."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from gateway.core.context import context_of
from gateway.core.decide import Core
from gateway.core.responses import render
from gateway.endpoints.common import HEADERS, json_error
from gateway.runtime import Runtime

log = logging.getLogger("gateway.verify")


class Verify:
    """The core's verdict on the request a proxy forwards, and the next hop's headers with it."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        self.core = core
        self.prefix = rt.config.auth.prefix

    async def verify(self, request: Request) -> Response:
        """Forward-auth for nginx, Traefik and Caddy: the core's verdict on the forwarded request.

        200 with the identity headers, 401 (302 to the login page for a browser behind
        Traefik or Caddy; nginx cannot pass a redirect, it gets 401 with a Location) or 403.
        """
        headers = request.headers
        method = headers.get("x-forwarded-method", "").strip().upper()
        # proxies pass client headers into the check: nginx a forged X-Forwarded-Uri, Caddy and
        # Traefik a forged X-Original-URI. Two different targets mean one is the client's: refuse
        targets = {
            v for v in headers.getlist("x-forwarded-uri") + headers.getlist("x-original-uri") if v
        }
        if len(targets) > 1:
            return json_error(403, "bad_request", "Conflicting X-Forwarded-Uri and X-Original-URI.")
        if not method or not targets:
            # a proxy that leaves out what it asks about must not get a verdict on a guess
            # (`/`, GET): that would let any URI or method through as if it were those
            log.warning("verify refused: the check names no X-Forwarded-Method or URI")
            return json_error(
                403,
                "bad_request",
                "The proxy must send X-Forwarded-Method and X-Forwarded-Uri (or X-Original-URI).",
            )
        uri = targets.pop()
        host = headers.get("x-forwarded-host") or headers.get("host") or ""
        decision = await self.core.decide_forwarded(
            context_of(request.scope), method, uri, host, request.scope["headers"]
        )
        if decision.refusal is not None:
            status, raw, body = render(decision.refusal, self.prefix)
            response = Response(body, status)
            response.raw_headers = raw
            return response
        ctx = decision.ctx
        assert ctx is not None
        response = Response(status_code=200, headers=HEADERS)
        response.raw_headers.extend(self.rt.nexthop.verdict_headers(ctx, method))
        return response
