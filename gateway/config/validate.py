"""Validation: a parsed gateway.toml becomes a Config, or every bad field is named at once.

Each table is read against the dataclass it becomes: a key left out takes that field's default
from gateway/config/model.py, so no default is written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.auth.secret_strength import weakness
from gateway.config import values as v
from gateway.config.model import (
    Algorithm,
    AuditConfig,
    AuthConfig,
    ClientAuth,
    Config,
    IdentityConfig,
    KeysConfig,
    LdapConfig,
    LoginLimitsConfig,
    MfaConfig,
    OidcConfig,
    Revocation,
    Route,
    RouteAuth,
    SameSite,
    ServerConfig,
    SessionConfig,
    SqlUsersConfig,
    StoreConfig,
    TelemetryConfig,
    UsersSource,
    local_url,
    webauthn_usable,
)
from gateway.core.casefold import ascii_lower

_ROLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_SECTIONS = (
    "server",
    "auth",
    "session",
    "keys",
    "store",
    "login_limits",
    "identity",
    "audit",
    "telemetry",
    "mfa",
)
_FROM_MODEL: Any = object()  # get()'s default: the model field's own default


class ConfigError(Exception):
    """The config is invalid; `errors` holds one line per problem, each naming its field path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def model_defaults(model: type) -> dict[str, Any]:
    """The defaults a config dataclass declares, by field name (required fields left out)."""
    out: dict[str, Any] = {}
    for spec in fields(model):
        if spec.default is not MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            out[spec.name] = spec.default_factory()
    return out


class _Reader:
    """Reads one table of the raw config, recording errors instead of raising on the first.

    A key left out takes the default declared on `model`, the dataclass the table becomes.
    """

    def __init__(
        self, raw: object, path: str, errors: list[str], model: type | None = None
    ) -> None:
        self.path = path
        self.errors = errors
        self.defaults = model_defaults(model) if model is not None else {}
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

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = _FROM_MODEL) -> Any:
        self.seen.add(key)
        if default is _FROM_MODEL:
            default = self.defaults[key]
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


_URL_SECRET = re.compile(r"(?i)(://)[^/@?#\s]*@|((?:^|[?&])[a-z_]*password=)[^&#\s]*")


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, str) and "://" in value:
        # an error about a URL never repeats its password (userinfo or a ...password= option)
        value = _URL_SECRET.sub(lambda m: f"{m[1]}***@" if m[1] else f"{m[2]}***", value)
    return repr(value)


def validate_config(
    raw: dict[str, Any],
    base_dir: Path,
    errors: list[str] | None = None,
    source: Path | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """Check an interpolated TOML document against the model; raise ConfigError listing all.

    `errors` may already hold what loading found (an unset ${VAR}): those fields are skipped
    here, and every line is reported. Relative paths are taken from `base_dir`.
    """
    errors = [] if errors is None else errors
    top = _Reader(raw, "", errors)
    top.seen.update(_SECTIONS)
    server = _server(_Reader(raw.get("server"), "server", errors, ServerConfig))
    auth = _auth(_Reader(raw.get("auth"), "auth", errors, AuthConfig), base_dir)
    session = _session(
        _Reader(raw.get("session"), "session", errors, SessionConfig), server.public_url
    )
    keys = _keys(_Reader(raw.get("keys"), "keys", errors, KeysConfig), base_dir)

    r = _Reader(raw.get("store"), "store", errors, StoreConfig)
    store = StoreConfig(url=r.get("url", v.store_url))
    r.finish()

    r = _Reader(raw.get("login_limits"), "login_limits", errors, LoginLimitsConfig)
    limits = LoginLimitsConfig(
        max_failures=r.get("max_failures", v.positive_int),
        window=r.get("window", v.positive_duration),
        lockout=r.get("lockout", v.positive_duration),
    )
    r.finish()

    r = _Reader(raw.get("identity"), "identity", errors, IdentityConfig)
    identity = _identity(r)
    r.finish()

    r = _Reader(raw.get("audit"), "audit", errors, AuditConfig)
    audit_file = r.get("file", v.string, default="")
    audit = AuditConfig(file=base_dir / audit_file if audit_file.strip() else None)
    r.finish()

    r = _Reader(raw.get("telemetry"), "telemetry", errors, TelemetryConfig)
    telemetry = TelemetryConfig(
        otlp_endpoint=r.get("otlp_endpoint", lambda x: v.http_url(x) if v.string(x) else ""),
        service_name=r.get("service_name", v.nonempty),
    )
    r.finish()

    mfa = _mfa(_Reader(raw.get("mfa"), "mfa", errors, MfaConfig), server.public_url)

    routes = _routes(raw.get("routes"), identity, auth.prefix, errors, require_upstream)
    stepped_up = [index for index, route in enumerate(routes) if route.mfa]
    if (stepped_up or mfa.required) and not (mfa.totp or webauthn_usable(mfa, server.public_url)):
        where = "mfa.required" if mfa.required else f"routes[{stepped_up[0]}].mfa"
        why = (
            "webauthn needs server.public_url on a domain name, not an IP address"
            if mfa.webauthn
            else "[mfa] turns both totp and webauthn off"
        )
        errors.append(f"{where}: asks for a second factor, but {why}")
    for index, route in enumerate(routes):
        if route.pass_access_token and not auth.oidc:
            errors.append(
                f"routes[{index}].pass_access_token: needs an [[auth.oidc]] provider, "
                "whose access token it passes"
            )
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
        audit=audit,
        telemetry=telemetry,
        mfa=mfa,
    )


def _mfa(r: _Reader, public_url: str) -> MfaConfig:
    host = (urlsplit(public_url).hostname or "").lower()
    rp_id = r.get("rp_id", v.string).strip().lower()
    # WebAuthn: the relying party id is the page's host or a registrable suffix of it
    if rp_id and host and not (host == rp_id or host.endswith("." + rp_id)):
        r.fail(
            "mfa.rp_id",
            rp_id,
            f"must be server.public_url's host {host!r} or a domain it is under "
            "(browsers refuse any other relying party)",
        )
        rp_id = ""
    config = MfaConfig(
        totp=r.get("totp", v.boolean),
        webauthn=r.get("webauthn", v.boolean),
        issuer=r.get("issuer", _totp_issuer),
        rp_id=rp_id,
        required=r.get("required", v.boolean),
    )
    r.finish()
    return config


def _totp_issuer(value: object) -> str:
    text = v.nonempty(value)
    # authenticator apps split "issuer:account" on the colon; keep the label readable
    if ":" in text or len(text) > 64 or not text.isprintable():
        raise ValueError("must be a printable name of at most 64 characters, without ':'")
    return text


def _server(r: _Reader) -> ServerConfig:
    listen, host, port = _address(r, "listen", "host", "port")
    public_url = r.get("public_url", v.http_url, default=local_url(port))
    trusted_proxies = r.get("trusted_proxies", v.networks)
    admin_listen, admin_host, admin_port = _address(r, "admin_listen", "admin_host", "admin_port")
    server = ServerConfig(
        listen=listen,
        host=host,
        port=port,
        public_url=public_url,
        trusted_proxies=trusted_proxies,
        admin_listen=admin_listen,
        admin_host=admin_host,
        admin_port=admin_port,
        allowed_origins=r.get("allowed_origins", v.origins),
        max_request_line=r.get("max_request_line", v.positive_int),
        max_header_bytes=r.get("max_header_bytes", v.positive_int),
        max_headers=r.get("max_headers", v.positive_int),
        header_timeout=r.get("header_timeout", v.positive_duration),
        max_response_header_bytes=r.get("max_response_header_bytes", v.positive_int),
        max_response_headers=r.get("max_response_headers", v.positive_int),
    )
    r.finish()
    return server


def _address(r: _Reader, key: str, host_field: str, port_field: str) -> tuple[str, str, int]:
    """One "host:port" key, kept as written and as the host and port fields it fills."""
    default = (r.defaults[key], r.defaults[host_field], r.defaults[port_field])
    return r.get(key, v.listen, default=default)


def _auth(r: _Reader, base_dir: Path) -> AuthConfig:
    prefix = r.get("prefix", v.prefix)
    users = r.get("users", v.one_of(UsersSource))
    users_file = base_dir / r.get("users_file", v.file_path)
    refresh = r.get("refresh", v.positive_duration)
    htpasswd_file = base_dir / r.get("htpasswd_file", v.file_path)
    htpasswd_allow_weak_hashes = r.get("htpasswd_allow_weak_hashes", v.boolean)
    htpasswd_roles = r.get("htpasswd_roles", _roles)
    r.seen.add("sql")
    s = _Reader(r.raw.get("sql"), "auth.sql", r.errors, SqlUsersConfig)
    sql = SqlUsersConfig(
        dsn=s.get("dsn", v.nonempty),
        query=s.get("query", v.nonempty),
        roles_query=s.get("roles_query", v.string),
        allow_weak_hashes=s.get("allow_weak_hashes", v.boolean),
    )
    s.finish()
    r.seen.add("ldap")
    ldap = _ldap(_Reader(r.raw.get("ldap"), "auth.ldap", r.errors, LdapConfig), base_dir, users)
    r.seen.add("oidc")
    oidc = _oidc_providers(r.raw.get("oidc"), users, r.errors)
    errors = r.errors
    if users == "sql":
        if not sql.dsn:
            errors.append('auth.sql.dsn: missing; users = "sql" needs a database URL')
        if not sql.query:
            errors.append('auth.sql.query: missing; users = "sql" needs a query with :username')
        elif ":username" not in sql.query:
            errors.append(f"auth.sql.query: {sql.query!r} does not use the :username parameter")
        if sql.dsn and (problem := v.sql_dsn_problem(sql.dsn)):
            errors.append(f"auth.sql.dsn: {problem}")
    auth = AuthConfig(
        prefix=prefix,
        users=users,
        users_file=users_file,
        refresh=refresh,
        htpasswd_file=htpasswd_file,
        htpasswd_allow_weak_hashes=htpasswd_allow_weak_hashes,
        htpasswd_roles=htpasswd_roles,
        sql=sql,
        ldap=ldap,
        oidc=oidc,
    )
    r.finish()
    return auth


_OIDC_NAME = re.compile(r"^[a-z0-9](?:-?[a-z0-9]){0,31}$")
_ID_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}:$")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _issuer(value: object) -> str:
    """An issuer URL: https (plain http only on this machine), no query or fragment."""
    text = v.string(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("is not an https:// URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ValueError("must be https:// (plain http only for a provider on 127.0.0.1)")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("must have no query, fragment or user info")
    return text


def _claim(value: object) -> str:
    text = v.string(value)
    if text and not _CLAIM.fullmatch(text):
        raise ValueError("is not a claim name")
    return text


def _role_map(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError("must be a table of provider role = our role")
    out = []
    for theirs, ours in value.items():
        if not isinstance(ours, str) or not _ROLE.fullmatch(ours):
            raise ValueError(f"maps {theirs!r} to {ours!r}, which is not a role name")
        out.append((str(theirs), ours))
    return tuple(out)


def _domains(value: object) -> tuple[str, ...]:
    names = tuple(ascii_lower(d.strip().lstrip("@")) for d in v.string_list(value))
    for name in names:
        if not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
            raise ValueError(f"has {name!r}, which is not a domain name")
    return names


def _oidc_providers(raw: object, users: str, errors: list[str]) -> tuple[OidcConfig, ...]:
    """`[[auth.oidc]]`: each provider, then the rule that no two sources share an id."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("auth.oidc: must be a list of [[auth.oidc]] tables")
        return ()
    providers: list[OidcConfig] = []
    for index, item in enumerate(raw):
        path = f"auth.oidc[{index}]"
        r = _Reader(item, path, errors, OidcConfig)
        before = len(errors)
        for key in ("name", "issuer", "client_id", "client_secret"):
            if key not in r.raw:
                errors.append(f"{path}.{key}: missing")
        name = r.get("name", v.string, default="")
        if "name" in r.raw and not _OIDC_NAME.fullmatch(name):
            errors.append(f"{path}.name: {name!r} is not 1-32 of a-z, 0-9 and single '-'")
        scopes = r.get("scopes", v.string_list)
        if "openid" not in scopes:
            errors.append(f'{path}.scopes: {list(scopes)!r} lacks "openid"')
        prefix = r.get("id_prefix", v.string)
        if prefix and not _ID_PREFIX.fullmatch(prefix):
            errors.append(
                f"{path}.id_prefix: {prefix!r} is not 1-32 of a-z 0-9 . _ - followed by ':'"
            )
        elif prefix == "service:":
            errors.append(f"{path}.id_prefix: 'service:' is the service accounts' own")
        provider = OidcConfig(
            name=name,
            issuer=r.get("issuer", _issuer, default=""),
            client_id=r.get("client_id", v.nonempty, default=""),
            client_secret=r.get("client_secret", v.nonempty, default=""),
            title=r.get("title", v.string),
            scopes=scopes,
            token_endpoint_auth_method=r.get("token_endpoint_auth_method", v.one_of(ClientAuth)),
            user_claim=r.get("user_claim", lambda x: _claim(v.nonempty(x))),
            roles_claim=r.get("roles_claim", _claim),
            role_map=r.get("role_map", _role_map),
            allowed_domains=r.get("allowed_domains", _domains),
            allowed_roles=r.get("allowed_roles", _roles),
            id_prefix=prefix,
            end_session=r.get("end_session", v.boolean),
            timeout=r.get("timeout", v.positive_duration),
        )
        r.finish()
        if len(errors) > before:
            continue
        if any(p.name == name for p in providers):
            errors.append(f"{path}.name: {name!r} is already used by another provider")
            continue
        providers.append(provider)
    # identities from two sources can never be taken for each other (README): with more than
    # one source, every provider's ids carry a prefix of its own, none the start of another;
    # the password source's ids may start with none of them (refused at sign-in)
    sources = len(providers) + (users != "none")
    if sources > 1:
        for index, provider in enumerate(providers):
            if not provider.id_prefix:
                other = "the password source" if users != "none" else "another provider"
                errors.append(
                    f"auth.oidc[{index}].id_prefix: missing; {provider.name!r} and {other} "
                    f'could give the same user id: set one, e.g. "{provider.name}:"'
                )
        prefixes = [p.id_prefix for p in providers if p.id_prefix]
        for i, a in enumerate(prefixes):
            for j, b in enumerate(prefixes):
                if i < j and (b.startswith(a) or a.startswith(b)):
                    errors.append(
                        f"auth.oidc: id_prefix {a!r} and {b!r}: one is the start of the other, "
                        "so ids could clash"
                    )
    return tuple(providers)


def _ldap(r: _Reader, base_dir: Path, users: str) -> LdapConfig:
    ca_file = r.get("ca_file", v.string)
    ldap = LdapConfig(
        url=r.get("url", v.ldap_url),
        start_tls=r.get("start_tls", v.boolean),
        ca_file=base_dir / ca_file if ca_file else None,
        bind_dn=r.get("bind_dn", v.string),
        bind_password=r.get("bind_password", v.string),
        base_dn=r.get("base_dn", v.string),
        user_filter=r.get("user_filter", v.ldap_filter),
        user_attribute=r.get("user_attribute", v.ldap_attribute),
        group_base_dn=r.get("group_base_dn", v.string),
        group_filter=r.get("group_filter", v.ldap_filter),
        member_of_attribute=r.get("member_of_attribute", lambda x: v.string(x).strip()),
        nested_groups=r.get("nested_groups", v.boolean),
        role_attribute=r.get("role_attribute", v.ldap_attribute),
        timeout=r.get("timeout", v.positive_duration),
        pool_size=r.get("pool_size", v.positive_int),
    )
    r.finish()
    if users != "ldap":
        return ldap
    errors = r.errors
    need = 'users = "ldap" needs'
    for key, what in (
        ("bind_dn", "the DN of the service account that searches"),
        ("bind_password", 'the service account\'s password, e.g. "${LDAP_PASSWORD}"'),
        ("base_dn", "the DN to search for users under"),
    ):
        unset = any(e.startswith(f"auth.ldap.{key}: environment") for e in errors)
        if not getattr(ldap, key).strip() and not unset:
            errors.append(f"auth.ldap.{key}: missing; {need} {what}")
    if ldap.user_filter and "{username}" not in ldap.user_filter:
        errors.append(f"auth.ldap.user_filter: {ldap.user_filter!r} does not use {{username}}")
    elif not ldap.user_filter:
        errors.append(f"auth.ldap.user_filter: missing; {need} a filter with {{username}}")
    if ldap.group_filter and not ("{dn}" in ldap.group_filter or "{username}" in ldap.group_filter):
        errors.append(
            f"auth.ldap.group_filter: {ldap.group_filter!r} uses neither {{dn}} nor {{username}}"
        )
    if ldap.nested_groups and "{dn}" not in ldap.group_filter and not ldap.member_of_attribute:
        errors.append(
            "auth.ldap.nested_groups: needs a group_filter with {dn} or a member_of_attribute"
        )
    if ldap.start_tls and ldap.url.startswith("ldaps://"):
        errors.append("auth.ldap.start_tls: not with an ldaps:// url, which is TLS already")
    if ldap.ca_file is not None and not ldap.ca_file.is_file():
        errors.append(f"auth.ldap.ca_file: {str(ldap.ca_file)!r} is not a file")
    if not ldap.group_base_dn:
        ldap = replace(ldap, group_base_dn=ldap.base_dn)
    return ldap


def _roles(value: object) -> tuple[str, ...]:
    """Roles a source gives: the names `gateway users add --roles` takes, once each."""
    roles = v.string_list(value)
    for role in roles:
        # a role goes into X-User-Roles, joined by commas: one must not split or end it
        if not _ROLE.fullmatch(role):
            raise ValueError(f"has {role!r}; a role is 1-64 letters, digits, '.', '_', ':', '-'")
    return tuple(dict.fromkeys(roles))


_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _cookie_domain(value: object) -> str:
    """`session.domain`: a plain DNS name of two labels or more, lower-cased; "" = none.

    Browsers refuse a Domain that is a public suffix; two labels is the part of that rule a
    config can be held to without a copy of the Public Suffix List.
    """
    text = v.string(value)
    if not text:
        return ""
    if not text.isascii():
        raise ValueError("is not ASCII; write an internationalized name in its xn-- form")
    text = ascii_lower(text)
    if text.startswith("."):
        raise ValueError('starts with a dot; write the domain itself, e.g. "corp.test"')
    labels = text.split(".")
    if len(text) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            "is not a DNS name: dot-separated labels of letters, digits and '-', "
            "without scheme, port, path or a trailing dot"
        )
    if len(labels) < 2:
        raise ValueError(
            'is a single label, which browsers treat as a public suffix; use e.g. "corp.test"'
        )
    if labels[-1].isdigit():
        raise ValueError("is an IP address; a cookie domain is a DNS name")
    return text


def _session(r: _Reader, public_url: str) -> SessionConfig:
    session = SessionConfig(
        cookie=r.get("cookie", v.cookie_name),
        access_ttl=r.get("access_ttl", v.positive_duration),
        max_age=r.get("max_age", v.positive_duration),
        idle_timeout=r.get("idle_timeout", v.positive_duration),
        same_site=r.get("same_site", v.one_of(SameSite)),
        secure=r.get("secure", v.secure),
        revocation=r.get("revocation", v.one_of(Revocation)),
        domain=r.get("domain", _cookie_domain),
    )
    r.finish()
    host = (urlsplit(public_url).hostname or "").rstrip(".")
    if session.domain and host != session.domain and not host.endswith("." + session.domain):
        # the sign-in portal sets the cookie: it must be one of the hosts the cookie covers
        r.errors.append(
            f"session.domain: {session.domain!r} does not cover server.public_url's host "
            f"{host!r}; public_url must be on that domain or a host under it"
        )
    if session.access_ttl > session.max_age:
        r.errors.append(
            f"session.access_ttl: {session.access_ttl:g}s is longer than "
            f"session.max_age ({session.max_age:g}s)"
        )
    return session


def _keys(r: _Reader, base_dir: Path) -> KeysConfig:
    keys = KeysConfig(
        algorithm=r.get("algorithm", v.one_of(Algorithm)),
        dir=base_dir / r.get("dir", v.file_path),
        secret=r.get("secret", v.string),
    )
    r.finish()
    weak = weakness(keys.secret) if keys.algorithm == "HS256" else None
    if weak:
        # a guessable secret lets anyone sign a token as any user, offline
        r.errors.append(
            f"keys.secret: {weak}; make one with `gateway keys secret` and set it from the "
            'environment, e.g. "${GATEWAY_SECRET}"'
        )
    if keys.algorithm != "HS256" and keys.secret:
        r.errors.append(f"keys.secret: only used with HS256, not {keys.algorithm!r}; remove it")
    return keys


def _identity(r: _Reader, inherited: IdentityConfig | None = None) -> IdentityConfig:
    """The identity headers; unset keys take `inherited` (a route's: [identity]) or the model's."""

    def unset(name: str) -> Any:
        return _FROM_MODEL if inherited is None else getattr(inherited, name)

    return IdentityConfig(
        user_header=r.get("user_header", v.header_name, unset("user_header")),
        roles_header=r.get("roles_header", v.optional_header_name, unset("roles_header")),
        assertion_header=r.get(
            "assertion_header", v.optional_header_name, unset("assertion_header")
        ),
        roles_header_limit=r.get("roles_header_limit", v.header_limit, unset("roles_header_limit")),
        assertion_binds_request=r.get(
            "assertion_binds_request", v.boolean, unset("assertion_binds_request")
        ),
    )


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
        r = _Reader(item, path, errors, Route)
        before = len(errors)
        # name, path and upstream have no default: a missing one is an error, reported below
        name = r.get("name", v.route_name, default=f"route{index}")
        route_path = r.get("path", v.route_path, default=None)
        upstream = r.get("upstream", v.http_url, default=None)
        if "path" not in r.raw:
            errors.append(f"{path}.path: missing")
        if "upstream" not in r.raw and require_upstream:
            errors.append(f"{path}.upstream: missing")
        if "name" not in r.raw:
            errors.append(f"{path}.name: missing")
        auth = r.get("auth", v.one_of(RouteAuth))
        roles = r.get("roles", v.string_list)
        users = r.get("users", _route_users)
        networks = r.get("networks", v.networks)
        bypass = r.get("bypass_networks", v.networks)
        mfa = r.get("mfa", v.boolean)
        for key, value in (
            ("roles", roles),
            ("users", users),
            ("bypass_networks", bypass),
            ("mfa", mfa),
        ):
            if value and auth != "required":
                errors.append(f'{path}.{key}: {key} need auth = "required", not {auth!r}')
        # a route may override the [identity] headers with the same keys
        route_identity = _identity(r, identity)
        route = Route(
            name=name,
            path=route_path or "/",
            upstream=upstream or "",
            host=r.get("host", v.host),
            auth=auth,
            roles=roles,
            users=users,
            networks=networks,
            bypass_networks=bypass,
            methods=r.get("methods", v.methods),
            strip_prefix=r.get("strip_prefix", v.boolean),
            timeout=r.get("timeout", v.positive_duration),
            case_sensitive=r.get("case_sensitive", v.boolean),
            preserve_host=r.get("preserve_host", v.boolean),
            strip_headers=r.get("strip_headers", v.header_names),
            bearer=r.get("bearer", v.boolean),
            websocket=r.get("websocket", v.boolean),
            pass_access_token=r.get("pass_access_token", v.boolean),
            access_token_header=r.get("access_token_header", v.header_name),
            mfa=mfa,
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


def _route_users(value: object) -> tuple[str, ...]:
    """`users`: names in the one canonical spelling every source signs them in with."""
    # imported here: gateway.sources imports gateway.config
    from gateway.sources.base import canonical_username

    names = tuple(dict.fromkeys(canonical_username(name) for name in v.string_list(value)))
    if any(not name or not name.isprintable() for name in names):
        raise ValueError("has an empty or unprintable name")
    return names


def _under(path: str, prefix: str) -> bool:
    p, q = ascii_lower(path), ascii_lower(prefix)
    return p == q or p.startswith(q + "/")
