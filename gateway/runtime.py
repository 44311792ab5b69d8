"""The long-lived parts of one running gateway (keys, tokens, store, sessions, users, limits,
service tokens, next-hop headers), built once per config and shared by every step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import audit
from gateway.auth.cookies import CookieJar
from gateway.auth.identities import Identities
from gateway.auth.keys import ensure_key
from gateway.auth.limits import LoginLimiter
from gateway.auth.oidc_users import OidcUsers
from gateway.auth.roles import SessionRoles
from gateway.auth.sealed import Sealer
from gateway.auth.servicetokens import ServiceTokens
from gateway.auth.sessions import Sessions
from gateway.auth.signin import PasswordSignIn
from gateway.auth.tokens import Keyring, Tokens
from gateway.config import Config
from gateway.core.nexthop import NextHop
from gateway.mfa.factors import Factors
from gateway.mfa.pending import PendingSignIns
from gateway.sources import build_users
from gateway.sources.base import UserBackend
from gateway.store import Store, open_store
from gateway.telemetry import Tracing, process_tracing


@dataclass
class Runtime:
    """Config plus the objects built from it: keys, tokens, store, sessions, users, limits,
    sign-in and the next-hop headers."""

    config: Config
    clock: Callable[[], float]
    keyring: Keyring
    tokens: Tokens
    store: Store
    sessions: Sessions
    users: UserBackend
    cookies: CookieJar
    limiter: LoginLimiter
    nexthop: NextHop
    signin: PasswordSignIn
    services: ServiceTokens
    # a big identity's roles, kept in the store when the cookie cannot hold them
    roles: SessionRoles
    # the OpenID Connect providers ([[auth.oidc]]) and their sessions' grants
    oidc: OidcUsers
    # any signed-in user's standing, asked of the source that signed them in
    identities: Identities
    # second factors (sealed in the store) and the sign-ins waiting for one
    factors: Factors
    pending: PendingSignIns
    # the key that seals what the gateway keeps or hands out (keys.dir/sealing.key)
    sealer: Sealer
    # OpenTelemetry, one per process; None while [telemetry] is off
    tracing: Tracing | None = None


def build_runtime(
    config: Config, clock: Callable[[], float] = time.time, store: Store | None = None
) -> Runtime:
    """Keys, tokens, store (or the one given), sessions, users, limits and sign-in for a config."""
    audit.configure(config.audit.file)
    ensure_key(config.keys.dir, config.keys.algorithm)
    keyring = Keyring(config.keys, clock)
    tokens = Tokens(keyring, config.server.public_url, config.session.access_ttl, clock)
    tracing = process_tracing(config)
    if store is None:
        store = open_store(config.store.url, config.base_dir)
        if tracing is not None:
            store = tracing.traced(store, "store")
    users = build_users(config)
    if tracing is not None:
        users = tracing.traced(users, "users")
    limiter = LoginLimiter(store, config.login_limits, clock)
    # one key for everything sealed (OIDC refresh tokens, factor secrets, challenges)
    sealer = Sealer(config.keys.dir)
    oidc = OidcUsers(config, store, sealer, clock)
    return Runtime(
        config=config,
        clock=clock,
        keyring=keyring,
        tokens=tokens,
        store=store,
        sessions=Sessions(store, config.session, clock),
        users=users,
        cookies=CookieJar(config),
        limiter=limiter,
        nexthop=NextHop(config, tokens),
        signin=PasswordSignIn(users, config.auth.users, limiter, oidc.reserved_prefixes()),
        services=ServiceTokens(store, clock),
        roles=SessionRoles(store, clock),
        oidc=oidc,
        identities=Identities(users, oidc),
        factors=Factors(store, sealer, clock),
        pending=PendingSignIns(store, sealer, clock),
        sealer=sealer,
        tracing=tracing,
    )
