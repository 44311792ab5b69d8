"""`python -m bench`: start every setup on 127.0.0.1, run wrk in interleaved rounds, print tables.

See bench/README.md. Everything started here is stopped before exit (bench.procs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import baseline as revisions
from bench import procs, setups, wrk
from bench import profile as profiling
from bench.baseline import Baseline
from bench.setups import Target

PY_MODULES = {"gunicorn": "gunicorn", "flask": "flask", "requests": "requests", "jwt": "pyjwt"}
SECTIONS = ("main", "sweep", "steps", "routes", "transfer", "idle", "profile")


@dataclass
class Plan:
    """How long and how often to measure."""

    seconds: float
    rounds: int
    sweep_rounds: int
    transfer_bytes: int
    idle_connections: int
    connections: int = 64
    warmup: bool = True  # a 1 s wrk run per setup before anything is recorded
    sweep: tuple[int, ...] = (1, 16, 64, 256)
    route_counts: tuple[int, ...] = (1, 100, 10_000)


FULL = Plan(seconds=10, rounds=3, sweep_rounds=2, transfer_bytes=1 << 30, idle_connections=1000)
QUICK = Plan(
    seconds=1, rounds=1, sweep_rounds=1, transfer_bytes=8 << 20, idle_connections=50, warmup=False
)


@dataclass
class Report:
    """Every number measured, kept for the tables and the optional JSON dump."""

    started: str
    machine: dict
    main: dict[str, list[dict]] = field(default_factory=dict)
    sweep: dict[str, dict[int, list[dict]]] = field(default_factory=dict)
    steps: dict[str, list[dict]] = field(default_factory=dict)
    routes: dict[str, list[dict]] = field(default_factory=dict)
    transfer: dict[str, dict] = field(default_factory=dict)
    idle: dict = field(default_factory=dict)
    # per profiled gateway: samples per category, the top leaf functions, the total
    profile: dict[str, dict] = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)  # --baseline: rev, sha, short, pinned


def install() -> None:
    """Install wrk, nginx, haproxy (apt-get, as root) and the Python bench extras if missing."""
    missing = setups.have_tools()
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            sys.exit(f"bench: missing {', '.join(missing)}; install them (Debian: apt-get install)")
        print(f"bench: installing {' '.join(missing)}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    import importlib.util

    wanted = [pkg for mod, pkg in PY_MODULES.items() if importlib.util.find_spec(mod) is None]
    if profiling.have_py_spy() is None:
        wanted.append("py-spy")
    if wanted:
        print(f"bench: pip installing {' '.join(wanted)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)


def machine() -> dict:
    """What the numbers were measured on."""
    load = os.getloadavg()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in load],
        "kernel": platform.release(),
    }


def check(target: Target, path: str, expect_user: str) -> None:
    """One request through the setup: 200 and the body naming the user the upstream saw (for
    a forward-auth check: 200 and the X-User-Id it would give the upstream)."""
    request = urllib.request.Request(target.url + path)
    if target.cookie:
        request.add_header("Cookie", target.cookie)
    for header in target.headers:
        name, _, value = header.partition(":")
        request.add_header(name.strip(), value.strip())
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read().decode()
        user = reply.headers.get("X-User-Id")
    if target.verdict:
        if reply.status != 200 or user != expect_user:
            raise RuntimeError(f"{target.name}: unexpected verdict {reply.status} {user!r}")
    elif reply.status != 200 or body != f"hello {expect_user}\n":
        raise RuntimeError(f"{target.name}: unexpected answer {reply.status} {body!r}")


def measure(target: Target, path: str, connections: int, seconds: float) -> dict:
    """One wrk run as a dict (req/s, p50, p99, requests, errors)."""
    return asdict(
        wrk.run(target.url + path, connections, seconds, target.cookie, headers=target.headers)
    )


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run_main(work: Path, plan: Plan, report: Report, baseline: Baseline | None = None) -> None:
    """Setups 1-5 at 64 connections, interleaved rounds; then the gateway sweep.

    With a baseline, each gateway setup also runs as that revision, right after the current
    one in every round (and in the sweep).
    """
    upstream = setups.start_upstream(work)
    secret = setups.hs256_secret()
    hs_token = setups.mint_hs256(secret)
    targets: list[tuple[Target, str, str]] = [
        (Target("1 nginx direct", upstream.url, upstream.proc), "/", ""),
        (setups.start_nginx_proxy(work, upstream), "/", ""),
    ]
    targets[1][0].name = "2 nginx proxy"
    haproxy = setups.start_haproxy(work, upstream, secret, hs_token)
    haproxy.name = "3 haproxy jwt_verify HS256"
    flask = setups.start_flask(work, upstream, secret, hs_token)
    flask.name = "4 flask+requests gunicorn 2w"
    targets += [(haproxy, "/", "bench"), (flask, "/", "bench")]
    path = setups.bench_path(1)
    gateways = {}
    before = {}
    for algorithm in ("EdDSA", "HS256"):
        for workers in (1, 2):
            name = f"5 gateway {workers}w {algorithm}"
            gw = setups.start_gateway(
                work, f"gw-{workers}w-{algorithm}", upstream, algorithm, secret, workers
            )
            gw.name = name
            gateways[(workers, algorithm)] = gw
            targets.append((gw, path, "bench"))
            if baseline is not None:
                old = setups.start_gateway(
                    work,
                    f"gw-{workers}w-{algorithm}-{baseline.short}",
                    upstream,
                    algorithm,
                    secret,
                    workers,
                    gateway=baseline.gateway,
                    env=revisions.CLEAN_ENV,
                )
                old.name = f"{name} {baseline.label}"
                before[(workers, algorithm)] = old
                targets.append((old, path, "bench"))
    # the same 1-worker setup with refresh out of reach: beside "5 gateway 1w EdDSA" (the
    # default refresh, "1m", which the bench's one session passes from the second round on),
    # it shows what asking the users source again costs
    no_refresh = setups.start_gateway(
        work, "gw-1w-EdDSA-refresh-12h", upstream, "EdDSA", secret, 1, refresh="12h"
    )
    no_refresh.name = "5 gateway 1w EdDSA, refresh 12h"
    targets.append((no_refresh, path, "bench"))
    # forward-auth: nginx asks the 2-worker EdDSA gateway's /verify, then proxies itself
    checked = gateways[(2, "EdDSA")]
    for cached in (False, True):
        front = setups.start_nginx_forward_auth(work, upstream, checked, cached=cached)
        front.name = (
            f"6 nginx auth_request, verdict cached {setups.AUTH_CACHE_SECONDS}s"
            if cached
            else "6 nginx auth_request -> gateway 2w EdDSA"
        )
        targets.append((front, path, "bench"))
        if baseline is not None and not cached:
            # the same nginx in front of the baseline's gateway: /verify's cost before and after
            old_front = setups.start_nginx_forward_auth(
                work, upstream, before[(2, "EdDSA")], tag=baseline.short
            )
            old_front.name = f"{front.name} {baseline.label}"
            targets.append((old_front, path, "bench"))
    # the same 2-worker gateway asked by wrk itself, as nginx would ask it: /verify alone
    direct = setups.verify_direct(checked, path)
    direct.name = "7 gateway 2w EdDSA /verify, no nginx"
    targets.append((direct, "/.auth/verify", "bench"))
    if baseline is not None:
        old_direct = setups.verify_direct(before[(2, "EdDSA")], path)
        old_direct.name = f"{direct.name} {baseline.label}"
        targets.append((old_direct, "/.auth/verify", "bench"))
    for target, p, user in targets:
        check(target, p, user)
        # warm pools, caches and JITs before anything is recorded
        if plan.warmup:
            measure(target, p, plan.connections, 1)
    for round_no in range(plan.rounds):
        for target, p, _ in targets:
            result = measure(target, p, plan.connections, plan.seconds)
            report.main.setdefault(target.name, []).append(result)
            progress(f"round {round_no + 1}/{plan.rounds} {target.name}: {fmt_run(result)}")
    swept = []
    for workers in (1, 2):
        swept.append(gateways[(workers, "EdDSA")])
        if baseline is not None:
            swept.append(before[(workers, "EdDSA")])
    # one worker on asyncio's loop (fewer req/s than uvloop), and on uvloop's own server,
    # which accepts one connection per loop iteration (the tail at 256 connections: run E)
    sweep_variants = (("asyncio", "asyncio loop"), ("uvaccept", "one accept per iteration"))
    for variant, label in sweep_variants if plan.sweep_rounds else ():
        gw = setups.start_gateway(
            work, f"gw-1w-{variant}", upstream, "EdDSA", secret, 1, variant=variant
        )
        gw.name = f"5 gateway 1w EdDSA, {label}"
        check(gw, path, "bench")
        swept.append(gw)
        targets.append((gw, path, "bench"))
    for round_no in range(plan.sweep_rounds):
        for connections in plan.sweep:
            for gw in swept:
                result = measure(gw, path, connections, plan.seconds)
                report.sweep.setdefault(gw.name, {}).setdefault(connections, []).append(result)
                progress(f"sweep {round_no + 1} {gw.name} c={connections}: {fmt_run(result)}")
    for target, _, _ in targets[1:]:
        procs.stop(target.proc)  # (a /verify target shares its gateway's: stopped once)
    procs.stop(upstream.proc)


# the hot path, one change at a time (1 worker, EdDSA, 64 connections); see bench/launch.py
STEPS = {
    "0 as first built: httpx.AsyncClient": "httpx,nocache,pyjwt,nofreeze,nocoalesce,noassertcache",
    "1 + own HTTP/1.1 pool (upstream_pool)": "nocache,pyjwt,nofreeze,nocoalesce,noassertcache",
    "2 + verified-token cache": "pyjwt,nofreeze,nocoalesce,noassertcache",
    "3 + compact assertion signer": "nofreeze,nocoalesce,noassertcache",
    "4 + gc.freeze": "nocoalesce,noassertcache",
    "5 + one write per response": "noassertcache",
    "6 + assertion once per session and route (= the gateway now)": "none",
    "T httpx over httpx-aiohttp": "httpx-aiohttp",
    "T aiohttp.ClientSession": "aiohttp",
    "T httpx.AsyncClient": "httpx",
    "S asyncio loop + h11 (no uvloop, httptools)": "asyncio-h11",
}


def run_steps(work: Path, plan: Plan, report: Report) -> None:
    """Each hot-path change switched back in turn, and the transports compared, interleaved."""
    upstream = setups.start_upstream(work)
    secret = setups.hs256_secret()
    path = setups.bench_path(1)
    gws = {}
    for i, (name, variant) in enumerate(STEPS.items()):
        gws[name] = setups.start_gateway(
            work, f"gw-step-{i}", upstream, "EdDSA", secret, 1, variant=variant
        )
        check(gws[name], path, "bench")
        if plan.warmup:
            measure(gws[name], path, plan.connections, 1)
    for round_no in range(plan.rounds):
        for name, gw in gws.items():
            result = measure(gw, path, plan.connections, plan.seconds)
            report.steps.setdefault(name, []).append(result)
            progress(f"steps round {round_no + 1} {name}: {fmt_run(result)}")
    for gw in gws.values():
        procs.stop(gw.proc)
    procs.stop(upstream.proc)


def run_routes(work: Path, plan: Plan, report: Report) -> None:
    """Cost per request with 1, 100 and 10,000 routes (1 worker, EdDSA), interleaved."""
    upstream = setups.start_upstream(work)
    secret = setups.hs256_secret()
    gws = {}
    runs = [(f"{count:,}", count, "") for count in plan.route_counts]
    # the full collections gc.freeze() avoids scale with the objects 10,000 routes make
    runs.append((f"{plan.route_counts[-1]:,} without gc.freeze", plan.route_counts[-1], "nofreeze"))
    for label, count, variant in runs:
        gw = setups.start_gateway(
            work, f"gw-routes-{len(gws)}", upstream, "EdDSA", secret, 1, count, variant
        )
        gws[label] = (count, gw)
        check(gw, setups.bench_path(count), "bench")
        if plan.warmup:
            measure(gw, setups.bench_path(count), plan.connections, 1)
    for round_no in range(plan.rounds):
        for label, (count, gw) in gws.items():
            result = measure(gw, setups.bench_path(count), plan.connections, plan.seconds)
            report.routes.setdefault(label, []).append(result)
            progress(f"routes round {round_no + 1} {label}: {fmt_run(result)}")
    for _, gw in gws.values():
        procs.stop(gw.proc)
    procs.stop(upstream.proc)


class RssSampler:
    """Peak RSS of a process tree, sampled every 20 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = procs.rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, procs.rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def curl(args: list[str]) -> tuple[str, float]:
    started = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"curl failed: {done.stderr}")
    return done.stdout, time.monotonic() - started


def run_transfer(work: Path, plan: Plan, report: Report) -> None:
    """A large download and upload through the gateway (1 worker) with its peak RSS."""
    upstream = setups.start_upstream(work)
    sink_port = procs.free_port()
    sink_proc = procs.start(
        [sys.executable, "-m", "bench.sink", str(sink_port)],
        work / "sink.log",
        sink_port,
        cwd=Path(__file__).resolve().parent.parent,
    )
    sink = Target("sink", f"http://127.0.0.1:{sink_port}", sink_proc)
    secret = setups.hs256_secret()
    # downloads come from nginx's sparse file; uploads go to the sink
    down = setups.start_gateway(work, "gw-transfer", upstream, "EdDSA", secret, 1)
    size = plan.transfer_bytes
    body = work / "upload.bin"
    with body.open("wb") as f:
        f.truncate(size)
    big = work / setups.BIG_FILE
    with big.open("r+b") as f:
        f.truncate(size)
    path = setups.bench_path(1)
    check(down, path, "bench")
    base = procs.rss_kib(down.proc.pid)
    with RssSampler(down.proc.pid) as rss:
        out, took = curl(["-H", f"Cookie: {down.cookie}", f"{down.url}/svc0/{setups.BIG_FILE}"])
    status, got = out.split()
    report.transfer["download"] = {
        "bytes": int(got),
        "status": int(status),
        "seconds": round(took, 2),
        "mb_per_s": round(int(got) / took / 1e6, 1),
        "rss_start_mib": round(base / 1024, 1),
        "rss_peak_mib": round(rss.peak / 1024, 1),
    }
    progress(f"download: {report.transfer['download']}")
    procs.stop(down.proc)
    up = setups.start_gateway(work, "gw-upload", sink, "EdDSA", secret, 1)
    base = procs.rss_kib(up.proc.pid)
    with RssSampler(up.proc.pid) as rss:
        out, took = curl(
            ["-X", "POST", "-T", str(body), "-H", f"Cookie: {up.cookie}", f"{up.url}/svc0/upload"]
        )
    report.transfer["upload"] = {
        "bytes": size,
        "status": int(out.split()[0]),
        "seconds": round(took, 2),
        "mb_per_s": round(size / took / 1e6, 1),
        "rss_start_mib": round(base / 1024, 1),
        "rss_peak_mib": round(rss.peak / 1024, 1),
    }
    progress(f"upload: {report.transfer['upload']}")
    procs.stop(up.proc)
    procs.stop(sink_proc)
    procs.stop(upstream.proc)


def _open_idle(url: str, cookie: str, path: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n\r\n".encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(request)
        socks.append(sock)
    for sock in socks:
        data = b""
        while b"hello bench\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("idle connection closed before its first answer")
            data += chunk
    return socks


def _still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def run_idle(work: Path, plan: Plan, report: Report) -> None:
    """Idle keep-alive connections held open while 64 others run: RSS and req/s."""
    upstream = setups.start_upstream(work)
    secret = setups.hs256_secret()
    gw = setups.start_gateway(work, "gw-idle", upstream, "EdDSA", secret, 1)
    path = setups.bench_path(1)
    check(gw, path, "bench")
    if plan.warmup:
        measure(gw, path, plan.connections, 1)
    # uvicorn closes a keep-alive connection after 5 s without a request: measure inside that
    seconds = min(plan.seconds, 3)
    rss_before = procs.rss_kib(gw.proc.pid)
    baseline = measure(gw, path, plan.connections, seconds)
    socks = _open_idle(gw.url, gw.cookie, path, plan.idle_connections)
    rss_held = procs.rss_kib(gw.proc.pid)
    loaded = measure(gw, path, plan.connections, seconds)
    rss_held = max(rss_held, procs.rss_kib(gw.proc.pid))
    alive = _still_open(socks)
    for sock in socks:
        sock.close()
    report.idle = {
        "connections": plan.idle_connections,
        "still_open_after": alive,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_held_mib": round(rss_held / 1024, 1),
        "rps_without": baseline["rps"],
        "rps_with": loaded["rps"],
        "p99_with_ms": loaded["p99_ms"],
    }
    progress(f"idle: {report.idle}")
    procs.stop(gw.proc)
    procs.stop(upstream.proc)


def run_profile(work: Path, plan: Plan, report: Report, baseline: Baseline | None = None) -> None:
    """py-spy on the 1-worker EdDSA gateway at 64 connections (and the baseline's, if given)."""
    upstream = setups.start_upstream(work)
    secret = setups.hs256_secret()
    path = setups.bench_path(1)
    gws = [setups.start_gateway(work, "gw-profile", upstream, "EdDSA", secret, 1)]
    gws[0].name = "current"
    if baseline is not None:
        old = setups.start_gateway(
            work,
            f"gw-profile-{baseline.short}",
            upstream,
            "EdDSA",
            secret,
            1,
            gateway=baseline.gateway,
            env=revisions.CLEAN_ENV,
        )
        old.name = baseline.label
        gws.append(old)
    for gw in gws:
        check(gw, path, "bench")
        if plan.warmup:
            measure(gw, path, plan.connections, 1)
    # interleaved rounds, as in main: the machine's drift falls on both alike
    seconds = max(1, round(plan.seconds))
    totals = {gw.name: (Counter(), Counter(), []) for gw in gws}
    for round_no in range(plan.rounds):
        for gw in gws:
            results: list[dict] = []

            def load(gw=gw, results=results) -> None:
                results.append(measure(gw, path, plan.connections, seconds))

            stacks = work / f"{gw.name}-{round_no}.stacks"
            by_category, by_leaf, _ = profiling.categorize(
                profiling.record(gw.proc.pid, stacks, seconds, load)
            )
            categories, leaves, runs = totals[gw.name]
            categories.update(by_category)
            leaves.update(by_leaf)
            runs.extend(results)
            progress(
                f"profile round {round_no + 1}/{plan.rounds} {gw.name}: "
                f"{sum(by_category.values())} samples, {fmt_run(results[0]) if results else ''}"
            )
    for name, (categories, leaves, runs) in totals.items():
        total = sum(categories.values())
        requests = sum(r["rps"] * seconds for r in runs)
        report.profile[name] = {
            "categories": dict(categories),
            "leaves": dict(leaves.most_common(40)),
            "total": total,
            "runs": runs,
            # every round's samples over every round's requests
            "cpu_us_per_request": profiling.cpu_per_request(total, requests),
        }
    for gw in gws:
        procs.stop(gw.proc)
    procs.stop(upstream.proc)


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def fmt_run(r: dict) -> str:
    return (
        f"{r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms err {r['errors']}"
    )


def md_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(out)


def compare_baseline(report: Report) -> list[str]:
    """Each gateway setup against the same setup as the baseline revision, and the summary."""
    b = report.baseline
    label = f"@{b['short']}"
    rows = [
        [
            f"current vs baseline {label}",
            "req/s",
            f"{label} req/s",
            "current/baseline req/s",
            "p99 ms",
            f"{label} p99 ms",
            "current/baseline p99",
            "rounds current/baseline req/s",
        ]
    ]
    rps_ratios, p99_ratios = [], []
    for name, runs in report.main.items():
        old = report.main.get(f"{name} {label}")
        if old is None:
            continue
        rps, old_rps = med(runs, "rps"), med(old, "rps")
        p99, old_p99 = med(runs, "p99_ms"), med(old, "p99_ms")
        rps_ratio = rps / old_rps if old_rps else float("nan")
        p99_ratio = p99 / old_p99 if old_p99 else float("nan")
        rps_ratios.append(rps_ratio)
        p99_ratios.append(p99_ratio)
        rows.append(
            [
                name,
                f"{rps:,.0f}",
                f"{old_rps:,.0f}",
                f"{rps_ratio:.2f}x ({rps_ratio - 1:+.1%})",
                f"{p99:.2f}",
                f"{old_p99:.2f}",
                f"{p99_ratio:.2f}x ({p99_ratio - 1:+.1%})",
                # the two ran back to back in each round: the ratio per round shows the noise
                " / ".join(
                    f"{now['rps'] / then['rps']:.2f}x" if then["rps"] else "-"
                    for now, then in zip(runs, old, strict=False)
                ),
            ]
        )
    if not rps_ratios:
        return []
    summary = (
        f"current/baseline: {statistics.geometric_mean(rps_ratios):.2f}x req/s, "
        f"{statistics.geometric_mean(p99_ratios):.2f}x p99 (geometric mean over "
        f"{len(rps_ratios)} gateway setups; baseline {label} = {b['rev']} {b['sha']}"
        + ("" if b.get("pinned", True) else ", its own dependency versions")
        + ")"
    )
    return [md_table(rows), "", summary, ""]


def render(report: Report, plan: Plan) -> str:
    """The report as Markdown tables (printed, and pasteable into RESULTS.md)."""
    parts = [
        f"benchmark {report.started}, {report.machine['cores']} cores ({report.machine['cpu']}), "
        f"load before {report.machine['load_before']}, after {report.machine.get('load_after')}; "
        f"wrk {plan.connections} connections, {plan.seconds:g}s x {plan.rounds} interleaved "
        "rounds, medians",
        "",
    ]
    if report.main:
        direct = med(report.main.get("1 nginx direct", [{"rps": 0}]), "rps") or 1
        proxy = med(report.main.get("2 nginx proxy", [{"rps": 0}]), "rps") or 1
        rows = [
            [
                "setup",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "vs direct",
                "vs nginx proxy",
                "rounds req/s",
            ]
        ]
        for name, runs in report.main.items():
            rps = med(runs, "rps")
            rows.append(
                [
                    name,
                    f"{rps:,.0f}",
                    f"{med(runs, 'p50_ms'):.2f}",
                    f"{med(runs, 'p99_ms'):.2f}",
                    str(sum(r["errors"] for r in runs)),
                    f"{rps / direct:.1%}",
                    f"{rps / proxy:.1%}",
                    " / ".join(f"{r['rps']:,.0f}" for r in runs),
                ]
            )
        parts += [md_table(rows), ""]
        if report.baseline:
            parts += compare_baseline(report)
    if report.sweep:
        rows = [["gateway EdDSA", *[f"c={c} req/s (p99 ms)" for c in plan.sweep]]]
        for name, by_conn in report.sweep.items():
            rows.append(
                [name]
                + [
                    f"{med(by_conn[c], 'rps'):,.0f} ({med(by_conn[c], 'p99_ms'):.1f})"
                    if c in by_conn
                    else "-"
                    for c in plan.sweep
                ]
            )
        parts += [md_table(rows), ""]
    if report.steps:
        rows = [
            [
                "hot path step (1 worker, EdDSA, c=64)",
                "req/s",
                "p50 ms",
                "p99 ms",
                "vs step 0",
                "rounds req/s",
            ]
        ]
        base = med(next(iter(report.steps.values())), "rps") or 1
        for name, runs in report.steps.items():
            rps = med(runs, "rps")
            rows.append(
                [
                    name,
                    f"{rps:,.0f}",
                    f"{med(runs, 'p50_ms'):.2f}",
                    f"{med(runs, 'p99_ms'):.2f}",
                    f"{rps / base:.1f}x",
                    " / ".join(f"{r['rps']:,.0f}" for r in runs),
                ]
            )
        parts += [md_table(rows), ""]
    if report.routes:
        first = med(next(iter(report.routes.values())), "rps")
        rows = [["routes (1 worker, EdDSA)", "req/s", "p50 ms", "p99 ms", "vs 1 route"]]
        for label, runs in report.routes.items():
            rps = med(runs, "rps")
            rows.append(
                [
                    label,
                    f"{rps:,.0f}",
                    f"{med(runs, 'p50_ms'):.2f}",
                    f"{med(runs, 'p99_ms'):.2f}",
                    f"{rps / first - 1:+.1%}",
                ]
            )
        parts += [md_table(rows), ""]
    if report.transfer:
        rows = [
            [
                "transfer (1 worker)",
                "bytes",
                "status",
                "seconds",
                "MB/s",
                "RSS start MiB",
                "RSS peak MiB",
            ]
        ]
        for kind, t in report.transfer.items():
            rows.append(
                [
                    kind,
                    f"{t['bytes']:,}",
                    str(t["status"]),
                    str(t["seconds"]),
                    str(t["mb_per_s"]),
                    str(t["rss_start_mib"]),
                    str(t["rss_peak_mib"]),
                ]
            )
        parts += [md_table(rows), ""]
    if report.idle:
        i = report.idle
        rows = [
            [
                "idle keep-alive (1 worker)",
                "held",
                "still open",
                "RSS before MiB",
                "RSS held MiB",
                "req/s without",
                "req/s with",
                "p99 with ms",
            ],
            [
                "gateway 1w EdDSA",
                str(i["connections"]),
                str(i["still_open_after"]),
                str(i["rss_before_mib"]),
                str(i["rss_held_mib"]),
                f"{i['rps_without']:,.0f}",
                f"{i['rps_with']:,.0f}",
                f"{i['p99_with_ms']:.2f}",
            ],
        ]
        parts += [md_table(rows), ""]
    if report.profile:
        profiles = {
            name: (Counter(p["categories"]), Counter(p["leaves"]), p["total"])
            for name, p in report.profile.items()
        }
        per_request = {name: p["cpu_us_per_request"] for name, p in report.profile.items()}
        parts += [md_table(profiling.table(profiles, per_request)), ""]
        for name, profile in profiles.items():
            parts += [md_table(profiling.top_leaves(name, profile)), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny durations (a smoke run)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    parser.add_argument("--no-install", action="store_true", help="do not install missing tools")
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run this git revision's gateway (its own venv) beside the current one, "
        "in the same rounds of main and sweep",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seconds:
        plan.seconds = args.seconds
    if args.rounds:
        plan.rounds = args.rounds
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    resolved = None
    if args.baseline is not None:
        resolved = revisions.resolve(args.baseline)
        if resolved is None:
            parser.error(f"--baseline {args.baseline!r}: no such git revision in {revisions.REPO}")
        if "main" not in sections and "profile" not in sections:
            parser.error("--baseline runs beside the main or profile section: add one to --only")
    # a SIGTERM stops the run like Ctrl-C: everything started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if not args.no_install:
        install()
    report = Report(
        started=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
    )
    runners = {
        "main": run_main,
        "sweep": None,  # measured with main (same gateways)
        "steps": run_steps,
        "routes": run_routes,
        "transfer": run_transfer,
        "idle": run_idle,
        "profile": None,  # with the baseline, like main
    }
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody and read the sparse file
        try:
            baseline = None
            if resolved is not None:
                baseline = revisions.prepare(args.baseline, *resolved, work, progress=progress)
                report.baseline = {
                    "rev": baseline.rev,
                    "sha": baseline.sha,
                    "short": baseline.short,
                    "pinned": baseline.pinned,
                }
            for section in sections:
                if section == "profile":
                    run_profile(work, plan, report, baseline)
                    continue
                runner = runners[section]
                if runner is None:
                    continue
                if section == "main" and "sweep" not in sections:
                    plan.sweep_rounds = 0
                if section == "main":
                    run_main(work, plan, report, baseline)
                else:
                    runner(work, plan, report)
        finally:
            procs.stop_all()
    report.machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    print(render(report, plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
