"""GET/HEAD/POST {prefix}/verify: forward-auth for nginx, Traefik and Caddy, deciding nothing.

Pure ASGI, not a Starlette endpoint: a front proxy asks this once for every request it serves,
so the check reads the scope's headers once and sends a prebuilt head, with no Request,
Response or router on the way (the pipeline hands it the request directly).
"""

from __future__ import annotations

import logging

from gateway.core.context import context_of
from gateway.core.decide import Core
from gateway.core.responses import SECURITY_HEADERS, Refusal, render
from gateway.runtime import Runtime

log = logging.getLogger("gateway.verify")

METHODS = ("GET", "HEAD", "POST")
_NOT_ALLOWED = Refusal(
    405,
    "method_not_allowed",
    "This endpoint takes GET, HEAD and POST.",
    ((b"allow", ", ".join(METHODS).encode("ascii")),),
)
_CONFLICT = Refusal(403, "bad_request", "Conflicting X-Forwarded-Uri and X-Original-URI.")
_TWO_METHODS = Refusal(403, "bad_request", "Conflicting X-Forwarded-Method headers.")
_UNNAMED = Refusal(
    403,
    "bad_request",
    "The proxy must send X-Forwarded-Method and X-Forwarded-Uri (or X-Original-URI).",
)
_OK_HEAD = (*SECURITY_HEADERS, (b"content-length", b"0"))


class Verify:
    """The core's verdict on the request a proxy forwards, and the next hop's headers with it."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        self.core = core
        self.prefix = rt.config.auth.prefix
        self.path = f"{self.prefix}/verify"

    async def __call__(self, scope: dict, receive, send) -> None:
        """Forward-auth for nginx, Traefik and Caddy: the core's verdict on the forwarded request.

        200 with the identity headers, 401 (302 to the login page for a browser behind
        Traefik or Caddy; nginx cannot pass a redirect, it gets 401 with a Location) or 403.
        """
        head = scope["method"] == "HEAD"
        if scope["method"] not in METHODS:
            status, headers, body = render(_NOT_ALLOWED, self.prefix)
        else:
            status, headers, body = await self._answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _answer(self, scope: dict) -> tuple[int, list, bytes]:
        methods: set[str] = set()
        targets: set[bytes] = set()
        forwarded_host = host = b""
        for key, value in scope["headers"]:
            if key == b"x-forwarded-method":
                methods.add(value.decode("latin-1").strip().upper())
            elif key in (b"x-forwarded-uri", b"x-original-uri"):
                if value:
                    targets.add(value)
            elif key == b"x-forwarded-host":
                forwarded_host = forwarded_host or value
            elif key == b"host":
                host = host or value
        # proxies pass client headers into the check: nginx a forged X-Forwarded-Uri, Caddy and
        # Traefik a forged X-Original-URI. Two different targets mean one is the client's: refuse
        if len(targets) > 1:
            return render(_CONFLICT, self.prefix)
        # likewise a second method: judged by one, the request might go out with the other
        if len(methods) > 1:
            return render(_TWO_METHODS, self.prefix)
        method = methods.pop() if methods else ""
        if not method or not targets:
            # a proxy that leaves out what it asks about must not get a verdict on a guess
            # (`/`, GET): that would let any URI or method through as if it were those
            log.warning("verify refused: the check names no X-Forwarded-Method or URI")
            return render(_UNNAMED, self.prefix)
        uri = targets.pop().decode("latin-1")
        decision = await self.core.decide_forwarded(
            context_of(scope),
            method,
            uri,
            (forwarded_host or host).decode("latin-1"),
            scope["headers"],
        )
        if decision.refusal is not None:
            return render(decision.refusal, self.prefix)
        ctx = decision.ctx
        assert ctx is not None
        return 200, [*_OK_HEAD, *self.rt.nexthop.verdict_headers(ctx, method)], b""
