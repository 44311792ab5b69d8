"""GET {prefix}/jwks.json: the public keys upstreams verify the assertion header with."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.tokens import Keyring
from gateway.endpoints.common import json_error


class Keys:
    """The keyring's public half, as a JSON Web Key Set."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def jwks(self, request: Request) -> Response:
        """GET: the public keys upstreams use to verify the assertion header."""
        if self.keyring.algorithm == "HS256":
            return json_error(404, "not_found", "HS256 keys are shared secrets and not published.")
        self.keyring.maybe_refresh()
        return JSONResponse(self.keyring.jwks(), headers={"cache-control": "public, max-age=60"})
