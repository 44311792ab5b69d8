"""`python -m bench.launch`: the gateway CLI with parts of the hot path switched back.

For the before/after steps in bench/RESULTS.md. BENCH_VARIANT is a comma-separated list:
  httpx | httpx-aiohttp | aiohttp   forward with that client instead of gateway.proxy.client
  nocache                           verify every token in full (no gateway.auth.tokencache)
  pyjwt                             sign assertions with jwt.encode, parse key ids every time
                                    (the same claims; only the signer is PyJWT's)
  noassertcache                     sign an assertion for every request (no
                                    gateway.auth.assertions reuse per session and route)
  nofreeze                          no gc.freeze() after the app is built
  asyncio-h11 | asyncio | h11       uvicorn on asyncio's loop and/or h11, not uvloop/httptools
  uvaccept                          uvloop's own server: one accept per loop iteration
                                    (no gateway.serve.accept)
  nocoalesce                        a response's head and body in two writes (no serve.coalesce)
Only with `--workers 1`: uvicorn's worker processes would import the gateway afresh.
"""

from __future__ import annotations

import gc
import os
import sys


def apply(variant: set[str]) -> None:
    """Switch the named parts back to what the gateway did before."""
    import gateway.auth.keys
    import gateway.auth.tokens
    import gateway.core.authn
    import gateway.proxy.app
    import gateway.proxy.forward
    from bench.transports import TRANSPORTS

    for name, factory in TRANSPORTS.items():
        if name in variant:

            def build_clients(config, factory=factory):
                return {r.upstream: factory(r.upstream) for r in config.routes}

            gateway.proxy.forward.build_clients = build_clients
            gateway.proxy.app.build_clients = build_clients
    if "nocache" in variant:

        class Uncached:
            def __init__(self, tokens) -> None:
                self.verify_session = tokens.verify_session

        gateway.core.authn.VerifiedTokens = Uncached
    if "pyjwt" in variant:
        import jwt

        class PyJWTSigner:
            """PyJWT's general encode, as assertions were signed before the compact signer."""

            def __init__(self, key) -> None:
                self.key = key

            def sign(self, payload: dict) -> str:
                key = self.key
                return jwt.encode(
                    payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid}
                )

        gateway.auth.tokens.Tokens._signer = lambda self, key: PyJWTSigner(key)
        gateway.auth.keys.created_at = gateway.auth.keys.created_at.__wrapped__
    if "noassertcache" in variant:
        import gateway.core.nexthop

        class EveryRequest:
            """A new assertion signed for every request, as before the reuse."""

            def __init__(self, tokens) -> None:
                self.tokens = tokens

            def assertion(self, sid, sub, roles, route, amr, method=None, path=None):
                value = self.tokens.mint_assertion(sub, roles, route, method, path, amr)
                return value.encode("ascii")

        gateway.core.nexthop.AssertionCache = EveryRequest
    server = {}
    if "uvaccept" in variant:
        server["loop"] = "uvloop"
    if "asyncio-h11" in variant or "asyncio" in variant:
        server["loop"] = "asyncio"
    if "asyncio-h11" in variant or "h11" in variant:
        server["http"] = "h11"
    if server:
        import uvicorn

        plain_init = uvicorn.Config.__init__

        def init(self, *args, **kwargs):
            kwargs.update(server)
            plain_init(self, *args, **kwargs)

        uvicorn.Config.__init__ = init
    if "nocoalesce" in variant:
        import gateway.serve.protocol

        gateway.serve.protocol.CoalescingTransport = lambda transport, loop: transport
    if "nofreeze" in variant:
        gc.freeze = lambda: None


if __name__ == "__main__":
    apply({part.strip() for part in os.environ.get("BENCH_VARIANT", "").split(",") if part})
    from gateway.cli import main

    sys.exit(main(sys.argv[1:]))
