"""The gateway's own endpoints under auth.prefix: login, logout, me, jwks, health, ready."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.routing import Router as StarletteRouter

from gateway import metrics
from gateway.auth.redirects import safe_next
from gateway.core.context import context_of
from gateway.core.csrf import cross_site
from gateway.core.decide import Core
from gateway.core.responses import SECURITY_HEADERS, render
from gateway.pages import render_login, stylesheet
from gateway.runtime import Runtime
from gateway.sources.base import encodable
from gateway.sources.file import MAX_PASSWORD_BYTES, canonical_username
from gateway.store.base import StoreUnavailable

log = logging.getLogger("gateway.login")

MAX_FORM_BYTES = 16 * 1024
_HEADERS = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}


class Refused(Exception):
    """A request the endpoints answer with an error status."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def json_error(status: int, code: str, detail: str, headers: dict | None = None) -> Response:
    """The gateway's error shape as a Starlette response."""
    return JSONResponse(
        {"error": code, "detail": detail}, status, headers={**_HEADERS, **(headers or {})}
    )


def _wants_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    accept = request.headers.get("accept", "").lower()
    return ctype == "application/json" or (
        "application/json" in accept and "text/html" not in accept
    )


async def _read_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, "payload_too_large", "The request body is too large.")
    return bytes(body)


class Endpoints:
    """A Starlette Router for the endpoints, reading identity from the request context."""

    def __init__(self, rt: Runtime, core: Core) -> None:
        self.rt = rt
        self.core = core
        config = rt.config
        self.prefix = config.auth.prefix
        self.public_url = config.server.public_url
        self.allowed = core.allowed_origins
        self.site = urlsplit(self.public_url).netloc
        base = config.cookie_name
        self.csrf_cookie = base + "_csrf"
        self.csrf_attrs = "Path=/; HttpOnly; SameSite=Strict" + (
            "; Secure" if config.cookie_secure else ""
        )
        p = self.prefix
        self.router = StarletteRouter(
            routes=[
                Route(f"{p}/login", self.login_page, methods=["GET"]),
                Route(f"{p}/login", self.login, methods=["POST"]),
                Route(f"{p}/logout", self.logout, methods=["POST"]),
                Route(f"{p}/me", self.me, methods=["GET"]),
                Route(f"{p}/verify", self.verify, methods=["GET", "HEAD", "POST"]),
                Route(f"{p}/jwks.json", self.jwks, methods=["GET"]),
                Route(f"{p}/health", self.health, methods=["GET"]),
                Route(f"{p}/ready", self.ready, methods=["GET"]),
                Route(f"{p}/static/gateway.css", self.css, methods=["GET"]),
            ],
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.router(scope, receive, send)

    # -- pages -----------------------------------------------------------------------

    def _login_response(
        self, status: int, next_target: str, username: str = "", error: str = ""
    ) -> Response:
        token = secrets.token_urlsafe(32)
        page = render_login(
            prefix=self.prefix,
            site=self.site,
            csrf=token,
            next_target=next_target,
            username=username,
            error=error,
        )
        response = Response(page, status, media_type="text/html", headers=_HEADERS)
        response.headers.append(
            "set-cookie", f"{self.csrf_cookie}={token}; Max-Age=3600; {self.csrf_attrs}"
        )
        return response

    async def login_page(self, request: Request) -> Response:
        """GET: the sign-in form with a fresh CSRF token and the (sanitized) next target."""
        return self._login_response(200, safe_next(request.query_params.get("next")))

    async def css(self, request: Request) -> Response:
        """The stylesheet the pages link to (CSP allows 'self' only)."""
        return Response(
            stylesheet(),
            media_type="text/css",
            headers={"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"},
        )

    # -- login -----------------------------------------------------------------------

    def _same_origin(self, request: Request) -> bool:
        return not cross_site(request.scope["headers"], self.allowed)

    async def _credentials(self, request: Request, as_json: bool) -> tuple[str, str, str]:
        body = await _read_body(request)
        if as_json:
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise Refused(400, "bad_request", "The body is not valid JSON.") from None
            if not isinstance(data, dict):
                raise Refused(400, "bad_request", 'Send {"username", "password"}.')
            username, password = data.get("username"), data.get("password")
            next_target = data.get("next", "/")
        else:
            try:
                fields = dict(
                    parse_qsl(body.decode("utf-8"), max_num_fields=20, keep_blank_values=True)
                )
            except (ValueError, UnicodeDecodeError):
                raise Refused(400, "bad_request", "The form could not be read.") from None
            cookie = request.cookies.get(self.csrf_cookie, "")
            sent = fields.get("csrf", "")
            # login CSRF: a cross-site form cannot read our cookie to copy it into the form
            if not cookie or not sent or not hmac.compare_digest(cookie, sent):
                raise Refused(403, "csrf", "The sign-in form expired; please try again.")
            username, password = fields.get("username"), fields.get("password")
            next_target = fields.get("next", "/")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise Refused(400, "bad_request", "Username and password are required.")
        if not encodable(username) or not encodable(password):
            # JSON may carry lone surrogates ("\ud800"), which no store or hash can take
            raise Refused(400, "bad_request", "Username and password must be valid Unicode.")
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES or len(username) > 256:
            raise Refused(400, "bad_request", "Username or password is too long.")
        return username, password, safe_next(next_target if isinstance(next_target, str) else None)

    async def login(self, request: Request) -> Response:
        """POST: check credentials (form or JSON), start a session, set the cookie."""
        as_json = _wants_json(request)
        next_target = "/"
        username = ""
        try:
            if not self._same_origin(request):
                raise Refused(403, "cross_origin", "Cross-site sign-in is not allowed.")
            username, password, next_target = await self._credentials(request, as_json)
            return await self._login(request, username, password, next_target, as_json)
        except Refused as exc:
            if as_json:
                return json_error(exc.status, exc.code, exc.detail, exc.headers)
            response = self._login_response(exc.status, next_target, username, exc.detail)
            response.headers.update(exc.headers)
            return response
        except StoreUnavailable as exc:
            log.warning("login refused: session store unavailable: %s", exc)
            metrics.store_error("login")
            metrics.login("error")
            return json_error(503, "store_unavailable", "Sign-in is unavailable; try again.")

    async def _login(
        self, request: Request, username: str, password: str, next_target: str, as_json: bool
    ) -> Response:
        rt = self.rt
        ctx = context_of(request.scope)
        name = canonical_username(username)
        address = ctx.view.ip
        wait = await rt.limiter.retry_after(name, address)
        if wait is not None:
            log.info("login locked out user=%r client=%s", name, address)
            metrics.login("locked")
            raise Refused(
                429,
                "too_many_attempts",
                "Too many failed sign-ins; try again later.",
                {"retry-after": str(wait)},
            )
        user = await rt.users.authenticate(username, password)
        if user is None:
            await rt.limiter.failed(name, address)
            log.info("login failed user=%r client=%s", name, address)
            metrics.login("failed")
            raise Refused(401, "invalid_credentials", "Wrong username or password.")
        await rt.limiter.succeeded(name)
        session = await rt.sessions.create(user.id)
        token, claims = rt.tokens.mint_session(user.id, user.roles, session.sid)
        log.info("login ok user=%r client=%s", user.id, address)
        metrics.login("ok")
        ctx.user_for_log = user.id
        headers = dict(_HEADERS)
        if as_json:
            response: Response = JSONResponse(
                {
                    "sub": user.id,
                    "roles": list(user.roles),
                    "exp": claims.exp,
                    "sid": claims.sid,
                    "amr": list(claims.amr),
                },
                headers=headers,
            )
        else:
            headers["location"] = self.public_url + next_target
            response = Response(status_code=303, headers=headers)
        response.headers.append("set-cookie", rt.cookies.set(token))
        response.headers.append("set-cookie", f"{self.csrf_cookie}=; Max-Age=0; {self.csrf_attrs}")
        return response

    # -- session ---------------------------------------------------------------------

    async def logout(self, request: Request) -> Response:
        """POST: revoke the session (or every session with all=true) and clear the cookie."""
        as_json = _wants_json(request)
        if not self._same_origin(request):
            return json_error(403, "cross_origin", "Cross-site sign-out is not allowed.")
        everywhere = request.query_params.get("all") == "true"
        try:
            body = await _read_body(request)
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
        if identity is not None:
            try:
                if everywhere:
                    await self.rt.sessions.revoke_user(identity.sub)
                else:
                    await self.rt.sessions.revoke(identity.sid)
            except StoreUnavailable:
                metrics.store_error("logout")
                return json_error(503, "store_unavailable", "Sign-out is unavailable; try again.")
            log.info("logout user=%r all=%s", identity.sub, everywhere)
        if as_json:
            response = Response(status_code=204, headers=_HEADERS)
        else:
            response = Response(
                status_code=303,
                headers={**_HEADERS, "location": f"{self.public_url}{self.prefix}/login"},
            )
        response.headers.append("set-cookie", self.rt.cookies.clear())
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
            headers=_HEADERS,
        )

    # -- forward auth ----------------------------------------------------------------

    async def verify(self, request: Request) -> Response:
        """Forward-auth for nginx, Traefik and Caddy: the core's verdict on the forwarded request.

        200 with the identity headers, 401 (302 to the login page for a browser behind
        Traefik or Caddy; nginx cannot pass a redirect, it gets 401 with a Location) or 403.
        """
        headers = request.headers
        method = headers.get("x-forwarded-method", "GET").upper()
        # proxies pass client headers into the check: nginx a forged X-Forwarded-Uri, Caddy and
        # Traefik a forged X-Original-URI. Two different targets mean one is the client's: refuse
        targets = {
            v for v in headers.getlist("x-forwarded-uri") + headers.getlist("x-original-uri") if v
        }
        if len(targets) > 1:
            return json_error(403, "bad_request", "Conflicting X-Forwarded-Uri and X-Original-URI.")
        uri = targets.pop() if targets else "/"
        host = headers.get("x-forwarded-host") or headers.get("host") or ""
        decision = await self.core.decide_forwarded(
            context_of(request.scope), method, uri, host, request.scope["headers"]
        )
        if decision.refusal is not None:
            status, raw, body = render(decision.refusal, self.prefix)
            response = Response(body, status)
            response.raw_headers = raw
            return response
        ctx = decision.ctx
        assert ctx is not None
        response = Response(status_code=200, headers=_HEADERS)
        response.raw_headers.extend(self.rt.nexthop.verdict_headers(ctx, method))
        return response

    # -- keys and health -------------------------------------------------------------

    async def jwks(self, request: Request) -> Response:
        """GET: the public keys upstreams use to verify the assertion header."""
        if self.rt.keyring.algorithm == "HS256":
            return json_error(404, "not_found", "HS256 keys are shared secrets and not published.")
        self.rt.keyring.maybe_refresh()
        return JSONResponse(self.rt.keyring.jwks(), headers={"cache-control": "public, max-age=60"})

    async def health(self, request: Request) -> Response:
        """GET: liveness; never touches the store."""
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def ready(self, request: Request) -> Response:
        """GET: readiness: the store answers and a signing key is loaded."""
        try:
            await self.rt.store.ping()
        except StoreUnavailable:
            metrics.store_error("ready")
            return JSONResponse(
                {"status": "not ready", "store": "unavailable"},
                503,
                headers={"cache-control": "no-store"},
            )
        return JSONResponse(
            {"status": "ready", "store": "ok", "key": self.rt.keyring.active.kid},
            headers={"cache-control": "no-store"},
        )
