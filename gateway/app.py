"""Builds the ASGI app from a Config: wires the pieces, nothing else.

ingress -> authenticate -> endpoints (under auth.prefix)
                        -> enforce policy -> forward
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable

from gateway.authn import Authenticate
from gateway.config import Config, load_config
from gateway.context import context_of
from gateway.cookies import CookieJar
from gateway.csrf import RefuseCrossSite, allowed_origins
from gateway.endpoints import Endpoints
from gateway.ingress import Ingress
from gateway.keys import ensure_key
from gateway.limits import LoginLimiter
from gateway.policy import EnforcePolicy
from gateway.proxy import Forward, build_clients
from gateway.routing import Router
from gateway.runtime import Runtime
from gateway.sessions import Sessions
from gateway.store import open_store
from gateway.tokens import Keyring, Tokens
from gateway.users.base import UserBackend

log = logging.getLogger("gateway")
CONFIG_ENV = "GATEWAY_CONFIG"


def build_users(config: Config) -> UserBackend:
    """The credential backend the config names."""
    if config.auth.users == "sql":
        from gateway.users.sql import SqlUsers

        sql = config.auth.sql
        return SqlUsers(
            sql.dsn,
            sql.query,
            sql.roles_query or None,
            allow_weak_hashes=sql.allow_weak_hashes,
            base_dir=config.base_dir,
        )
    from gateway.users.file import FileUsers

    return FileUsers(config.auth.users_file)


def build_runtime(config: Config, clock: Callable[[], float] = time.time) -> Runtime:
    """Keys, tokens, store, sessions, users and limits for one config."""
    ensure_key(config.keys.dir, config.keys.algorithm)
    keyring = Keyring(config.keys, clock)
    tokens = Tokens(keyring, config.server.public_url, config.session.access_ttl, clock)
    store = open_store(config.store.url, config.base_dir)
    return Runtime(
        config=config,
        clock=clock,
        keyring=keyring,
        tokens=tokens,
        store=store,
        sessions=Sessions(store, config.session, clock),
        users=build_users(config),
        cookies=CookieJar(config),
        limiter=LoginLimiter(store, config.login_limits, clock),
    )


class GatewayApp:
    """The whole gateway as one ASGI app; lifespan shutdown closes clients, store and users."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.runtime = rt = build_runtime(config, clock)
        self.clients = build_clients(config)
        router = Router(config.routes)
        endpoints = Endpoints(rt, router)
        forward = Forward(config, self.clients, rt.tokens)
        policy = EnforcePolicy(
            forward, public_url=config.server.public_url, prefix=config.auth.prefix
        )

        guarded = RefuseCrossSite(
            policy,
            allowed=allowed_origins(config.server.public_url, config.server.allowed_origins),
        )

        async def after_authn(scope, receive, send) -> None:
            if context_of(scope).endpoint:
                await endpoints(scope, receive, send)
            else:
                await guarded(scope, receive, send)

        authn = Authenticate(
            after_authn,
            tokens=rt.tokens,
            sessions=rt.sessions,
            cookies=rt.cookies,
            strict=config.session.revocation == "strict",
        )
        self.app = Ingress(
            authn,
            router=router,
            prefix=config.auth.prefix,
            trusted=config.server.trusted_proxies,
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

    async def aclose(self) -> None:
        """Close upstream connection pools, the store and the user backend."""
        for client in self.clients.values():
            await client.aclose()
        await self.runtime.store.close()
        await self.runtime.users.close()


def build_app(config: Config, clock: Callable[[], float] = time.time) -> GatewayApp:
    """The ASGI app for a validated config."""
    return GatewayApp(config, clock)


def app_from_env() -> GatewayApp:
    """uvicorn factory for `gateway run`: the config file named by $GATEWAY_CONFIG."""
    return build_app(load_config(os.environ[CONFIG_ENV]))
