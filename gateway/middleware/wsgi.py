"""WSGI middleware: the gateway's login, sessions and route policy inside a Flask or Django app.

    from gateway.middleware.wsgi import GatewayMiddleware
    app.wsgi_app = GatewayMiddleware(app.wsgi_app, "gateway.toml")   # Flask; or a Config

An allowed request reaches the app with, in its environ:

- `REMOTE_USER`: the user id (what Django's RemoteUserMiddleware and `request.remote_user`
  read); removed for an anonymous caller, whoever set it before;
- `gateway.identity`: the Identity (sub, roles, sid, exp, source) or None;
  `gateway.context`: the whole RequestContext (request id, route, normalized path);
- `HTTP_X_USER_ID`, `HTTP_X_USER_ROLES`, `HTTP_X_GATEWAY_ASSERTION` (as configured), after
  every client-sent header that folds to one of those names (`X-User-Id`, `x_user_id`,
  `X.User.Id`) is removed, with the legacy identity headers the proxy strips too;
- `PATH_INFO` (and `REQUEST_URI`/`RAW_URI` when the server set them) holding the normalized
  path: the path matched is the path the app routes on. Routes and `auth.prefix` are matched
  against the whole path, `SCRIPT_NAME` + `PATH_INFO`, as the browser sees it;
- `HTTP_COOKIE` without the session cookie, `HTTP_AUTHORIZATION` without our bearer token.

How the async core runs under a sync server
-------------------------------------------
The steps (ingress, authenticate, endpoints, policy) are async ASGI callables, and the
session store and user backends are async and may hold connections tied to the event loop
that first used them (Redis, SQL pools). So the middleware owns one private event loop in a
daemon thread, builds the runtime on it, and runs every request's core on it with
`run_coroutine_threadsafe`, while the server's thread waits. Nothing async runs on the
server's threads and nothing blocking runs on the loop:

- The request body is read by the server's thread, never by the loop. The core rarely needs
  it (the login and logout endpoints, 16 KiB at most); when it does, its `receive()` posts a
  request to the waiting thread, which reads `wsgi.input` and hands the chunk back.
- The core's own answers (login page, JSON, redirects, 401/403/404) are small and are
  collected whole, then returned.
- An allowed request leaves the loop: the app is called on the server's thread with
  `wsgi.input` untouched (the steps before it never read the body), and its response
  iterable is returned as is, so it streams as the app yields it and its `close()` is called
  by the server. Only `start_response` is wrapped, to add a re-issued session cookie and to
  drop any Set-Cookie from the app for the gateway's own cookie.
- Pre-forking servers (gunicorn --preload, uWSGI) import the app before they fork, and a
  thread does not survive a fork. So the loop and runtime start lazily, on the first request
  in each process; the config is read and the signing key made at construction, so errors
  show at startup and every worker shares one key.
- `close()` closes the store and users on the loop, then stops it. It is registered with
  `atexit`, but by then Python has shut the thread pools some backends close through (the
  SQLite store), so a server with a shutdown hook should call it there (gunicorn's
  `worker_exit`); otherwise the process's end closes the files and sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from gateway.auth.keys import ensure_key
from gateway.config import Config
from gateway.core.context import RequestContext, context_of
from gateway.core.nexthop import NextHop, drop_cookie
from gateway.core.routing import Router, encode_path
from gateway.middleware import middleware_config
from gateway.pipeline import build_pipeline
from gateway.runtime import Runtime, build_runtime

log = logging.getLogger("gateway.wsgi")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

CHUNK = 64 * 1024
_ALLOWED = "gateway.wsgi.allowed"  # a list the last step appends to, shared through scope copies
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class _Handoff:
    """The last step, on the loop: note that the policy allowed the request, and what to add."""

    def __init__(self, nexthop: NextHop) -> None:
        self.nexthop = nexthop

    async def __call__(self, scope, receive, send) -> None:
        ctx = context_of(scope)
        scope[_ALLOWED].append((ctx, self.nexthop.identity_headers(ctx, scope["method"])))


class _Core:
    """The runtime and the chain, built on the private loop and used only from it."""

    def __init__(self, config: Config) -> None:
        self.runtime: Runtime = build_runtime(config)
        self.nexthop = self.runtime.nexthop
        self.chain = build_pipeline(self.runtime, Router(config.routes), _Handoff(self.nexthop))

    async def aclose(self) -> None:
        await self.runtime.store.close()
        await self.runtime.identities.close()


class _LoopThread:
    """One event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="gateway-wsgi-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        try:
            self.submit(self.loop.shutdown_default_executor()).result(timeout=30)
        except RuntimeError:
            pass  # interpreter exit: no new thread may start to shut the pool down
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


class _Body:
    """The request body as ASGI messages, read from wsgi.input by the server's thread."""

    def __init__(self, environ: Environ) -> None:
        self.stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH", "")
        self.remaining: int | None = int(length) if length.isdigit() else None
        if self.remaining is None and not environ.get("wsgi.input_terminated"):
            self.remaining = 0  # no length and not chunked: no body (PEP 3333)
        self.done = False
        self.touched = False

    def next_message(self) -> dict:
        self.touched = True
        if self.done:
            return {"type": "http.disconnect"}
        size = CHUNK if self.remaining is None else min(CHUNK, self.remaining)
        chunk = self.stream.read(size) if size else b""
        if self.remaining is not None:
            if size and not chunk:
                self.done = True  # the client went away before the whole body came
                return {"type": "http.disconnect"}
            self.remaining -= len(chunk)
        more = bool(chunk) and self.remaining != 0
        self.done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}


def _resolve(future: asyncio.Future, message: dict) -> None:
    if not future.done():
        future.set_result(message)


def scope_from_environ(environ: Environ) -> dict:
    """An ASGI http scope for the core, from a WSGI environ (full path: SCRIPT_NAME + PATH_INFO)."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key
        else:
            continue
        headers.append((name.replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")))
    # PEP 3333 paths are the request's bytes read as latin-1; quoting them again lets ingress
    # refuse %00, control characters and invalid UTF-8 as it does for the proxy
    path_bytes = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1")
    raw_path = quote(path_bytes or b"/", safe=_PATH_SAFE).encode("ascii")
    client = None
    if environ.get("REMOTE_ADDR"):
        client = (environ["REMOTE_ADDR"], int(environ.get("REMOTE_PORT") or 0))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": environ.get("SERVER_PROTOCOL", "HTTP/1.1").partition("/")[2] or "1.1",
        "method": environ["REQUEST_METHOD"].upper(),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": raw_path.decode("ascii"),
        "raw_path": raw_path,
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0)),
    }


def _wsgi_str(text: str) -> str:
    """A decoded str as PEP 3333 carries it: its UTF-8 bytes read as latin-1."""
    return text.encode("utf-8").decode("latin-1")


class GatewayMiddleware:
    """Wrap a WSGI app: `auth.prefix` endpoints, authentication and route policy before it."""

    def __init__(self, app: WSGIApp, config: Config | str | os.PathLike[str]) -> None:
        self.app = app
        self.config = middleware_config(config)
        ensure_key(self.config.keys.dir, self.config.keys.algorithm)
        self._lock = threading.Lock()
        self._pid = 0
        self._loop: _LoopThread | None = None
        self._core: _Core | None = None
        self._closed = False
        atexit.register(self.close)

    # -- the private loop ------------------------------------------------------------

    def _started(self) -> tuple[_LoopThread, _Core]:
        pid = os.getpid()
        loop, core = self._loop, self._core
        if self._pid == pid and loop is not None and core is not None:
            return loop, core
        with self._lock:
            if self._closed:
                raise RuntimeError("GatewayMiddleware is closed")
            if self._pid != pid or self._loop is None or self._core is None:
                # first request in this process (a forked worker inherits no running thread)
                loop = _LoopThread()
                self._core = loop.submit(_build(self.config)).result()
                self._loop, self._pid = loop, pid
            return self._loop, self._core

    def close(self) -> None:
        """Close the store and user backend and stop the private loop (idempotent)."""
        with self._lock:
            loop, core = self._loop, self._core
            self._closed, self._loop, self._core = True, None, None
            if loop is None or core is None or self._pid != os.getpid():
                return
        try:
            loop.submit(core.aclose()).result(timeout=30)
        except RuntimeError as exc:
            # at interpreter exit the thread pools the backends close through are shut
            # already; the process's end closes their files and sockets instead
            log.debug("gateway middleware closed without its backends: %s", exc)
        finally:
            loop.stop()

    # -- a request -------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        loop, core = self._started()
        scope = scope_from_environ(environ)
        allowed: list[tuple[RequestContext, list[tuple[bytes, bytes]]]] = []
        scope[_ALLOWED] = allowed
        messages: list[dict] = []
        reads: queue.SimpleQueue[asyncio.Future | None] = queue.SimpleQueue()
        body = _Body(environ)

        async def receive() -> dict:
            future = asyncio.get_running_loop().create_future()
            reads.put(future)
            return await future

        async def send(message: dict) -> None:
            messages.append(message)

        async def run() -> None:
            try:
                await core.chain(scope, receive, send)
            finally:
                reads.put(None)

        done = loop.submit(run())
        # serve the core's body reads on this thread until it has decided
        while (future := reads.get()) is not None:
            loop.loop.call_soon_threadsafe(_resolve, future, body.next_message())
        done.result()
        if not allowed:
            return _respond(messages, start_response)
        if body.touched:
            raise RuntimeError("a step before the app read the request body")
        ctx, added = allowed[0]
        return self._call_app(environ, start_response, ctx, added, core.nexthop)

    def _call_app(
        self,
        environ: Environ,
        start_response: StartResponse,
        ctx: RequestContext,
        added: list[tuple[bytes, bytes]],
        headers: NextHop,
    ) -> Iterable[bytes]:
        route = ctx.route
        assert route is not None
        env = {}
        for key, value in environ.items():
            if key.startswith("HTTP_") and headers.removed(route, key[5:].encode("latin-1")):
                continue
            env[key] = value
        env.pop("REMOTE_USER", None)
        cookie = env.pop("HTTP_COOKIE", None)
        if cookie:
            kept = drop_cookie(cookie.encode("latin-1"), headers.cookie_names)
            if kept:
                env["HTTP_COOKIE"] = kept.decode("latin-1")
        if ctx.used_bearer:
            env.pop("HTTP_AUTHORIZATION", None)
        for name, value in added:
            env["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode(
                "latin-1"
            )
        if ctx.identity is not None:
            env["REMOTE_USER"] = _wsgi_str(ctx.identity.sub)
        env["gateway.identity"] = ctx.identity
        env["gateway.context"] = ctx
        script = environ.get("SCRIPT_NAME", "")
        path = _wsgi_str(ctx.path)
        if script and not (path == script or path.startswith(script.rstrip("/") + "/")):
            # the normalized path left the app's mount point (`/app/../x`): not this app's
            return _respond(_not_found(), start_response)
        env["PATH_INFO"] = path[len(script) :] if script else path
        target = encode_path(ctx.path).decode("ascii")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        for key in ("REQUEST_URI", "RAW_URI"):
            if key in env:
                env[key] = target

        set_cookies = ctx.set_cookies

        def start(status: str, response_headers: list, exc_info: Any = None) -> Any:
            kept = [
                (k, v)
                for k, v in response_headers
                if k.lower() != "set-cookie" or not headers.sets_our_cookie(v.encode("latin-1"))
            ]
            kept.extend(("Set-Cookie", c) for c in set_cookies)
            return start_response(status, kept, exc_info)

        return self.app(env, start)


async def _build(config: Config) -> _Core:
    return _Core(config)


def _not_found() -> list[dict]:
    body = b'{"error": "not_found", "detail": "No route matches this path."}'
    return [
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/json")],
        },
        {"type": "http.response.body", "body": body},
    ]


def _respond(messages: list[dict], start_response: StartResponse) -> list[bytes]:
    """Send the core's collected ASGI response through start_response."""
    start = next(m for m in messages if m["type"] == "http.response.start")
    status = start["status"]
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
    start_response(f"{status} {reason}", headers)
    return [b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")]
