"""The standalone proxy as one ASGI app: access log -> the core's decision -> our endpoints, or
forwarding (websocket upgrades: proxied); lifespan shutdown closes pools, store and users."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from gateway.accesslog import AccessLog
from gateway.config import Config
from gateway.core.routing import Router
from gateway.pipeline import build_pipeline
from gateway.proxy.forward import build_clients, build_forward
from gateway.proxy.websocket import ProxyWebSocket
from gateway.runtime import build_runtime
from gateway.store import Store


class GatewayApp:
    """The whole gateway as one ASGI app; lifespan shutdown closes clients, store and users."""

    def __init__(
        self, config: Config, clock: Callable[[], float] = time.time, store: Store | None = None
    ) -> None:
        self.config = config
        self.runtime = rt = build_runtime(config, clock, store)
        self.clients = build_clients(config)
        forward = build_forward(config, self.clients, rt.nexthop, rt.tracing)
        # HTTP straight to forwarding; websocket upgrades to the proxy that opens the upstream's
        self.app = AccessLog(
            build_pipeline(rt, Router(config.routes), forward, ProxyWebSocket(forward))
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(
        self, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self, close_store: bool = True) -> None:
        """Close upstream connection pools, the store (unless a reload kept it) and the users."""
        for client in self.clients.values():
            await client.aclose()
        if close_store:
            await self.runtime.store.close()
        await self.runtime.identities.close()


def build_app(config: Config, clock: Callable[[], float] = time.time) -> GatewayApp:
    """The ASGI app for a validated config."""
    return GatewayApp(config, clock)
