"""A sign-in becomes a session: one sequence for every sign-in method (password, provider).

The session the browser held before is revoked (session fixation: a sign-in never continues
it), a new one is made in the store, the roles are packed (kept in the store when the cookie
cannot hold them), the token is minted and the sign-in is an audit event and a metric.

Before that, `second_factor_due` says whether the first factor is enough: a user with an
enrolled second factor (or anyone, with `[mfa] required`) goes through a pending sign-in
(gateway.mfa.pending) and the factor page first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import audit, metrics
from gateway.auth.tokens import Claims
from gateway.core.context import Identity
from gateway.store.base import Session

if TYPE_CHECKING:
    from gateway.runtime import Runtime


@dataclass(frozen=True)
class Begun:
    """The new session and the session token for its cookie."""

    session: Session
    token: str
    claims: Claims


async def begin_session(
    rt: Runtime,
    previous: Identity | None,
    *,
    user_id: str,
    roles: tuple[str, ...],
    amr: tuple[str, ...],
    source: str,
    client: str,
    username: str = "",
    typed: str | None = None,
    device: str = "",
) -> Begun:
    """Start the session of a user who just signed in; raises StoreUnavailable (nothing is
    half done that a retry would trip on: an unused new session simply expires)."""
    if previous is not None and previous.source == "cookie":
        await rt.sessions.revoke(previous.sid)
        audit.event(
            "session.revoked", user=previous.sub, session=previous.sid, reason="signed_in_again"
        )
    session = await rt.sessions.create(user_id)
    # what the account page lists beside the session: the browser and the address it began at
    about = json.dumps({"device": device[:300], "address": client}, separators=(",", ":"))
    await rt.store.put_record(
        session_info_key(session.sid), about, session.created, session.expires
    )
    packed, ref = await rt.roles.pack(session.sid, roles, session.expires)
    token, claims = rt.tokens.mint_session(user_id, packed, session.sid, amr, username, ref)
    audit.event(
        "signin.succeeded",
        user=user_id,
        typed=typed,
        source=source,
        amr=amr,
        session=session.sid,
        client=client,
    )
    metrics.login("ok")
    return Begun(session, token, claims)


def session_info_key(sid: str) -> str:
    """The record describing a session for its user (device, address), beside the session."""
    return f"session-info:{sid}"


async def second_factor_due(rt: Runtime, user_id: str) -> tuple[str, ...] | None:
    """After a first factor: None when it is enough; else the user's second factors
    (`()`: none enrolled yet, with `[mfa] required`: enrollment is due)."""
    mfa = rt.config.mfa
    if not (mfa.totp or rt.config.webauthn_on):
        return None
    methods = usable_methods(rt, await rt.factors.methods(user_id))
    if methods:
        return methods
    return () if mfa.required else None


def usable_methods(rt: Runtime, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The enrolled kinds this config takes (recovery only beside a factor it takes)."""
    config = rt.config
    kinds = tuple(
        m
        for m in methods
        if (m == "totp" and config.mfa.totp) or (m == "webauthn" and config.webauthn_on)
    )
    return (*kinds, "recovery") if kinds and "recovery" in methods else kinds
