"""The benchmark runs end to end on tiny durations: every setup answers, nothing errors.

No timing is asserted: only that `python -m bench --quick` starts everything, measures,
prints its tables and stops what it started.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.services import need


def test_the_benchmark_runs_end_to_end_and_stops_what_it_started(tmp_path: Path):
    for tool in ("wrk", "nginx", "haproxy", "curl"):
        need(tool, shutil.which(tool) is not None, "the benchmark drives it")
    for module in ("gunicorn", "requests", "flask", "aiohttp", "httpx_aiohttp"):
        need(module, importlib.util.find_spec(module) is not None, "pip install -e '.[bench]'")
    py_spy = Path(sys.executable).with_name("py-spy")
    need("py-spy", py_spy.exists() or shutil.which("py-spy") is not None, "pip install py-spy")
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-install", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(report["main"]) == {
        "1 nginx direct",
        "2 nginx proxy",
        "3 haproxy jwt_verify HS256",
        "4 flask+requests gunicorn 2w",
        "5 gateway 1w EdDSA",
        "5 gateway 2w EdDSA",
        "5 gateway 1w HS256",
        "5 gateway 2w HS256",
        "5 gateway 1w EdDSA, refresh 12h",
        "6 nginx auth_request -> gateway 2w EdDSA",
        "6 nginx auth_request, verdict cached 1s",
        "7 gateway 2w EdDSA /verify, no nginx",
    }
    for name, runs in report["main"].items():
        assert all(run["requests"] > 0 and run["errors"] == 0 for run in runs), name
    assert set(report["routes"]) == {"1", "100", "10,000", "10,000 without gc.freeze"}
    assert len(report["steps"]) == 11
    for name, runs in [*report["routes"].items(), *report["steps"].items()]:
        assert all(run["requests"] > 0 and run["errors"] == 0 for run in runs), name
    for kind in ("download", "upload"):
        transfer = report["transfer"][kind]
        assert (transfer["status"], transfer["bytes"]) == (200, 8 << 20), kind
    assert report["idle"]["connections"] == report["idle"]["still_open_after"]
    # py-spy sampled the gateway while wrk ran: its requests show up in the categories
    profile = report["profile"]["current"]
    assert profile["total"] > 0 and all(run["requests"] > 0 for run in profile["runs"])
    assert profile["cpu_us_per_request"] > 0
    assert profile["categories"].get("HTTP server (uvicorn, serve)", 0) > 0, profile
    assert "| where the CPU goes" in done.stdout
    assert "| setup | req/s |" in done.stdout
    # everything it started is gone: no process still runs from its temporary directory
    leftover = subprocess.run(["pgrep", "-f", "gateway-bench-"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout


def test_the_benchmark_runs_a_baseline_revision_in_the_same_rounds(tmp_path: Path):
    for tool in ("wrk", "nginx", "haproxy", "curl", "git"):
        need(tool, shutil.which(tool) is not None, "the benchmark drives it")
    for module in ("gunicorn", "requests", "flask"):
        need(module, importlib.util.find_spec(module) is not None, "pip install -e '.[bench]'")
    bad = subprocess.run(
        [sys.executable, "-m", "bench", "--no-install", "--baseline", "no-such-rev"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no such git revision" in bad.stderr, bad.stderr
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--no-install", "--only", "main"),
            *("--baseline", "HEAD", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    short = report["baseline"]["short"]
    twins = {f"5 gateway {w}w {a} @{short}" for w in (1, 2) for a in ("EdDSA", "HS256")}
    twins.add(f"6 nginx auth_request -> gateway 2w EdDSA @{short}")
    twins.add(f"7 gateway 2w EdDSA /verify, no nginx @{short}")
    assert twins <= set(report["main"])
    for name in twins:
        assert all(r["requests"] > 0 and r["errors"] == 0 for r in report["main"][name]), name
    assert "current/baseline:" in done.stdout
    leftover = subprocess.run(["pgrep", "-f", "gateway-bench-"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
