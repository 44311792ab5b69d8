"""GET {prefix}/health, /ready and the stylesheet: what monitors and the pages fetch."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import metrics
from gateway.auth.tokens import Keyring
from gateway.pages import stylesheet
from gateway.store.base import Store, StoreUnavailable


class Health:
    """Liveness, readiness (store and signing key) and the pages' static stylesheet."""

    def __init__(self, store: Store, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring

    async def health(self, request: Request) -> Response:
        """GET: liveness; never touches the store."""
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def ready(self, request: Request) -> Response:
        """GET: readiness: the store answers and a signing key is loaded."""
        try:
            await self.store.ping()
        except StoreUnavailable:
            metrics.store_error("ready")
            return JSONResponse(
                {"status": "not ready", "store": "unavailable"},
                503,
                headers={"cache-control": "no-store"},
            )
        return JSONResponse(
            {"status": "ready", "store": "ok", "key": self.keyring.active.kid},
            headers={"cache-control": "no-store"},
        )

    async def css(self, request: Request) -> Response:
        """The stylesheet the pages link to (CSP allows 'self' only)."""
        return Response(
            stylesheet(),
            media_type="text/css",
            headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"},
        )
