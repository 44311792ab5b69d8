"""An in-process gateway on a thread, for tests that drive time through an injectable clock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import uvicorn

from gateway.config import Config
from gateway.proxy.app import build_app


@dataclass
class FakeClock:
    """Unix time that moves only when a test says so."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InProcessGateway:
    """uvicorn.Server serving build_app(config, clock) on 127.0.0.1 in a background thread."""

    def __init__(self, config: Config, clock: FakeClock) -> None:
        self.config = config
        self.clock = clock
        self.app = build_app(config, clock)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=config.server.port,
                proxy_headers=False,
                lifespan="on",
                log_level="warning",
            )
        )
        self.url = f"http://127.0.0.1:{config.server.port}"
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessGateway:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("in-process gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, trust_env=False, **kwargs)
