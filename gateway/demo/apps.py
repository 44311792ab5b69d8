"""Two demo upstreams: a "legacy" HTML app that greets X-User-Id, and a JSON API."""

from __future__ import annotations

import html

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Legacy intranet</title>
<style>
body {{ font: 16px/1.5 Georgia, serif; background: #fdf6e3; color: #333; margin: 3rem auto;
       max-width: 40rem; padding: 0 1rem; }}
h1 {{ color: #6c4f00; }} .who {{ background: #eee8d5; padding: .75rem 1rem; border-radius: 6px; }}
button {{ font: inherit; padding: .4rem 1rem; }}
</style></head>
<body>
<h1>Legacy intranet</h1>
<p class="who">Hello, <strong id="user">{user}</strong>!
Your roles: <span id="roles">{roles}</span></p>
<p>This app has no login of its own: it believes the <code>X-User-Id</code> header, which only
the gateway can set.</p>
<p><a href="/api/public">Public API</a> &middot; <a href="/api/me">API: me</a> &middot;
<a href="/api/admin">Admin API (role admin)</a></p>
<form method="post" action="/.auth/logout"><button type="submit">Sign out</button></form>
</body></html>
"""


async def legacy_home(request: Request) -> HTMLResponse:
    user = request.headers.get("x-user-id")
    if not user:
        return HTMLResponse("<h1>Who are you?</h1><p>No X-User-Id header.</p>", 401)
    roles = request.headers.get("x-user-roles", "") or "none"
    return HTMLResponse(PAGE.format(user=html.escape(user), roles=html.escape(roles)))


def legacy_app() -> Starlette:
    """The legacy app: every path greets the user the gateway names."""
    return Starlette(routes=[Route("/{path:path}", legacy_home, methods=["GET", "POST"])])


async def api_public(request: Request) -> JSONResponse:
    return JSONResponse({"message": "public data, no login needed"})


async def api_me(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "user": request.headers.get("x-user-id"),
            "roles": [r for r in request.headers.get("x-user-roles", "").split(",") if r],
        }
    )


async def api_admin(request: Request) -> JSONResponse:
    return JSONResponse({"message": "admin data", "user": request.headers.get("x-user-id")})


def api_app() -> Starlette:
    """The JSON API: /api/public for anyone, /api/me for users, /api/admin for role admin."""
    return Starlette(
        routes=[
            Route("/api/public", api_public),
            Route("/api/me", api_me),
            Route("/api/admin", api_admin),
        ]
    )
