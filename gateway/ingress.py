"""The first step of every request: framing checks, one normalized path, route or endpoint."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from gateway.context import SCOPE_KEY, RequestContext
from gateway.errors import send_error
from gateway.headers import Network, client_view
from gateway.routing import Refusal, Router, encode_path, normalize_path, under_prefix

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def framing_problem(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why the request's body framing is ambiguous (a smuggling vector), or None."""
    # two Host headers: the route may be matched on one and the upstream read the other
    if sum(1 for k, _ in headers if k == b"host") > 1:
        return "more than one Host header"
    lengths = [v for k, v in headers if k == b"content-length"]
    encodings = [v for k, v in headers if k == b"transfer-encoding"]
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding"
    if len(set(lengths)) > 1 or any(b"," in v for v in lengths):
        return "conflicting Content-Length headers"
    if lengths and not lengths[0].strip().isdigit():
        return "invalid Content-Length"
    if encodings and (len(encodings) > 1 or encodings[0].strip().lower() != b"chunked"):
        return "unsupported Transfer-Encoding"
    return None


class Ingress:
    """Pure ASGI: decide client view, request id and normalized path; match a route or refuse."""

    def __init__(self, app, *, router: Router, prefix: str, trusted: Sequence[Network]) -> None:
        self.app = app
        self.router = router
        self.prefix = prefix
        self.trusted = tuple(trusted)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        view = client_view(scope, self.trusted)
        request_id = self._request_id(scope, view.trusted)
        headers = scope["headers"]
        # websocket upgrades too: two Host headers would let a host route be matched on one
        problem = framing_problem(headers)
        if problem is not None:
            await send_error(send, 400, "bad_request", f"Refused: {problem}.")
            return
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = normalize_path(raw_path)
        # a websocket upgrade gets these HTTP answers too (gateway.websocket.RefuseBeforeUpgrade)
        if isinstance(path, Refusal):
            await send_error(send, 400, "bad_request", f"Refused: {path.detail}.")
            return
        endpoint = under_prefix(path, self.prefix)
        route = None if endpoint else self.router.match(view.host or None, path)
        if route is None and not endpoint:
            await send_error(send, 404, "not_found", "No route matches this path.")
            return
        ctx = RequestContext(
            request_id=request_id, path=path, view=view, route=route, endpoint=endpoint
        )
        # the access log, outside this step, finds the context in the scope it passed in
        scope[SCOPE_KEY] = ctx
        # everything downstream (Starlette's router included) sees only the normalized path
        scope = {**scope, "path": path, "raw_path": encode_path(path), SCOPE_KEY: ctx}
        await self.app(scope, receive, send)

    @staticmethod
    def _request_id(scope, trusted: bool) -> str:
        if trusted:
            for key, value in scope["headers"]:
                if key == b"x-request-id" and _REQUEST_ID.match(value):
                    return value.decode("ascii")
        return uuid.uuid4().hex
