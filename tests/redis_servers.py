"""Redis servers and Sentinels of a test's own: `redis-server` on free 127.0.0.1 ports.

Each runs in a folder of its own (a Sentinel rewrites its config file there), saves nothing to
disk and is ended by the test that started it, so no shared Redis is touched or flushed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.conftest import free_port
from tests.services import need

SERVICE = "gateway-test"  # the name the Sentinels monitor the primary under


def need_sentinel() -> None:
    """Skip (or fail, when CI requires "sentinel") unless redis-server can run a Sentinel."""
    need("sentinel", shutil.which("redis-server") is not None, "no redis-server on the PATH")


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `check` (errors count as not yet) until it is true; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds}s")


@dataclass
class RedisProcess:
    """One redis-server (data node or Sentinel) this test started."""

    port: int
    proc: subprocess.Popen
    directory: Path
    password: str | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def client(self, **options) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=2,
            decode_responses=True,
            **options,
        )

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as when its machine is lost."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


def _start(directory: Path, port: int, args: list[str], password: str | None) -> RedisProcess:
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", *args],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = RedisProcess(port, proc, directory, password)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = server.log.read_text(errors="replace") if server.log.exists() else ""
            need("sentinel", False, f"redis-server exited with {proc.returncode}: {log[-500:]}")
        try:
            if server.client().ping():
                return server
        except redis.RedisError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"redis-server on {port} did not answer within 10s")


def start_redis(
    directory: Path, replica_of: int | None = None, password: str | None = None
) -> RedisProcess:
    """A data node, in memory only; a replica of 127.0.0.1:`replica_of` if given."""
    port = free_port()
    args = [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--logfile", str(directory / "redis.log"), "--save", "", "--appendonly", "no",
        # a replica's first sync starts at once, not after the default 5 s wait for others
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    if password is not None:
        args += ["--requirepass", password, "--masterauth", password]
    return _start(directory, port, args, password)


def start_sentinel(
    directory: Path,
    primary_port: int,
    quorum: int,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
    auth_pass: str | None = None,
    password: str | None = None,
) -> RedisProcess:
    """A Sentinel watching the primary on 127.0.0.1:`primary_port` as SERVICE.

    `auth_pass` is the data nodes' password, `password` the Sentinel's own (requirepass).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f'dir "{directory}"',
        f'logfile "{directory / "redis.log"}"',
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
        f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}",
        f"sentinel parallel-syncs {SERVICE} 1",
    ]
    if auth_pass is not None:
        lines.append(f'sentinel auth-pass {SERVICE} "{auth_pass}"')
    if password is not None:
        lines.append(f'requirepass "{password}"')
    config = directory / "sentinel.conf"
    config.write_text("\n".join(lines) + "\n")
    return _start(directory, port, [str(config), "--sentinel"], password)


def primary_port(sentinel: RedisProcess) -> int | None:
    """The port of the primary this Sentinel names now (None: it names none)."""
    address = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
    return int(address[1]) if address else None
