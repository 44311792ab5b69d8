"""A Starlette app whose sign-in, sessions and route policy come from the gateway's ASGI middleware.

Run from the repository root, in the venv:

    gateway users add alice --roles admin -c examples/starlette.toml
    uvicorn --app-dir examples --factory starlette_app:create_app --port 8000
    # open http://localhost:8000/

`/` greets whoever is signed in, `/api/me` answers 401 JSON (or sends a browser to sign in)
until you are, `/admin` needs the role "admin" (Starlette's own `@requires` works too, since
the middleware fills `request.user` and `request.auth`). FastAPI: wrap the same way, or
`app.add_middleware(GatewayMiddleware, config="examples/starlette.toml")`.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from gateway.asgi import GatewayMiddleware

CONFIG = Path(__file__).with_name("starlette.toml")
SIGN_OUT = '<form method="post" action="/.auth/logout"><button>Sign out</button></form>'


async def home(request: Request) -> HTMLResponse:
    if not request.user.is_authenticated:
        return HTMLResponse('<p>Hello, stranger. <a href="/.auth/login">Sign in</a></p>')
    return HTMLResponse(f"<p>Hello, {escape(request.user.display_name)}.</p>{SIGN_OUT}")


async def api_me(request: Request) -> JSONResponse:
    identity = request.scope["gateway"].identity
    return JSONResponse(
        {
            "user": identity.sub,
            "roles": list(identity.roles),
            "header": request.headers["x-user-id"],
        }
    )


@requires("admin")
async def admin(request: Request) -> JSONResponse:
    return JSONResponse({"admin": request.user.display_name})


def create_app(config: str | os.PathLike[str] = CONFIG) -> GatewayMiddleware:
    """The Starlette app wrapped whole: lifespan events reach it, then the middleware closes."""
    app = Starlette(routes=[Route("/", home), Route("/api/me", api_me), Route("/admin", admin)])
    return GatewayMiddleware(app, config)
