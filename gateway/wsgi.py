"""`from gateway.wsgi import GatewayMiddleware`: the WSGI middleware (gateway.middleware.wsgi)."""

from gateway.middleware.wsgi import GatewayMiddleware

__all__ = ["GatewayMiddleware"]
