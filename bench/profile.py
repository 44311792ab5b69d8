"""The `profile` section: where one worker's CPU goes, sampled by py-spy while wrk runs.

py-spy (`pip install -e '.[bench]'`) samples the 1-worker EdDSA gateway at 64 connections
(and, with `--baseline`, the baseline's twin right after it, under the same load), in
`--rounds` interleaved rounds, and writes the collapsed stacks. Each sample goes to the category of its innermost frame that belongs to
one (json.dumps called by the access log counts as the access log; the access log's own call
of the rest of the chain does not take the rest), so the shares add up to 100% of the samples
in which the process ran Python code: py-spy without `--idle` leaves out the samples where the
event loop waited for the network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# (category, substrings of a frame "function (path:line)"); a frame takes the first that matches
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "upstream assertion (mint, sign, cache)",
        (
            "gateway/auth/assertions.py",
            "mint_assertion (gateway/auth/tokens.py",
            "sign_assertion (gateway/auth/tokens.py",
            "_CompactSigner.sign (gateway/auth/tokens.py",
            "sign (jwt/",
        ),
    ),
    ("token verify and cache", ("gateway/auth/tokens.py", "gateway/auth/tokencache.py", "jwt/")),
    ("access log (record, JSON, write)", ("gateway/accesslog.py",)),
    ("metrics", ("gateway/metrics.py", "prometheus_client/")),
    ("routing and path normalization", ("gateway/core/routing.py",)),
    ("upstream headers (next hop)", ("gateway/core/nexthop.py",)),
    ("identity (authn, sessions)", ("gateway/core/authn.py", "gateway/auth/")),
    ("decision (ingress, policy, pipeline)", ("gateway/core/", "gateway/pipeline.py")),
    ("upstream client (pool, connection, parse)", ("gateway/proxy/client/",)),
    ("forwarding (proxy)", ("gateway/proxy/",)),
    ("HTTP server (uvicorn, serve)", ("uvicorn/", "gateway/serve/", "httptools/")),
)
OTHER = "other (event loop, asyncio, interpreter)"
RATE = 250  # samples per second: one per 4 ms that the process runs Python code


def category_of(frame: str) -> str | None:
    """The category one frame belongs to, or None."""
    for name, patterns in CATEGORIES:
        if any(p in frame for p in patterns):
            return name
    return None


def categorize(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """Samples per category and per leaf function, and the total, from py-spy's raw output."""
    by_category: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # py-spy --subprocesses names the process first: not a frame of its code
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        label = OTHER
        for frame in reversed(frames):
            found = category_of(frame)
            if found is not None:
                label = found
                break
        by_category[label] += count
        # the leaf without its line number: one row per function
        if frames:
            head, _, where = frames[-1].partition(" (")
            by_leaf[f"{head} ({where.rsplit(':', 1)[0]})"] += count
        else:
            by_leaf["(no Python frame: the interpreter or a C extension)"] += count
    return by_category, by_leaf, total


def have_py_spy() -> str | None:
    """py-spy next to the running Python, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def record(pid: int, out: Path, seconds: float, load: Callable[[], None]) -> str:
    """Sample `pid` (and its children) for `seconds` while `load()` runs; the raw stacks."""
    spy = have_py_spy()
    if spy is None:
        raise RuntimeError("py-spy is missing: pip install -e '.[bench]'")
    args = [spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(RATE)]
    args += ["--format", "raw", "-o", str(out), "--nonblocking", "--subprocesses"]
    spy_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    _, err = spy_proc.communicate(timeout=seconds + 60)
    loader.join()
    if spy_proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
    return out.read_text()


def cpu_per_request(samples: int, requests: float) -> float:
    """Microseconds of the process's CPU per request: its samples over the requests served
    while they were taken (py-spy samples only while the process runs, RATE a second)."""
    if not requests:
        return float("nan")
    return samples / RATE / requests * 1e6


def table(
    profiles: dict[str, tuple[Counter[str], Counter[str], int]], per_request: dict[str, float]
) -> list[list[str]]:
    """Rows: each category's share of the samples and its CPU microseconds per request."""
    names = list(profiles)
    rows = [["where the CPU goes (1w EdDSA, c=64)", *[f"{n}: % (µs/request)" for n in names]]]
    for label in [c for c, _ in CATEGORIES] + [OTHER]:
        cells = []
        for name in names:
            by_category, _, total = profiles[name]
            share = by_category[label] / total if total else float("nan")
            cells.append(f"{100 * share:.1f} ({share * per_request[name]:.1f})")
        rows.append([label, *cells])
    rows.append(["all", *[f"100 ({per_request[n]:.1f})" for n in names]])
    rows.append(["samples", *[str(profiles[n][2]) for n in names]])
    return rows


def top_leaves(
    name: str, profile: tuple[Counter[str], Counter[str], int], n: int = 12
) -> list[list[str]]:
    """Rows: the functions most samples ended in (self time)."""
    _, by_leaf, total = profile
    rows = [[f"self time, {name}", "%"]]
    for leaf, count in by_leaf.most_common(n):
        rows.append([f"`{leaf}`", f"{100 * count / total:.1f}" if total else "-"])
    return rows
