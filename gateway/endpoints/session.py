"""POST {prefix}/logout and GET {prefix}/me: ending the caller's session and describing it."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import audit, metrics
from gateway.core.context import context_of
from gateway.core.decide import Core
from gateway.endpoints.common import (
    HEADERS,
    Refused,
    json_error,
    read_body,
    same_origin,
    wants_json,
)
from gateway.mfa.pending import pending_cookie
from gateway.runtime import Runtime
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.login")


class CurrentSession:
    """Sign-out and the who-am-I answer, both from the identity the core put in the context."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        self.prefix = rt.config.auth.prefix
        self.public_url = rt.config.server.public_url
        self.public_scheme = urlsplit(self.public_url).scheme
        self.allowed = core.allowed_origins
        self.pending_cookie, self.pending_attrs = pending_cookie(rt.config)

    async def logout(self, request: Request) -> Response:
        """POST: revoke the session (or every session with all=true) and clear the cookie."""
        as_json = wants_json(request)
        view = context_of(request.scope).view
        # a page on the host it signs out of (a host route, a hand-off host) is same-origin too
        own = {f"{scheme}://{view.host}" for scheme in (view.scheme, self.public_scheme)}
        if not same_origin(request, self.allowed | own if view.host else self.allowed):
            return json_error(403, "cross_origin", "Cross-site sign-out is not allowed.")
        everywhere = request.query_params.get("all") == "true"
        try:
            body = await read_body(request)
        except Refused as exc:
            return json_error(exc.status, exc.code, exc.detail)
        if as_json and body:
            try:
                data = json.loads(body)
                everywhere = everywhere or (isinstance(data, dict) and data.get("all") is True)
            except (ValueError, UnicodeDecodeError):
                return json_error(400, "bad_request", "The body is not valid JSON.")
        elif body:
            fields = dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=20))
            everywhere = everywhere or fields.get("all") == "true"
        identity = context_of(request.scope).identity
        provider_logout = ""
        # a sign-in half done (password given, second factor due) ends with the sign-out too
        pending = request.cookies.get(self.pending_cookie, "")
        if pending:
            try:
                await self.rt.pending.finish(pending)
            except StoreUnavailable:
                metrics.store_error("logout")
                return json_error(503, "store_unavailable", "Sign-out is unavailable; try again.")
        # a service token has no session to end: it ends with `gateway tokens revoke`
        if identity is not None and identity.source != "service":
            try:
                if self.rt.oidc:
                    # end_session = true: the browser goes on to sign out at the provider too
                    provider_logout = await self.rt.oidc.end_session_url(
                        identity.sid, f"{self.public_url}{self.prefix}/login"
                    )
                    await self.rt.oidc.forget(identity.sid)
                if everywhere:
                    await self.rt.sessions.revoke_user(identity.sub)
                else:
                    await self.rt.sessions.revoke(identity.sid)
            except StoreUnavailable:
                metrics.store_error("logout")
                return json_error(503, "store_unavailable", "Sign-out is unavailable; try again.")
            log.info("logout user=%r all=%s", identity.sub, everywhere)
            audit.event(
                "signout",
                user=identity.sub,
                session=identity.sid,
                all=everywhere,
                client=context_of(request.scope).view.ip,
            )
        if as_json:
            response = Response(status_code=204, headers=HEADERS)
        else:
            location = provider_logout or f"{self.public_url}{self.prefix}/login"
            response = Response(status_code=303, headers={**HEADERS, "location": location})
        # on a hand-off host the cookie is host-only: only a host-only clear removes it
        response.headers.append("set-cookie", self.rt.cookies.clear(view.host or None))
        if pending:
            response.headers.append(
                "set-cookie", f"{self.pending_cookie}=; Max-Age=0; {self.pending_attrs}"
            )
        return response

    async def me(self, request: Request) -> Response:
        """GET: who the cookie or bearer token says the caller is."""
        identity = context_of(request.scope).identity
        if identity is None:
            return json_error(401, "unauthenticated", "No valid session.")
        return JSONResponse(
            {
                "sub": identity.sub,
                "roles": list(identity.roles),
                "exp": int(identity.exp),
                "sid": identity.sid,
                "amr": list(identity.amr),
            },
            headers=HEADERS,
        )
