"""The things being measured, each started on 127.0.0.1 from a config written here."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import procs

# the small fixed body every setup ends at; it names the X-User-Id the upstream received
BODY = "hello $http_x_user_id\n"
COOKIE = "gw_session"
ISSUER = "http://localhost:8000"
BIG_FILE = "big.bin"  # a sparse file nginx serves for the 1 GB download


@dataclass
class Target:
    """One running setup: where to send requests and the process to watch."""

    name: str
    url: str
    proc: subprocess.Popen
    cookie: str = ""  # Cookie header value the requests carry
    headers: tuple[str, ...] = ()  # more request headers, "Name: value"
    verdict: bool = False  # a forward-auth check: 200 with X-User-Id and no body

    @property
    def rss_kib(self) -> int:
        return procs.rss_kib(self.proc.pid)


def _nginx_user() -> str:
    # a root master switches workers to an unprivileged user; Debian has no "nobody" group
    return "user nobody nogroup;" if os.geteuid() == 0 else ""


def _nginx(work: Path, name: str, server_block: str, workers: int) -> tuple[Path, Path]:
    prefix = work / name
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            {_nginx_user()}
            worker_processes {workers};
            pid {prefix}/nginx.pid;
            error_log {prefix}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {prefix}/client_body;
                proxy_temp_path {prefix}/proxy;
                fastcgi_temp_path {prefix}/fastcgi;
                uwsgi_temp_path {prefix}/uwsgi;
                scgi_temp_path {prefix}/scgi;
                keepalive_requests 1000000;
                keepalive_timeout 300s;
            """
        )
        + textwrap.indent(textwrap.dedent(server_block), "    ")
        + "}\n"
    )
    return prefix, conf


def start_upstream(work: Path) -> Target:
    """nginx answering every path with BODY, and /big.bin from a sparse 1 GiB file."""
    port = procs.free_port()
    big = work / BIG_FILE
    with big.open("wb") as f:
        f.truncate(1 << 30)
    big.chmod(0o644)
    prefix, conf = _nginx(
        work,
        "upstream",
        f"""
        server {{
            listen 127.0.0.1:{port} reuseport backlog=4096;
            location ~ /big\\.bin$ {{ root {work}; try_files /{BIG_FILE} =404; }}
            location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
        }}
        """,
        workers=1,
    )
    proc = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        prefix / "stdout.log",
        port,
    )
    return Target("nginx upstream", f"http://127.0.0.1:{port}", proc)


def start_nginx_proxy(work: Path, upstream: Target) -> Target:
    """nginx as a plain keep-alive reverse proxy, no auth."""
    port = procs.free_port()
    up = upstream.url.removeprefix("http://")
    prefix, conf = _nginx(
        work,
        "proxy",
        f"""
        upstream app {{ server {up}; keepalive 64; }}
        server {{
            listen 127.0.0.1:{port} reuseport backlog=4096;
            location / {{
                proxy_pass http://app;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
            }}
        }}
        """,
        workers=2,
    )
    proc = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        prefix / "stdout.log",
        port,
    )
    return Target("nginx proxy", f"http://127.0.0.1:{port}", proc)


EXAMPLE_NGINX = Path(__file__).resolve().parent.parent / "examples" / "nginx.conf"
# how long the cached forward-auth setup keeps a verdict: also its revocation delay
AUTH_CACHE_SECONDS = 1


def _example_site(port: int, gateway: Target, upstream: Target) -> str:
    """examples/nginx.conf as shipped, on bench ports (the forward-auth tests do the same)."""
    site = EXAMPLE_NGINX.read_text()
    replacements = {
        "server 127.0.0.1:8000;": f"server {gateway.url.removeprefix('http://')};",
        "server 127.0.0.1:9001;": f"server {upstream.url.removeprefix('http://')};",
        # listen options go on one of the two servers of an address: the default one
        "listen 80;": f"listen 127.0.0.1:{port};",
        "listen 80 default_server;": (
            f"listen 127.0.0.1:{port} default_server reuseport backlog=4096;"
        ),
        # the example serves its app's name only (any other Host is closed): wrk's is this
        "server_name app.example.com;": "server_name 127.0.0.1;",
    }
    for old, new in replacements.items():
        if site.count(old) != 1:
            raise RuntimeError(f"examples/nginx.conf no longer has exactly one {old!r}")
        site = site.replace(old, new)
    return site


def start_nginx_forward_auth(
    work: Path, upstream: Target, gateway: Target, cached: bool = False, tag: str = ""
) -> Target:
    """nginx (2 workers) with examples/nginx.conf: `auth_request` to the gateway's /verify
    before every request, then nginx proxies to the app itself.

    `cached`: nginx keeps each 200 verdict for AUTH_CACHE_SECONDS, keyed by the cookie, the
    Authorization header, the method, host and URI (a verdict is per route), overriding the
    gateway's `Cache-Control: no-store`; a response that sets a cookie (a re-issue) is never
    cached (nginx's default), nor any 401 or 403. A
    revocation then takes up to that long to reach nginx: the README states it. `tag` names
    another nginx of the same kind (in front of a baseline's gateway).
    """
    port = procs.free_port()
    name = ("forward-auth-cached" if cached else "forward-auth") + (f"-{tag}" if tag else "")
    site = _example_site(port, gateway, upstream)
    cache = ""
    if cached:
        cache = f"proxy_cache_path {work / name}/authcache keys_zone=gateway_verdicts:10m;\n"
        marker = "        proxy_pass http://gateway/.auth/verify;\n"
        site = site.replace(
            marker,
            marker
            + "        proxy_cache gateway_verdicts;\n"
            + '        proxy_cache_key "$http_cookie|$http_authorization|'
            + '$request_method|$host|$request_uri";\n'
            + f"        proxy_cache_valid 200 {AUTH_CACHE_SECONDS}s;\n"
            # the gateway says no-store on everything it answers; Set-Cookie still stops caching
            + "        proxy_ignore_headers Cache-Control Expires;\n",
        )
    prefix, conf = _nginx(work, name, cache + site, workers=2)
    proc = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        prefix / "stdout.log",
        port,
    )
    return Target(name, f"http://127.0.0.1:{port}", proc, gateway.cookie)


def verify_direct(gateway: Target, path: str) -> Target:
    """wrk straight at a gateway's `/.auth/verify`, with the headers examples/nginx.conf sends
    for a GET of `path`: what the check costs the gateway alone, without nginx's two hops."""
    return Target(
        f"{gateway.name}, /verify",
        gateway.url,
        gateway.proc,
        gateway.cookie,
        # (nginx leaves out the X-Forwarded-Uri it sets to "")
        headers=("X-Forwarded-Method: GET", f"X-Original-URI: {path}", "X-Forwarded-Proto: http"),
        verdict=True,
    )


def start_haproxy(work: Path, upstream: Target, secret: str, token: str) -> Target:
    """HAProxy verifying the HS256 cookie JWT with jwt_verify, then setting X-User-Id."""
    port = procs.free_port()
    up = upstream.url.removeprefix("http://")
    conf = work / "haproxy.cfg"
    conf.write_text(
        textwrap.dedent(
            f"""
            global
                nbthread 2
                maxconn 4096
            defaults
                mode http
                timeout connect 5s
                timeout client 60s
                timeout server 60s
                option http-keep-alive
            frontend bench
                bind 127.0.0.1:{port}
                http-request set-var(txn.jwt) req.cook({COOKIE})
                http-request deny deny_status 401 unless {{ var(txn.jwt) -m found }}
                http-request set-var(txn.alg) var(txn.jwt),jwt_header_query('$.alg')
                http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
                http-request deny deny_status 401 unless {{ var(txn.jwt),jwt_verify(txn.alg,"{secret}") -m int 1 }}
                http-request set-var(txn.iss) var(txn.jwt),jwt_payload_query('$.iss')
                http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ISSUER} }}
                http-request set-var(txn.aud) var(txn.jwt),jwt_payload_query('$.aud')
                http-request deny deny_status 401 unless {{ var(txn.aud) -m str {ISSUER} }}
                http-request set-var(txn.exp) var(txn.jwt),jwt_payload_query('$.exp','int')
                http-request set-var(txn.now) date()
                http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
                http-request del-header X-User-Id
                http-request set-header X-User-Id %[var(txn.jwt),jwt_payload_query('$.sub')]
                default_backend app
            backend app
                http-reuse always
                server up {up} maxconn 256
            """
        )
    )
    check = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy config refused:\n{check.stdout}{check.stderr}")
    proc = procs.start(["haproxy", "-db", "-f", str(conf)], work / "haproxy.log", port)
    return Target("haproxy jwt_verify", f"http://127.0.0.1:{port}", proc, f"{COOKIE}={token}")


def start_flask(work: Path, upstream: Target, secret: str, token: str) -> Target:
    """The tutorial approach: Flask + PyJWT + requests under gunicorn with 2 sync workers."""
    port = procs.free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = procs.start(
        [
            str(gunicorn),
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--backlog",
            "2048",
            "--log-level",
            "warning",
            "bench.flask_app:app",
        ],
        work / "flask.log",
        port,
        env={
            "BENCH_UPSTREAM": upstream.url,
            "BENCH_SECRET": secret,
            "BENCH_ISSUER": ISSUER,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        },
    )
    return Target("flask+gunicorn 2w", f"http://127.0.0.1:{port}", proc, f"{COOKIE}={token}")


def gateway_routes(upstream: Target, count: int) -> str:
    """`count` required routes; the benchmark requests go to the last one."""
    out = []
    for i in range(count):
        out.append(
            textwrap.dedent(
                f"""
                [[routes]]
                name = "svc{i}"
                path = "/svc{i}"
                upstream = "{upstream.url}"
                auth = "required"
                roles = ["staff"]
                methods = ["GET", "HEAD", "POST", "PUT"]
                """
            )
        )
    return "".join(out)


def bench_path(route_count: int) -> str:
    """The path requests use: below the last route, so every lookup walks a full table."""
    return f"/svc{route_count - 1}/items/42"


def write_gateway_config(
    work: Path,
    name: str,
    upstream: Target,
    algorithm: str,
    secret: str,
    routes: int,
    refresh: str = "",
) -> Path:
    """A gateway.toml: sqlite store, full header rewriting, assertion header on.

    `refresh` sets `[auth] refresh` (unset: the gateway's default, "1m").
    """
    directory = work / name
    directory.mkdir(exist_ok=True)
    port = procs.free_port()
    keys = f'algorithm = "HS256"\nsecret = "{secret}"' if algorithm == "HS256" else 'dir = "keys"'
    config = directory / "gateway.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            listen = "127.0.0.1:{port}"
            public_url = "{ISSUER}"
            admin_listen = "127.0.0.1:{procs.free_port()}"

            [auth]
            users_file = "users.toml"
            {f'refresh = "{refresh}"' if refresh else ""}

            [session]
            # the bench user's one login must outlast the run: access_ttl <= max_age
            access_ttl = "12h"
            max_age = "12h"

            [keys]
            """
        )
        + keys
        + '\n\n[store]\nurl = "sqlite:///gateway.db"\n'
        + gateway_routes(upstream, routes)
    )
    return config


def add_user(gateway: Path, config: Path, env: dict | None = None, user: str = "bench") -> str:
    """`gateway users add` (that gateway's own CLI) with a fresh password; returns the password."""
    password = secrets.token_urlsafe(18)
    args = ["users", "add", user, "--roles", "staff", "--password-stdin", "-c", str(config)]
    procs.run(
        [str(gateway), *args],
        config.parent / "users-add.log",
        env=env,
        cwd=config.parent,
        stdin=password + "\n",
        timeout=120,
    )
    return password


def login(url: str, password: str, user: str = "bench") -> str:
    """POST /.auth/login (JSON) to a running gateway; the session token from its Set-Cookie."""
    request = urllib.request.Request(
        f"{url}/.auth/login",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            cookies = reply.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"login at {url}: {exc.code} {exc.read()[:500]!r}") from None
    for cookie in cookies:
        name, _, rest = cookie.partition("=")
        token = rest.split(";", 1)[0].strip()
        if name.strip() == COOKIE and token:
            return token
    raise RuntimeError(f"login at {url}: no {COOKIE} cookie in {cookies!r}")


def start_gateway(
    work: Path,
    name: str,
    upstream: Target,
    algorithm: str,
    secret: str,
    workers: int,
    routes: int = 1,
    variant: str = "",
    gateway: Path | None = None,
    env: dict[str, str | None] | None = None,
    refresh: str = "",
) -> Target:
    """`gateway run` with this many workers, and a session token for its bench user.

    `variant` runs it through bench.launch with parts of the hot path switched back.
    `gateway` is another revision's executable (bench.baseline), run with `env` laid over
    the environment. The bench user is added with that gateway's CLI and logs in over HTTP,
    so nothing of the gateway is imported here.
    """
    config = write_gateway_config(work, name, upstream, algorithm, secret, routes, refresh)
    cli = gateway or Path(sys.executable).with_name("gateway")
    password = add_user(cli, config, env)
    port = int(config.read_text().split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])
    args = ["run", "-c", str(config), "--workers", str(workers)]
    if variant:
        assert gateway is None, "variants patch this checkout's gateway"
        variant = "" if variant == "none" else variant
        assert workers == 1, "variants patch the serving process: one worker only"
        cmd = [sys.executable, "-m", "bench.launch", *args]
        env = {"BENCH_VARIANT": variant, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    else:
        cmd = [str(cli), *args]
    proc = procs.start(cmd, config.parent / "gateway.log", port, env=env, cwd=config.parent)
    url = f"http://127.0.0.1:{port}"
    return Target(name, url, proc, f"{COOKIE}={login(url, password)}")


def hs256_secret() -> str:
    """A fresh HS256 secret shared by the gateway, HAProxy and the Flask app."""
    return secrets.token_hex(24)


def mint_hs256(secret: str, user: str = "bench") -> str:
    """An HS256 session-shaped token for the non-gateway setups (no store behind them)."""
    import time

    import jwt

    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": ISSUER,
        "sub": user,
        "roles": ["staff"],
        "sid": "bench",
        "jti": secrets.token_urlsafe(8),
        "iat": now,
        "nbf": now,
        "exp": now + 12 * 3600,
    }
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "hs-bench"})


def have_tools() -> list[str]:
    """The system tools the benchmark needs that are missing."""
    return [tool for tool in ("wrk", "nginx", "haproxy", "curl") if shutil.which(tool) is None]
