"""Processes the benchmark starts: each in its own process group, all stopped on exit."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

_STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 30.0) -> None:
    """Block until 127.0.0.1:port accepts connections, or fail with the process's log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {seconds}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def environment(env: dict[str, str | None] | None) -> dict[str, str]:
    """os.environ with `env` laid over it; a None value removes that variable."""
    merged = {**os.environ, **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


def start(
    args: list[str],
    log: Path,
    port: int | None = None,
    env: dict[str, str | None] | None = None,
    cwd=None,
) -> subprocess.Popen:
    """Start a process (own session, output to `log`) and wait for its port."""
    handle = log.open("ab")
    proc = subprocess.Popen(
        args,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=environment(env),
        cwd=cwd,
        start_new_session=True,
    )
    handle.close()
    _STARTED.append(proc)
    if port is not None:
        wait_port(port, proc, log)
    return proc


def run(
    args: list[str],
    log: Path,
    env: dict[str, str | None] | None = None,
    cwd=None,
    stdin: str | None = None,
    timeout: float = 1800,
) -> None:
    """Run a command to its end (own process group, output appended to `log`).

    A failure raises RuntimeError with the log's tail; an error, a timeout or Ctrl-C on the
    way stops the whole group (pip's build backends included).
    """
    handle = log.open("ab")
    proc = subprocess.Popen(
        args,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        env=environment(env),
        cwd=cwd,
        start_new_session=True,
    )
    handle.close()
    _STARTED.append(proc)
    try:
        proc.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    stop(proc)  # anything it left behind in its group
    if proc.returncode != 0:
        raise RuntimeError(f"{args!r} exited with {proc.returncode}:\n{_tail(log)}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc in _STARTED:
        _STARTED.remove(proc)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # workers of a master that exited first (uvicorn, gunicorn, nginx) share its group
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all() -> None:
    """Stop everything still running that this benchmark started, newest first."""
    for proc in reversed(list(_STARTED)):
        stop(proc)


atexit.register(stop_all)


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants."""
    out = [pid]
    i = 0
    while i < len(out):
        try:
            children = Path(f"/proc/{out[i]}/task/{out[i]}/children").read_text().split()
        except OSError:
            children = []
        out.extend(int(c) for c in children)
        i += 1
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, in KiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
