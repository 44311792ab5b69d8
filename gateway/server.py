"""Serving on uvicorn, and the startup summary printed before it."""

from __future__ import annotations

import importlib.util
import os

from gateway.config import Config


def table(rows: list[list[str]]) -> str:
    """Rows of cells as aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def routes_table(config: Config) -> str:
    """The routes as an aligned text table, in config order."""
    rows = [["NAME", "HOST", "PATH", "AUTH", "ROLES", "METHODS", "UPSTREAM"]]
    for route in config.routes:
        rows.append(
            [
                route.name,
                route.host or "*",
                route.path + (" (strip)" if route.strip_prefix else ""),
                route.auth,
                ",".join(route.roles) or "-",
                ",".join(sorted(route.methods)) if route.methods else "any",
                route.upstream,
            ]
        )
    return table(rows)


def startup_summary(config: Config, workers: int) -> str:
    """What `run` and `demo` print before serving: address, routes, store, keys."""
    from gateway.keys import load_keys

    if config.keys.algorithm == "HS256":
        kids = "HS256 shared secret"
    else:
        kids = ", ".join(
            k.kid for k in load_keys(config.keys.dir) if k.algorithm == config.keys.algorithm
        )
    return "\n".join(
        [
            f"gateway listening on http://{config.server.host}:{config.server.port} "
            f"({workers} worker{'s' if workers != 1 else ''})",
            f"public URL: {config.server.public_url}",
            f"store: {_redact(config.store.url)}    keys: {config.keys.algorithm} [{kids}]",
            routes_table(config),
        ]
    )


def _redact(url: str) -> str:
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def serve(config: Config, workers: int) -> None:
    """Run the gateway on uvicorn until stopped; keys exist before any worker starts."""
    import uvicorn

    from gateway.app import CONFIG_ENV
    from gateway.keys import ensure_key

    ensure_key(config.keys.dir, config.keys.algorithm)
    assert config.source is not None
    os.environ[CONFIG_ENV] = str(config.source)
    print(startup_summary(config, workers), flush=True)
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=config.server.host,
        port=config.server.port,
        workers=workers,
        # forwarded headers are judged by the gateway from trusted_proxies, never by uvicorn
        proxy_headers=False,
        server_header=False,
        # the upstream's Date passes through; a second one from uvicorn would duplicate it
        date_header=False,
        access_log=False,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        lifespan="on",
        timeout_graceful_shutdown=30,
        log_level="info",
    )
