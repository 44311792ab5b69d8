"""`from gateway.asgi import GatewayMiddleware`: the ASGI middleware (gateway.middleware.asgi)."""

from gateway.middleware.asgi import GatewayMiddleware, GatewayUser

__all__ = ["GatewayMiddleware", "GatewayUser"]
