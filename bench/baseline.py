"""`--baseline REV`: another git revision of this repository, installed into its own venv.

The revision's tree is exported with `git archive` and pip-installed (not editable) into a venv
cached under ~/.cache/gateway-bench/<full sha>/ (reused by later runs; rebuilt when the Python
or the pinned versions differ). Shared dependencies are pinned to the versions the running
Python has, so before and after differ in the gateway's code only. Nothing of that revision is
imported here: it runs as its own `gateway` executable (bench.setups.start_gateway).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import procs

REPO = Path(__file__).resolve().parent.parent
# the baseline's processes must not import this checkout's gateway
CLEAN_ENV: dict[str, str | None] = {"PYTHONPATH": None, "VIRTUAL_ENV": None, "PYTHONHOME": None}


@dataclass
class Baseline:
    """An installed revision: what was asked for, what it is, and its `gateway` executable."""

    rev: str
    sha: str
    short: str
    venv: Path
    pinned: bool = True  # installed with the running Python's dependency versions

    @property
    def gateway(self) -> Path:
        return self.venv / "bin" / "gateway"

    @property
    def label(self) -> str:
        return f"@{self.short}"


def resolve(rev: str, repo: Path = REPO) -> tuple[str, str] | None:
    """(full sha, short sha) of a commit-ish in `repo`, or None when it names no commit."""
    if not rev or rev.startswith("-"):
        return None
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    sha = done.stdout.strip()
    if done.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", sha):
        return None
    short = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", sha],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sha, short


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gateway-bench"


def constraints() -> str:
    """`name==version` of every distribution the running Python has, except the gateway."""
    pins = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version and re.sub(r"[-_.]+", "-", name).lower() != "gateway":
            pins.add(f"{name}=={dist.version}")
    return "\n".join(sorted(pins, key=str.lower)) + "\n"


def _stamp(pins: str) -> dict:
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "constraints": hashlib.sha256(pins.encode()).hexdigest(),
    }


def _installed(directory: Path, stamp: dict) -> dict | None:
    try:
        marker = json.loads((directory / "installed.json").read_text())
    except (OSError, ValueError):
        return None
    venv = directory / "venv"
    if {k: marker.get(k) for k in stamp} != stamp or not (venv / "bin" / "gateway").exists():
        return None
    return marker


def prepare(rev: str, sha: str, short: str, work: Path, progress=print) -> Baseline:
    """The venv with revision `sha` installed: from the cache, else built there now."""
    pins = constraints()
    stamp = _stamp(pins)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    directory = root / sha
    with (root / f"{sha}.lock").open("w") as lock:
        # another bench installing the same revision: wait for it, then reuse its venv
        fcntl.flock(lock, fcntl.LOCK_EX)
        venv = directory / "venv"
        marker = _installed(directory, stamp)
        if marker is not None:
            progress(f"baseline {rev} ({short}): reusing {venv}")
            return Baseline(rev, sha, short, venv, marker.get("pinned", True))
        progress(f"baseline {rev} ({short}): installing into {directory / 'venv'}")
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        source = work / f"baseline-{short}"
        source.mkdir()
        # kept with the venv; a build that failed has no installed.json and is redone next time
        log = directory / "install.log"
        tarball = work / f"baseline-{short}.tar"
        procs.run(["git", "-C", str(REPO), "archive", "-o", str(tarball), sha], log)
        procs.run(["tar", "-x", "-f", str(tarball), "-C", str(source)], log)
        tarball.unlink()
        procs.run([sys.executable, "-m", "venv", str(venv)], log)
        python = str(venv / "bin" / "python")
        pin_file = work / "baseline-constraints.txt"
        pin_file.write_text(pins)
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        pinned = True
        try:
            procs.run([*pip, "-c", str(pin_file), str(source)], log, env=CLEAN_ENV)
        except RuntimeError:
            # that revision needs versions the running Python does not have: take its own
            progress(f"baseline {short}: pinned install failed, installing unpinned (see {log})")
            pinned = False
            procs.run([*pip, str(source)], log, env=CLEAN_ENV)
        where = subprocess.run(
            [python, "-c", "import gateway; print(gateway.__file__)"],
            capture_output=True,
            text=True,
            cwd=directory,
            env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
        ).stdout.strip()
        if not where.startswith(str(venv)):
            raise RuntimeError(f"baseline {short}: its venv imports gateway from {where!r}")
        (directory / "installed.json").write_text(
            json.dumps({**stamp, "sha": sha, "short": short, "pinned": pinned}, indent=2)
        )
        shutil.rmtree(source, ignore_errors=True)
        return Baseline(rev, sha, short, venv, pinned)
