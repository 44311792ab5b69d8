"""A sign-in becomes a session: one sequence for every sign-in method (password, provider).

The session the browser held before is revoked (session fixation: a sign-in never continues
it), a new one is made in the store, the roles are packed (kept in the store when the cookie
cannot hold them), the token is minted and the sign-in is an audit event and a metric.
"""

from __future__ import annotations

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
) -> Begun:
    """Start the session of a user who just signed in; raises StoreUnavailable (nothing is
    half done that a retry would trip on: an unused new session simply expires)."""
    if previous is not None and previous.source == "cookie":
        await rt.sessions.revoke(previous.sid)
        audit.event(
            "session.revoked", user=previous.sub, session=previous.sid, reason="signed_in_again"
        )
    session = await rt.sessions.create(user_id)
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
