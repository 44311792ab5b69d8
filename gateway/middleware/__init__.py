"""The core embedded in someone else's app: what gateway.asgi and gateway.wsgi share.

The wrapped app takes the place of the proxy's forwarding step. The same chain decides
(ingress -> authenticate -> endpoints | cross-site check -> policy), and an allowed request
reaches the app with the identity added, after every client-sent copy of it is removed.

Config: the same gateway.toml, read with `require_upstream=False`: a route may leave out
`upstream` (one that has it is accepted and the upstream ignored, so a file can be shared with
the proxy). `upstream`, `strip_prefix`, `preserve_host` and `timeout` mean nothing here; paths,
`auth`, `roles`, `methods`, `bearer`, `websocket`, `strip_headers` and the identity headers
apply as in the proxy. A path no route matches is 404, as in the proxy: add a `path = "/"`
route to cover the rest of the app.
"""

from __future__ import annotations

import os

from gateway.config import Config, load_config


def middleware_config(config: Config | str | os.PathLike[str]) -> Config:
    """A Config as given, or the gateway.toml at that path read for the middleware."""
    if isinstance(config, Config):
        return config
    return load_config(config, require_upstream=False)
