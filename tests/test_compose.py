"""The Dockerfile and the docker-compose demo stack, proven without a Docker engine.

Static checks read the Dockerfile, .dockerignore and docker-compose.yml. The stack test runs
every service's entrypoint + command with its environment as a local process, the way its
container would run it: service names resolve to 127.0.0.1, container ports become free local
ports, volumes become temporary folders, and the `redis` service is the real Redis on
127.0.0.1:6379 (a database of this test's own, flushed). Services start in `depends_on` order,
each condition checked with the service's own healthcheck command (or the image's HEALTHCHECK).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from gateway.config import load_config
from tests.conftest import free_port
from tests.services import need_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
OUR_IMAGE = "gateway:local"
REDIS_DB = 12  # a database of this test's own, flushed before and after
SECRET_NAME = re.compile(r"pass(word|wd)?|secret|token|credential|private|api_?key", re.I)


# -- reading the files -------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, with its build stage."""

    name: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        name, _, args = full.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        out.append(Instruction(name, args.strip(), stage))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD, or None (shell form)."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def env_pairs(args: str) -> dict[str, str]:
    """`ENV A=1 B=2` (or the legacy `ENV A 1`) as a dict."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(part.split("=", 1) for part in parts)


def healthcheck_argv(args: str) -> list[str]:
    """The command of a `HEALTHCHECK [options] CMD ...` instruction."""
    _, _, command = args.partition("CMD ")
    return exec_form(command.strip()) or ["sh", "-c", command.strip()]


_INTERPOLATION = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, $VAR, and $$ for a `$`."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name = match.group(2) or match.group(4)
            return env.get(name) or (match.group(3) or "")

        return _INTERPOLATION.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def service_env(service: dict) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def as_argv(value: object) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def volume_parts(spec: str) -> tuple[str, str]:
    source, target = spec.split(":")[:2]
    return source, target


COMPOSE_DATA = load_compose()
SERVICES: dict = COMPOSE_DATA["services"]
IMAGE = final_stage(parse_dockerfile(DOCKERFILE.read_text()))
ALL_INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def image_instruction(name: str) -> Instruction | None:
    found = [i for i in IMAGE if i.name == name]
    return found[-1] if found else None


def gateway_config_source() -> Path:
    for spec in SERVICES["gateway"]["volumes"]:
        source, target = volume_parts(spec)
        if target == image_env()["GATEWAY_CONFIG"]:
            return (COMPOSE.parent / source).resolve()
    raise AssertionError("the gateway service mounts no file at $GATEWAY_CONFIG")


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in IMAGE:
        if instruction.name == "ENV":
            env.update(env_pairs(instruction.args))
    return env


# -- static checks -----------------------------------------------------------------------


def test_image_is_a_slim_python_base_with_the_package_installed_from_the_repo() -> None:
    bases = [i.args.split()[0] for i in ALL_INSTRUCTIONS if i.name == "FROM"]
    assert all(re.match(r"python:3\.\d+-slim", base) for base in bases), bases
    runs = " ".join(i.args for i in ALL_INSTRUCTIONS if i.name == "RUN")
    assert "pip install ." in runs


def test_image_runs_as_a_non_root_user() -> None:
    user = image_instruction("USER")
    assert user is not None, "the final stage sets no USER: it would run as root"
    name = user.args.split(":")[0]
    assert name not in {"root", "0"}
    # the USER line comes after everything that needs root
    assert IMAGE.index(user) > max(IMAGE.index(i) for i in IMAGE if i.name == "RUN")


def test_entrypoint_is_exec_form_so_sigterm_reaches_the_gateway() -> None:
    entrypoint = image_instruction("ENTRYPOINT")
    cmd = image_instruction("CMD")
    assert entrypoint is not None and exec_form(entrypoint.args) == ["gateway"]
    assert cmd is not None and exec_form(cmd.args) == ["run"]
    for name, service in SERVICES.items():
        for key in ("entrypoint", "command"):
            assert not isinstance(service.get(key), str), f"{name}.{key} should be a list"


def test_image_healthcheck_is_exec_form_and_asks_the_gateway() -> None:
    check = image_instruction("HEALTHCHECK")
    assert check is not None
    assert "--interval=" in check.args and "--timeout=" in check.args
    assert healthcheck_argv(check.args) == ["python", "-m", "gateway.healthcheck"]


def test_config_keys_and_data_live_on_volumes() -> None:
    volume = image_instruction("VOLUME")
    assert volume is not None
    volumes = exec_form(volume.args) or volume.args.split()
    config = load_config(gateway_config_source())
    config_path = image_env()["GATEWAY_CONFIG"]

    def on_a_volume(path: str) -> bool:
        return any(path == v or path.startswith(v.rstrip("/") + "/") for v in volumes)

    assert on_a_volume(config_path)
    assert on_a_volume(str(config.keys.dir))
    assert on_a_volume(str(config.auth.users_file))
    mounted = {volume_parts(spec)[1] for spec in SERVICES["gateway"]["volumes"]}
    assert {config_path, str(config.keys.dir), str(config.auth.users_file.parent)} <= mounted
    # the keys and the users file outlive the containers: named volumes, declared at the top
    sources = {volume_parts(spec)[0] for spec in SERVICES["gateway"]["volumes"]}
    named = {source for source in sources if not source.startswith((".", "/"))}
    assert named and named <= set(COMPOSE_DATA["volumes"])


def test_nothing_secret_is_baked_into_the_image() -> None:
    for instruction in ALL_INSTRUCTIONS:
        if instruction.name in ("ENV", "ARG"):
            for name, value in env_pairs(instruction.args).items():
                assert not SECRET_NAME.search(name), f"{instruction.name} {name}={value}"
        if instruction.name in ("COPY", "ADD"):
            args = instruction.args.split()
            if any(a.startswith("--from=") for a in args):
                continue
            sources = [a for a in args[:-1] if not a.startswith("--")]
            assert set(sources) <= {"pyproject.toml", "README.md", "gateway"}, sources
    # the build context is an allow-list of exactly what is copied
    ignore = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    ignore = [line for line in ignore if line and not line.startswith("#")]
    assert ignore[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "gateway"}
    for path in (ROOT / "gateway").rglob("*"):
        assert path.name not in {"users.toml", ".env"} and path.suffix not in {".pem", ".key"}
    # compose hands secrets in from the operator's environment, never as literal values
    for name, service in SERVICES.items():
        raw = yaml.safe_load(COMPOSE.read_text())["services"][name].get("environment") or {}
        for key, value in raw.items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?-)?\}", str(value)), key


def test_only_the_gateway_publishes_a_port_and_only_on_loopback() -> None:
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"gateway"}
    for name, service in SERVICES.items():
        assert service.get("network_mode") != "host", name
    config = load_config(gateway_config_source())
    # one published port: the public listener's; the admin (metrics) port stays inside
    assert [str(spec) for spec in SERVICES["gateway"]["ports"]] == [
        f"127.0.0.1:{urlsplit(config.server.public_url).port}:{config.server.port}"
    ]


def test_the_gateway_waits_for_healthy_dependencies() -> None:
    depends = SERVICES["gateway"]["depends_on"]
    assert depends["init"]["condition"] == "service_completed_successfully"
    for name in ("redis", "legacy", "api"):
        assert depends[name]["condition"] == "service_healthy"
        assert "test" in SERVICES[name]["healthcheck"], f"{name} has no healthcheck"
    assert "healthcheck" not in SERVICES["gateway"]  # the image's HEALTHCHECK applies
    # both demo upstreams run from the gateway's own image
    for name in ("legacy", "api"):
        assert SERVICES[name]["image"] == OUR_IMAGE
        assert SERVICES[name]["entrypoint"] == ["python", "-m", "gateway.demo"]
        assert SERVICES[name]["command"][0] == name


# -- the stack as local processes -----------------------------------------------------------


@dataclass
class LocalStack:
    """docker-compose.yml played as local processes on 127.0.0.1."""

    compose: dict
    directory: Path
    ports: dict[str, dict[int, int]] = field(default_factory=dict)  # name -> {inside: local}
    published: dict[int, int] = field(default_factory=dict)  # host port -> gateway local port
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, service in self.compose["services"].items():
            inside = self._container_ports(name)
            self.ports[name] = {p: 6379 if name == "redis" else free_port() for p in inside}
            for spec in service.get("ports") or ():
                *_, host, target = str(spec).split(":")
                self.published[int(host)] = self.ports[name][int(target)]
        inside_ports = [inside for ports in self.ports.values() for inside in ports]
        # every container has its own loopback; one shared loopback needs distinct ports
        assert len(set(inside_ports)) == len(inside_ports)

    def port(self, name: str) -> int:
        """The service's main port, here."""
        return next(iter(self.ports[name].values()))

    def _container_ports(self, name: str) -> list[int]:
        """Ports the service listens on: published, `--port N`, or a `gateway run`'s config."""
        service = self.compose["services"][name]
        found = [int(str(spec).rsplit(":", 1)[1]) for spec in service.get("ports") or ()]
        argv = self.raw_command(name)
        if "--port" in argv:
            found.append(int(argv[argv.index("--port") + 1]))
        if argv[:2] == ["gateway", "run"]:
            config = load_config(self.bind_source(name, image_env()["GATEWAY_CONFIG"]))
            admin_port = int(config.server.admin_listen.rsplit(":", 1)[1])
            found += [config.server.port, admin_port]
        if str(service.get("image", "")).startswith("redis"):
            found.append(6379)
        return list(dict.fromkeys(found))

    def bind_source(self, name: str, target: str) -> Path:
        for spec in self.compose["services"][name].get("volumes") or ():
            source, mounted = volume_parts(spec)
            if mounted == target:
                return COMPOSE.parent / source
        raise AssertionError(f"{name} mounts nothing at {target}")

    def ours(self, service: dict) -> bool:
        return service.get("image") == OUR_IMAGE

    def mounts(self, name: str) -> dict[str, Path]:
        """Each volume target of the service -> the local folder (or file) standing in for it."""
        out = {}
        for spec in self.compose["services"][name].get("volumes") or ():
            source, target = volume_parts(spec)
            if source.startswith((".", "/")):
                # a bind mount: a translated copy, made by prepare()
                out[target] = self.directory / "binds" / name / target.lstrip("/")
            else:
                out[target] = self.directory / "volumes" / source
        return out

    def local_path(self, name: str, container_path: str) -> Path:
        """Where a container path of this service lives here: its volume, or a private root."""
        for target, local in self.mounts(name).items():
            if container_path == target or container_path.startswith(target + "/"):
                rest = container_path[len(target) :].lstrip("/")
                return local / rest if rest else local
        return self.directory / "rootfs" / name / container_path.lstrip("/")

    def prepare(self, name: str) -> None:
        """Create the volumes; copy bind-mounted files translated like everything else."""
        for spec in self.compose["services"][name].get("volumes") or ():
            source, target = volume_parts(spec)
            local = self.mounts(name)[target]
            if source.startswith((".", "/")):
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(self.translate(name, (COMPOSE.parent / source).read_text()))
            else:
                local.mkdir(parents=True, exist_ok=True)

    def translate(self, name: str, text: str) -> str:
        """A string as the service sees it, rewritten to this machine's addresses and paths."""
        for other, ports in self.ports.items():
            host = rf"(?<![\w.-])(?:{re.escape(other)}|0\.0\.0\.0|127\.0\.0\.1)"
            for inside, local in ports.items():
                text = re.sub(rf"{host}:{inside}(?!\d)", f"127.0.0.1:{local}", text)
        for host_port, local in self.published.items():
            text = re.sub(rf"localhost:{host_port}(?!\d)", f"localhost:{local}", text)
        text = re.sub(r"(redis://127\.0\.0\.1:6379)/\d+", rf"\g<1>/{REDIS_DB}", text)
        mounts = self.mounts(name)
        for target in sorted(mounts, key=len, reverse=True):
            pattern = rf"(?<![\w/]){re.escape(target)}(?=[/\"'\s:]|$)"
            text = re.sub(pattern, str(mounts[target]), text, flags=re.M)
        return text

    def argv(self, name: str, argv: list[str]) -> list[str]:
        out = []
        for index, arg in enumerate(argv):
            previous = argv[index - 1] if index else ""
            if previous == "--host" and arg == "0.0.0.0":
                arg = "127.0.0.1"
            elif previous == "--port" and arg.isdigit():
                arg = str(self.ports[name][int(arg)])
            out.append(self.translate(name, arg))
        return out

    def environment(self, name: str) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {"HOME": str(self.directory / "home"), "LANG": "C.UTF-8"}
        env["PATH"] = os.environ["PATH"]
        service = self.compose["services"][name]
        for key, value in {
            **(image_env() if self.ours(service) else {}),
            **service_env(service),
        }.items():
            value = value.replace("/opt/gateway/bin", venv_bin).replace("$PATH", env["PATH"])
            env[key] = self.translate(name, value)
        return env

    def raw_command(self, name: str) -> list[str]:
        """The container's argv: entrypoint + command, the image's where the service sets none."""
        service = self.compose["services"][name]
        if not self.ours(service):
            return as_argv(service.get("command"))
        if "entrypoint" in service:
            # compose: a new entrypoint drops the image's CMD
            return as_argv(service["entrypoint"]) + as_argv(service.get("command"))
        image_entry = exec_form(image_instruction("ENTRYPOINT").args) or []
        image_cmd = exec_form(image_instruction("CMD").args) or []
        return image_entry + (as_argv(service["command"]) if "command" in service else image_cmd)

    def command(self, name: str) -> list[str]:
        return self.argv(name, self.raw_command(name))

    def workdir(self, name: str) -> Path:
        path = self.local_path(name, image_instruction("WORKDIR").args)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, name: str, run: str = "") -> subprocess.Popen:
        """Run the service's process; `run` names a second run's log."""
        self.prepare(name)
        log = (self.directory / "logs" / f"{name}{run}.log").open("wb")
        proc = subprocess.Popen(
            self.command(name),
            cwd=self.workdir(name),
            env=self.environment(name),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = proc
        return proc

    def log(self, name: str, run: str = "") -> str:
        return (self.directory / "logs" / f"{name}{run}.log").read_text(errors="replace")

    def healthcheck(self, name: str) -> list[str] | None:
        service = self.compose["services"][name]
        check = service.get("healthcheck")
        if check is None and self.ours(service):
            return self.argv(name, healthcheck_argv(image_instruction("HEALTHCHECK").args))
        if check is None or check.get("disable"):
            return None
        test = check["test"]
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        argv = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
        return self.argv(name, argv)

    def healthy(self, name: str) -> bool:
        argv = self.healthcheck(name)
        assert argv is not None, f"{name} has no healthcheck"
        if shutil.which(argv[0], path=self.environment(name)["PATH"]) is None:
            pytest.skip(f"{argv[0]} is not installed here")
        done = subprocess.run(
            argv,
            env=self.environment(name),
            cwd=self.workdir(name),
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0

    def wait_healthy(self, name: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not self.healthy(name):
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not become healthy:\n{self.log(name)}")
            time.sleep(0.2)

    def up(self, name: str, done: set[str]) -> None:
        """Start a service after its dependencies meet their conditions (compose's order)."""
        if name in done:
            return
        service = self.compose["services"][name]
        for dependency, rule in (service.get("depends_on") or {}).items():
            self.up(dependency, done)
            condition = rule["condition"] if isinstance(rule, dict) else "service_started"
            if condition == "service_completed_successfully":
                code = self.processes[dependency].wait(timeout=60)
                assert code == 0, f"{dependency} exited with {code}:\n{self.log(dependency)}"
            elif condition == "service_healthy":
                self.wait_healthy(dependency)
        if self.ours(service):
            self.start(name)
        done.add(name)

    def down(self) -> dict[str, int | None]:
        codes = {}
        for name, proc in reversed(list(self.processes.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            codes[name] = proc.returncode
        return codes


def redis_db():
    import redis

    return redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[LocalStack]:
    need_port("redis", 6379)
    directory = tmp_path_factory.mktemp("compose")
    (directory / "logs").mkdir()
    (directory / "home").mkdir()
    db = redis_db()
    db.flushdb()
    # the README's plain `docker compose up`: no DEMO_PASSWORD, so init makes one up
    local = LocalStack(load_compose({}), directory)
    try:
        local.up("gateway", set())
        local.wait_healthy("gateway")
        yield local
    finally:
        local.down()
        db.flushdb()
        db.close()


def demo_password(stack: LocalStack) -> str:
    match = re.search(r"sign in as demo / (\S+)", stack.log("init"))
    assert match, stack.log("init")
    return match.group(1)


def test_stack_signs_in_through_the_gateway_and_reaches_both_upstreams(
    stack: LocalStack,
) -> None:
    port = stack.port("gateway")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 302
        assert page.headers["location"] == f"http://localhost:{port}/.auth/login?next=%2F"
        assert client.get("/api/public").json() == {"message": "public data, no login needed"}
        assert client.get("/api/me").status_code == 401

        login = client.post(
            "/.auth/login", json={"username": "demo", "password": demo_password(stack)}
        )
        assert login.status_code == 200, login.text
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert '<strong id="user">demo</strong>' in page.text
        assert client.get("/api/me").json() == {"user": "demo", "roles": ["staff"]}
        assert client.get("/api/admin").status_code == 403
    # the sessions live in the stack's Redis, not in a file next to the gateway
    assert redis_db().dbsize() > 0
    assert not list(stack.directory.rglob("*.db"))


def test_stack_keeps_keys_and_users_on_their_volumes(stack: LocalStack) -> None:
    keys = stack.directory / "volumes" / "gateway-keys"
    users = stack.directory / "volumes" / "gateway-data" / "users.toml"
    assert any(keys.iterdir())
    assert users.stat().st_mode & 0o077 == 0
    assert demo_password(stack) not in users.read_text()


def test_init_is_idempotent_on_the_next_up(stack: LocalStack) -> None:
    proc = stack.start("init", run="-again")
    assert proc.wait(timeout=60) == 0
    assert "user demo exists" in stack.log("init", run="-again")


def test_stack_gateway_stops_cleanly_on_sigterm(stack: LocalStack) -> None:
    proc = stack.processes["gateway"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, stack.log("gateway")
