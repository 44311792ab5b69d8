"""`gateway demo`: the demo apps, a demo user and the gateway, stopped together on Ctrl-C."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import Config, config_path, load_config
from gateway.sources.file import set_user

DEMO_USERS = (("demo", ("staff",)), ("admin", ("admin", "staff")))


def demo_config(explicit: str | None) -> Config:
    """The config named on the command line, ./gateway.toml, or the packaged demo config."""
    path = config_path(explicit)
    if explicit or path.exists():
        return load_config(path)
    packaged = resources.files("gateway").joinpath("demo.toml")
    with resources.as_file(packaged) as file:
        # the packaged file lives in site-packages: keep its data in the current folder
        return load_config(file, base_dir=Path.cwd())


def _upstream_port(config: Config, route_name: str) -> int | None:
    for route in config.routes:
        if route.name == route_name:
            parts = urlsplit(route.upstream)
            return parts.port or (443 if parts.scheme == "https" else 80)
    return None


def _wait_for(port: int, process: subprocess.Popen, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"demo app on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"demo app on port {port} did not start")


def run_demo(explicit_config: str | None) -> int:
    """Start both demo apps, create the demo users, print how to sign in, serve until Ctrl-C."""
    from gateway.serve.server import serve

    config = demo_config(explicit_config)
    passwords = {}
    for name, roles in DEMO_USERS:
        passwords[name] = secrets.token_urlsafe(9)
        set_user(config.auth.users_file, name, passwords[name], roles)
    children: list[subprocess.Popen] = []
    try:
        for app, route in (("legacy", "legacy"), ("api", "api")):
            port = _upstream_port(config, route)
            if port is None:
                continue
            child = subprocess.Popen(
                [sys.executable, "-m", "gateway.demo", app, "--port", str(port)]
            )
            children.append(child)
            _wait_for(port, child)
        url = config.server.public_url
        print(
            "\n".join(
                [
                    "",
                    f"  Demo gateway: open {url}/",
                    f"  Sign in as demo / {passwords['demo']}   (role staff)",
                    f"          or admin / {passwords['admin']}   (roles admin, staff)",
                    f"  API: {url}/api/public (public), {url}/api/me, {url}/api/admin (admin)",
                    "  Stop with Ctrl-C.",
                    "",
                ]
            ),
            flush=True,
        )
        serve(config, workers=1)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0
