"""The uvicorn app factory for `gateway run` and its workers: the config in $GATEWAY_CONFIG."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from gateway.proxy.app import GatewayApp
from gateway.serve.reload import ReloadingApp

CONFIG_ENV = "GATEWAY_CONFIG"


def app_from_env() -> ReloadingApp:
    """uvicorn factory for `gateway run`: the config file in $GATEWAY_CONFIG, reloaded on SIGHUP."""
    from gateway.serve.server import configure_logging

    # a worker spawned by `--workers N` never ran the CLI's logging setup
    configure_logging()
    app = ReloadingApp(
        Path(os.environ[CONFIG_ENV]), lambda config, store: GatewayApp(config, store=store)
    )
    # config, routes and keys live as long as the worker: keep them out of the cyclic GC's
    # full collections (with 10,000 routes each one was a pause that set p99 near 100 ms)
    gc.collect()
    gc.freeze()
    return app
