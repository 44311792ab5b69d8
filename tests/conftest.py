"""Fixtures that start real things on 127.0.0.1: a recording upstream and the gateway process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.sources.file import set_user
from tests.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parent.parent
USERS = {
    "alice": ("alice-password-1", ("staff",)),
    "bob": ("bob-password-1", ("admin", "staff")),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound and released)."""
    return free_port()


def wait_port(port: int, proc: subprocess.Popen | None = None, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds}s")


def standard_routes(upstream: str, dead: str) -> str:
    return textwrap.dedent(
        f"""
        [[routes]]
        name = "site"
        path = "/"
        upstream = "{upstream}"
        auth = "public"

        [[routes]]
        name = "app"
        path = "/app"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "opt"
        path = "/opt"
        upstream = "{upstream}"
        auth = "optional"

        [[routes]]
        name = "admin"
        path = "/admin"
        upstream = "{upstream}"
        auth = "required"
        roles = ["admin"]

        [[routes]]
        name = "readonly"
        path = "/readonly"
        upstream = "{upstream}"
        auth = "required"
        methods = ["GET"]

        [[routes]]
        name = "strip"
        path = "/strip"
        upstream = "{upstream}/base"
        auth = "required"
        strip_prefix = true

        [[routes]]
        name = "dead"
        path = "/dead"
        upstream = "{dead}"
        auth = "public"

        [[routes]]
        name = "slow"
        path = "/slow"
        upstream = "{upstream}"
        auth = "public"
        timeout = "1s"

        [[routes]]
        name = "cookies"
        path = "/cookies"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "upload"
        path = "/upload"
        upstream = "{upstream}"
        auth = "required"

        [[routes]]
        name = "download"
        path = "/download"
        upstream = "{upstream}"
        auth = "required"
        """
    )


def write_config(
    directory: Path, port: int, routes: str, extra: str = "", store: str | None = None
) -> Path:
    """A gateway.toml in `directory` listening on `port`; `extra` adds or overrides tables."""
    store_url = store or "sqlite:///data/gateway.db"
    sections = {
        "server": f'listen = "127.0.0.1:{port}"\npublic_url = "http://localhost:{port}"\n'
        # each test gateway gets an admin (metrics) port of its own, not the shared default
        f'admin_listen = "127.0.0.1:{free_port()}"',
        "auth": 'users_file = "users.toml"',
        "keys": 'dir = "keys"',
        "store": f'url = "{store_url}"',
    }
    body = []
    extra_tables = {}
    current = None
    for line in textwrap.dedent(extra).splitlines():
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[] ")
            extra_tables[current] = []
        elif current is not None:
            extra_tables[current].append(line)
    for name, text in sections.items():
        lines = text.splitlines()
        for override in extra_tables.pop(name, []):
            key = override.split("=", 1)[0].strip()
            lines = [line for line in lines if line.split("=", 1)[0].strip() != key]
            if override.strip():
                lines.append(override)
        body.append(f"[{name}]\n" + "\n".join(lines))
    for name, lines in extra_tables.items():
        body.append(f"[{name}]\n" + "\n".join(lines))
    path = directory / "gateway.toml"
    path.write_text("\n\n".join(body) + "\n" + routes)
    return path


@dataclass
class Gateway:
    """A gateway process started from a config file, with its log and helpers."""

    url: str
    port: int
    config: Path
    directory: Path
    proc: subprocess.Popen
    log: Path

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, trust_env=False, **kwargs)

    def login(self, user: str, password: str | None = None) -> httpx.Client:
        """A client holding a session cookie for the user (JSON login)."""
        client = self.client()
        password = password or USERS[user][0]
        response = client.post("/.auth/login", json={"username": user, "password": password})
        assert response.status_code == 200, response.text
        return client

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_gateway(
    config: Path, port: int, args: tuple[str, ...] = (), env: dict | None = None
) -> Gateway:
    log = config.parent / f"gateway-{port}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=config.parent,
        env={**os.environ, **(env or {})},
    )
    try:
        wait_port(port, proc)
    except RuntimeError:
        handle.close()
        raise RuntimeError("gateway did not start:\n" + log.read_text(errors="replace")) from None
    return Gateway(f"http://127.0.0.1:{port}", port, config, config.parent, proc, log)


def add_users(users_file: Path, users: dict | None = None) -> None:
    for name, (password, roles) in (users or USERS).items():
        set_user(users_file, name, password, roles)


def make_gateway(
    directory: Path,
    routes: str,
    extra: str = "",
    users: dict | None = USERS,
    store: str | None = None,
    args: tuple[str, ...] = (),
    env: dict | None = None,
) -> Gateway:
    """A gateway started from a config written in `directory`, on a free port.

    `routes` and `extra` are TOML as write_config takes them; `users` go into users.toml
    (None: no users file at all); `args` follow `gateway run`, `env` adds to the environment.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(directory, port, routes, extra, store)
    if users:
        add_users(directory / "users.toml", users)
    return start_gateway(config, port, args, env)


class GatewayFactory:
    """Starts gateways (make_gateway's arguments) and stops every one it started."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self.started: list[Gateway] = []

    def __call__(self, directory: Path | None = None, **options) -> Gateway:
        """A running gateway; its directory is a fresh temporary one unless given."""
        gateway = make_gateway(directory or self._tmp.mktemp("gw"), **options)
        self.started.append(gateway)
        return gateway

    def stop_all(self) -> None:
        for gateway in reversed(self.started):
            gateway.stop()
        self.started.clear()


@pytest.fixture
def gateway_factory(tmp_path_factory) -> Iterator[GatewayFactory]:
    """Start gateways in a test; each is stopped when the test ends (stopping early is fine).

    Module- and session-scoped fixtures call make_gateway and stop it after their yield.
    """
    factory = GatewayFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream(slow_seconds=3.0)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream) -> Iterator[Gateway]:
    routes = standard_routes(upstream.url, f"http://127.0.0.1:{closed_port()}")
    gw = make_gateway(tmp_path_factory.mktemp("gw"), routes)
    yield gw
    gw.stop()
