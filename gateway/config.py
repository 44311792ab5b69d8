"""The config model: load gateway.toml, interpolate ${ENV}, validate once, name every bad field."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.secret_strength import weakness
from gateway.core.casefold import ascii_lower

DEFAULT_CONFIG = "gateway.toml"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class ConfigError(Exception):
    """The config is invalid; `errors` holds one line per problem, each naming its field path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ServerConfig:
    """Where the gateway listens and how it names itself."""

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://localhost:8000"
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    admin_listen: str = "127.0.0.1:9100"
    allowed_origins: tuple[str, ...] = ()
    # protocol limits enforced by gateway/protocol.py (uvicorn's httptools mode has none)
    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    # bounds on an upstream's response head, enforced by gateway/upstream_pool.py
    max_response_header_bytes: int = 65536
    max_response_headers: int = 100


@dataclass(frozen=True)
class SqlUsersConfig:
    """An existing database that holds the users (`auth.users = "sql"`)."""

    dsn: str = ""
    query: str = ""
    roles_query: str = ""
    allow_weak_hashes: bool = False


@dataclass(frozen=True)
class AuthConfig:
    """The gateway's own endpoints and where credentials live."""

    prefix: str = "/.auth"
    users: str = "file"
    users_file: Path = Path("users.toml")
    sql: SqlUsersConfig = field(default_factory=SqlUsersConfig)


@dataclass(frozen=True)
class SessionConfig:
    """The cookie and the lifetimes of token and session."""

    cookie: str = "gw_session"
    access_ttl: float = 900.0
    max_age: float = 7 * 86400.0
    idle_timeout: float = 86400.0
    same_site: str = "lax"
    secure: str | bool = "auto"
    revocation: str = "lazy"


@dataclass(frozen=True)
class KeysConfig:
    """How tokens are signed."""

    algorithm: str = "EdDSA"
    dir: Path = Path("data/keys")
    secret: str = ""


@dataclass(frozen=True)
class StoreConfig:
    """Where sessions and counters live."""

    url: str = "sqlite:///data/gateway.db"


@dataclass(frozen=True)
class LoginLimitsConfig:
    """Brute-force limits on login."""

    max_failures: int = 5
    window: float = 300.0
    lockout: float = 900.0


@dataclass(frozen=True)
class IdentityConfig:
    """The headers the upstream receives."""

    user_header: str = "X-User-Id"
    roles_header: str = "X-User-Roles"
    assertion_header: str = "X-Gateway-Assertion"


@dataclass(frozen=True)
class Route:
    """One `[[routes]]` entry: which requests, which upstream, which policy."""

    name: str
    path: str
    upstream: str  # "" when loaded for the ASGI/WSGI middleware, whose app takes its place
    host: str | None = None
    auth: str = "required"
    roles: tuple[str, ...] = ()
    methods: frozenset[str] | None = None
    strip_prefix: bool = False
    timeout: float = 30.0
    case_sensitive: bool = False
    preserve_host: bool = False
    strip_headers: tuple[str, ...] = ()
    bearer: bool = True
    websocket: bool = True
    identity: IdentityConfig = field(default_factory=IdentityConfig)


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs, validated; paths already resolved against the file."""

    server: ServerConfig
    auth: AuthConfig
    session: SessionConfig
    keys: KeysConfig
    store: StoreConfig
    login_limits: LoginLimitsConfig
    identity: IdentityConfig
    routes: tuple[Route, ...]
    base_dir: Path
    source: Path | None = None

    @property
    def cookie_secure(self) -> bool:
        """Secure cookies unless told otherwise or serving plain http on localhost."""
        if isinstance(self.session.secure, bool):
            return self.session.secure
        parts = urlsplit(self.server.public_url)
        local = parts.hostname in {"localhost", "127.0.0.1", "::1"}
        return not (parts.scheme == "http" and local)

    @property
    def cookie_name(self) -> str:
        """The cookie's name: `__Host-` prefixed when Secure (we never set Domain)."""
        if self.cookie_secure:
            return "__Host-" + self.session.cookie
        return self.session.cookie


def parse_duration(value: object) -> float:
    """Turn "30s", "15m", "7d" (or a bare number of seconds) into seconds."""
    if isinstance(value, bool):
        raise ValueError("is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError('is not a duration like "30s", "15m", "12h" or "7d"')


def interpolate(value: Any, path: str, errors: list[str], env: Mapping[str, str]) -> Any:
    """Replace ${VAR} in every string of a parsed TOML tree; an unset variable is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                errors.append(f"{path}: environment variable ${{{name}}} is not set")
                return ""
            return env[name]

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else k, errors, env) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", errors, env) for i, v in enumerate(value)]
    return value


class _Reader:
    """Reads one table of the raw config, recording errors instead of raising on the first."""

    def __init__(self, raw: object, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(path, raw, "must be a table")
            raw = {}
        self.raw: dict[str, Any] = raw
        self.seen: set[str] = set()

    def fail(self, path: str, value: object, why: str) -> None:
        self.errors.append(f"{path}: {_show(value)} {why}")

    def field_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            return default
        value = self.raw[key]
        where = self.field_path(key)
        if any(error.startswith(f"{where}: environment variable") for error in self.errors):
            return default  # already reported: the variable it needs is not set
        try:
            return convert(value)
        except ValueError as exc:
            self.fail(where, value, str(exc))
            return default

    def finish(self) -> None:
        for key in self.raw:
            if key not in self.seen:
                self.errors.append(f"{self.field_path(key)}: unknown key")


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _nonempty(value: object) -> str:
    text = _string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _one_of(*allowed: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError("is not one of " + ", ".join(repr(a) for a in allowed))
        return value

    return convert


def _header_name(value: object, allow_empty: bool = False) -> str:
    text = _string(value)
    if allow_empty and text == "":
        return text
    if not _HEADER_NAME.match(text):
        raise ValueError("is not a valid header name")
    return text


def _string_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return tuple(value)


def _http_url(value: object) -> str:
    text = _string(value)
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    return text.rstrip("/")


def _listen(value: object) -> tuple[str, int]:
    text = _string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('is not "host:port"')
    return host.strip("[]"), int(port)


def _networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = _string_list(value) if value != [] else ()
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"has {item!r}, which is not an IP address or CIDR") from None
    return tuple(nets)


def _origins(value: object) -> tuple[str, ...]:
    items = _string_list(value) if value != [] else ()
    out = []
    for item in items:
        parts = urlsplit(item)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path not in "/":
            raise ValueError(f"has {item!r}, which is not an origin like https://app.example.com")
        out.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(out)


def _prefix(value: object) -> str:
    text = _string(value)
    if not re.match(r"^/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$", text) or ".." in text.split("/"):
        raise ValueError('must be an absolute path like "/.auth"')
    return text


def _route_path(value: object) -> str:
    text = _string(value)
    if not text.startswith("/") or "//" in text or any(s in {".", ".."} for s in text.split("/")):
        raise ValueError("must be an absolute path without dot segments or empty segments")
    if any(ch in text for ch in "?#%\\") or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain ?, #, %, backslashes, spaces or control characters")
    return text.rstrip("/") or "/"


def _host(value: object) -> str:
    text = ascii_lower(_string(value))
    if not re.match(r"^[a-z0-9.-]+(:\d+)?$", text):
        raise ValueError("is not a host name")
    return text


def _methods(value: object) -> frozenset[str]:
    items = _string_list(value)
    upper = {m.upper() for m in items}
    bad = sorted(upper - HTTP_METHODS)
    if bad:
        raise ValueError(f"has unknown method {bad[0]!r}")
    if "GET" in upper:
        upper.add("HEAD")
    return frozenset(upper)


def _cookie_name(value: object) -> str:
    text = _string(value)
    if not _COOKIE_NAME.match(text) or text.lower().startswith(("__host-", "__secure-")):
        raise ValueError("must be letters, digits, - or _ (the __Host- prefix is added for you)")
    return text


def _secure(value: object) -> str | bool:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError('must be "auto", true or false')


def _identity(reader: _Reader, defaults: IdentityConfig) -> IdentityConfig:
    return IdentityConfig(
        user_header=reader.get("user_header", defaults.user_header, _header_name),
        roles_header=reader.get(
            "roles_header", defaults.roles_header, lambda v: _header_name(v, True)
        ),
        assertion_header=reader.get(
            "assertion_header", defaults.assertion_header, lambda v: _header_name(v, True)
        ),
    )


def _path(base: Path) -> Callable[[object], Path]:
    def convert(value: object) -> Path:
        path = Path(_nonempty(value))
        return path if path.is_absolute() else base / path

    return convert


def build_config(
    raw: dict[str, Any],
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem.

    `require_upstream=False` is the middleware's reading: a route may omit `upstream`.
    """
    errors: list[str] = []
    raw = interpolate(raw, "", errors, os.environ if env is None else env)
    top = _Reader(raw, "", errors)
    for key in ("server", "auth", "session", "keys", "store", "login_limits", "identity"):
        top.seen.add(key)

    r = _Reader(raw.get("server"), "server", errors)
    host, port = r.get("listen", ("127.0.0.1", 8000), _listen)
    server = ServerConfig(
        host=host,
        port=port,
        public_url=r.get("public_url", f"http://localhost:{port}", _http_url),
        trusted_proxies=r.get("trusted_proxies", (), _networks),
        admin_listen=r.get("admin_listen", "127.0.0.1:9100", lambda v: (_listen(v), v)[1]),
        allowed_origins=r.get("allowed_origins", (), _origins),
        max_request_line=r.get("max_request_line", 8192, _positive_int),
        max_header_bytes=r.get("max_header_bytes", 32768, _positive_int),
        max_headers=r.get("max_headers", 100, _positive_int),
        header_timeout=r.get("header_timeout", 10.0, _positive_duration),
        max_response_header_bytes=r.get("max_response_header_bytes", 65536, _positive_int),
        max_response_headers=r.get("max_response_headers", 100, _positive_int),
    )
    r.finish()

    r = _Reader(raw.get("auth"), "auth", errors)
    prefix = r.get("prefix", "/.auth", _prefix)
    users = r.get("users", "file", _one_of("file", "sql"))
    users_file = r.get("users_file", base_dir / "users.toml", _path(base_dir))
    r.seen.add("sql")
    s = _Reader(r.raw.get("sql"), "auth.sql", errors)
    sql = SqlUsersConfig(
        dsn=s.get("dsn", "", _nonempty),
        query=s.get("query", "", _nonempty),
        roles_query=s.get("roles_query", "", _string),
        allow_weak_hashes=s.get("allow_weak_hashes", False, _bool),
    )
    s.finish()
    if users == "sql":
        if not sql.dsn:
            errors.append('auth.sql.dsn: missing; users = "sql" needs a database URL')
        if not sql.query:
            errors.append('auth.sql.query: missing; users = "sql" needs a query with :username')
        elif ":username" not in sql.query:
            errors.append(f"auth.sql.query: {sql.query!r} does not use the :username parameter")
        if sql.dsn and (problem := _sql_dsn_problem(sql.dsn)):
            errors.append(f"auth.sql.dsn: {problem}")
    auth = AuthConfig(prefix=prefix, users=users, users_file=users_file, sql=sql)
    r.finish()

    r = _Reader(raw.get("session"), "session", errors)
    session = SessionConfig(
        cookie=r.get("cookie", "gw_session", _cookie_name),
        access_ttl=r.get("access_ttl", 900.0, _positive_duration),
        max_age=r.get("max_age", 7 * 86400.0, _positive_duration),
        idle_timeout=r.get("idle_timeout", 86400.0, _positive_duration),
        same_site=r.get("same_site", "lax", _one_of("lax", "strict", "none")),
        secure=r.get("secure", "auto", _secure),
        revocation=r.get("revocation", "lazy", _one_of("lazy", "strict")),
    )
    r.finish()
    if session.access_ttl > session.max_age:
        errors.append(
            f"session.access_ttl: {session.access_ttl:g}s is longer than "
            f"session.max_age ({session.max_age:g}s)"
        )

    r = _Reader(raw.get("keys"), "keys", errors)
    keys = KeysConfig(
        algorithm=r.get("algorithm", "EdDSA", _one_of("EdDSA", "ES256", "RS256", "HS256")),
        dir=r.get("dir", base_dir / "data" / "keys", _path(base_dir)),
        secret=r.get("secret", "", _string),
    )
    r.finish()
    weak = weakness(keys.secret) if keys.algorithm == "HS256" else None
    if weak:
        # a guessable secret lets anyone sign a token as any user, offline
        errors.append(
            f"keys.secret: {weak}; make one with `gateway keys secret` and set it from the "
            'environment, e.g. "${GATEWAY_SECRET}"'
        )
    if keys.algorithm != "HS256" and keys.secret:
        errors.append(f"keys.secret: only used with HS256, not {keys.algorithm!r}; remove it")

    r = _Reader(raw.get("store"), "store", errors)
    store = StoreConfig(url=r.get("url", "sqlite:///data/gateway.db", _store_url))
    r.finish()

    r = _Reader(raw.get("login_limits"), "login_limits", errors)
    limits = LoginLimitsConfig(
        max_failures=r.get("max_failures", 5, _positive_int),
        window=r.get("window", 300.0, _positive_duration),
        lockout=r.get("lockout", 900.0, _positive_duration),
    )
    r.finish()

    r = _Reader(raw.get("identity"), "identity", errors)
    identity = _identity(r, IdentityConfig())
    r.finish()

    routes = _routes(raw.get("routes"), identity, prefix, errors, require_upstream)
    top.seen.add("routes")
    top.finish()
    if errors:
        raise ConfigError(errors)
    return Config(
        server=server,
        auth=auth,
        session=session,
        keys=keys,
        store=store,
        login_limits=limits,
        identity=identity,
        routes=routes,
        base_dir=base_dir,
        source=source,
    )


def _store_url(value: object) -> str:
    text = _nonempty(value)
    scheme = text.split(":", 1)[0]
    if scheme not in {"memory", "sqlite", "redis", "rediss"} or "://" not in text:
        raise ValueError("is not memory://, sqlite:///path or redis://host:port/db")
    return text


# the schemes whose drivers the gateway installs (psycopg, PyMySQL, the stdlib's sqlite3)
_SQL_SCHEMES = {"sqlite", "postgres", "postgresql", "postgresql+psycopg", "mysql", "mariadb"}
_SQL_SCHEMES |= {"mysql+pymysql", "mariadb+pymysql"}


def _sql_dsn_problem(dsn: str) -> str | None:
    """Why a users-database URL cannot work, without repeating it (it may hold a password)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or not rest:
        return "is not a database URL like postgresql://user@host/db (value not shown)"
    if scheme.lower() not in _SQL_SCHEMES:
        return f"scheme {scheme[:30]!r} is not sqlite, postgresql (postgres) or mysql (mariadb)"
    if scheme.lower() == "sqlite" and not rest.startswith("/"):
        return "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
    return None


def _routes(
    raw: object,
    identity: IdentityConfig,
    prefix: str,
    errors: list[str],
    require_upstream: bool = True,
) -> tuple[Route, ...]:
    if raw is None:
        errors.append("routes: missing; add at least one [[routes]] table")
        return ()
    if not isinstance(raw, list) or not raw:
        errors.append("routes: must be a non-empty list of [[routes]] tables")
        return ()
    routes: list[Route] = []
    seen_names: dict[str, int] = {}
    seen_places: dict[tuple[str | None, str], int] = {}
    for index, item in enumerate(raw):
        path = f"routes[{index}]"
        r = _Reader(item, path, errors)
        before = len(errors)
        name = r.get("name", f"route{index}", _route_name)
        route_path = r.get("path", None, _route_path)
        upstream = r.get("upstream", None, _http_url)
        if "path" not in r.raw:
            errors.append(f"{path}.path: missing")
        if "upstream" not in r.raw and require_upstream:
            errors.append(f"{path}.upstream: missing")
        if "name" not in r.raw:
            errors.append(f"{path}.name: missing")
        auth = r.get("auth", "required", _one_of("public", "optional", "required"))
        roles = r.get("roles", (), _string_list)
        if roles and auth != "required":
            errors.append(f'{path}.roles: roles need auth = "required", not {auth!r}')
        # a route may override the [identity] headers with the same keys
        route_identity = _identity(r, identity)
        route = Route(
            name=name,
            path=route_path or "/",
            upstream=upstream or "",
            host=r.get("host", None, _host),
            auth=auth,
            roles=roles,
            methods=r.get("methods", None, _methods),
            strip_prefix=r.get("strip_prefix", False, _bool),
            timeout=r.get("timeout", 30.0, _positive_duration),
            case_sensitive=r.get("case_sensitive", False, _bool),
            preserve_host=r.get("preserve_host", False, _bool),
            strip_headers=r.get(
                "strip_headers", (), lambda v: tuple(_header_name(h) for h in _string_list(v))
            ),
            bearer=r.get("bearer", True, _bool),
            websocket=r.get("websocket", True, _bool),
            identity=route_identity,
        )
        r.finish()
        if len(errors) > before:
            continue
        if name in seen_names:
            errors.append(f"{path}.name: {name!r} is already used by routes[{seen_names[name]}]")
        seen_names[name] = index
        place = (route.host, route.path if route.case_sensitive else ascii_lower(route.path))
        if place in seen_places:
            errors.append(
                f"{path}.path: {route.path!r} is already routed by routes[{seen_places[place]}]"
            )
        seen_places[place] = index
        if _under(route.path, prefix):
            errors.append(
                f"{path}.path: {route.path!r} is inside auth.prefix {prefix!r}, "
                "which the gateway serves itself"
            )
        routes.append(route)
    return tuple(routes)


def _under(path: str, prefix: str) -> bool:
    p, q = ascii_lower(path), ascii_lower(prefix)
    return p == q or p.startswith(q + "/")


def _route_name(value: object) -> str:
    text = _string(value)
    if not _ROUTE_NAME.match(text):
        raise ValueError("must be letters, digits, '.', '_' or '-'")
    return text


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file to use: the flag, else $GATEWAY_CONFIG, else ./gateway.toml."""
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """Read and validate a gateway.toml; raise ConfigError with every problem found.

    Relative paths inside are taken from the file's own folder (a symlink's, not its
    target's), or from `base_dir` when given. The middleware reads it with
    `require_upstream=False`.
    """
    file = Path(path).absolute()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: cannot be read ({exc.__class__.__name__})"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML: {exc}"]) from None
    return build_config(
        raw, base_dir or file.parent, env, source=file, require_upstream=require_upstream
    )
