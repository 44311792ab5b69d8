"""The config model: frozen dataclasses, the only place a default is written."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

# the fixed choices, written once: validation lists these very values in its errors
UsersSource = Literal["file", "sql", "htpasswd", "ldap", "none"]
ClientAuth = Literal["client_secret_basic", "client_secret_post"]
SameSite = Literal["lax", "strict", "none"]
Revocation = Literal["lazy", "strict"]
Algorithm = Literal["EdDSA", "ES256", "RS256", "HS256"]
RouteAuth = Literal["public", "optional", "required", "deny"]
SecureAuto = Literal["auto"]

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def local_url(port: int) -> str:
    """The public URL assumed when none is configured: plain http on localhost."""
    return f"http://localhost:{port}"


@dataclass(frozen=True)
class ServerConfig:
    """Where the gateway listens and how it names itself."""

    listen: str = "127.0.0.1:8000"
    # `listen`, parsed once by validation: what the public socket binds
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = local_url(8000)  # unset: local_url(port)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    admin_listen: str = "127.0.0.1:9100"
    # `admin_listen`, parsed once by validation: what the metrics listener binds
    admin_host: str = "127.0.0.1"
    admin_port: int = 9100
    allowed_origins: tuple[str, ...] = ()
    # protocol limits enforced by gateway/serve/protocol.py (uvicorn's httptools mode has none)
    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    # bounds on an upstream's response head, enforced by the upstream client's pool
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
class LdapConfig:
    """An LDAP directory or Active Directory that holds the users (`auth.users = "ldap"`)."""

    url: str = "ldap://127.0.0.1:389"  # or ldaps://
    start_tls: bool = False
    ca_file: Path | None = None  # the CA for ldaps:// and StartTLS; unset: the system's
    bind_dn: str = ""  # the service account that searches
    bind_password: str = ""
    base_dn: str = ""
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"  # {username} escaped
    user_attribute: str = "uid"  # its value, canonical, is the user id (AD: sAMAccountName)
    group_base_dn: str = ""  # unset: base_dn
    # {dn}: the user's DN (groupOfNames member); {username}: the name (posixGroup memberUid)
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    member_of_attribute: str = ""  # e.g. "memberOf": the entry lists its groups itself
    nested_groups: bool = False  # groups that are members of groups give their roles too
    role_attribute: str = "cn"  # a group's role name
    timeout: float = 5.0  # connect, each search, each bind
    pool_size: int = 4  # service-account connections kept open


@dataclass(frozen=True)
class OidcConfig:
    """One `[[auth.oidc]]` OpenID Connect provider (README "Sign-in with OpenID Connect")."""

    name: str  # [a-z0-9-]+: in the redirect URI {public_url}{prefix}/oidc/{name}/callback
    issuer: str
    client_id: str
    client_secret: str  # a confidential client's ("${OIDC_CLIENT_SECRET}")
    title: str = ""  # the sign-in button's text; unset: "Sign in with {name}"
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    token_endpoint_auth_method: ClientAuth = "client_secret_basic"
    user_claim: str = "sub"  # the claim whose value (after id_prefix) is the user id
    roles_claim: str = ""  # a list or a space-separated string; "" = no roles from it
    role_map: tuple[tuple[str, str], ...] = ()  # provider role -> our role
    allowed_domains: tuple[str, ...] = ()  # of a verified email; () = any
    allowed_roles: tuple[str, ...] = ()  # (after role_map) one of them; () = any
    id_prefix: str = ""  # prepended to every user id of this provider, e.g. "corp:"
    end_session: bool = False  # sign-out continues to the provider's end_session_endpoint
    timeout: float = 10.0  # each request to the provider


@dataclass(frozen=True)
class AuthConfig:
    """The gateway's own endpoints and where credentials live."""

    prefix: str = "/.auth"
    users: UsersSource = "file"
    users_file: Path = Path("users.toml")  # relative: to the config file's folder
    # a signed-in user's standing (removed, disabled, roles) is asked of the source this often
    refresh: float = 60.0
    # `users = "htpasswd"`: Apache's file, relative to the config file's folder
    htpasswd_file: Path = Path("users.htpasswd")
    htpasswd_allow_weak_hashes: bool = False  # accept its {SHA} and $apr1$ (MD5) entries
    htpasswd_roles: tuple[str, ...] = ()  # every htpasswd user's (oauth2-proxy's user groups)
    sql: SqlUsersConfig = field(default_factory=SqlUsersConfig)
    ldap: LdapConfig = field(default_factory=LdapConfig)
    oidc: tuple[OidcConfig, ...] = ()


@dataclass(frozen=True)
class SessionConfig:
    """The cookie and the lifetimes of token and session."""

    cookie: str = "gw_session"
    access_ttl: float = 900.0
    max_age: float = 7 * 86400.0
    idle_timeout: float = 86400.0
    same_site: SameSite = "lax"
    secure: SecureAuto | bool = "auto"
    revocation: Revocation = "lazy"
    # the cookie's Domain, e.g. "corp.test": one sign-in for every host under it
    # with a Domain the Secure cookie takes the __Secure- prefix, not __Host-; "" = host-only
    domain: str = ""


@dataclass(frozen=True)
class KeysConfig:
    """How tokens are signed."""

    algorithm: Algorithm = "EdDSA"
    dir: Path = Path("data/keys")  # relative: to the config file's folder
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
    # true: the assertion names the request's method and path too (one signature per distinct
    # request); false: one assertion per session and route, reused while fresh
    assertion_binds_request: bool = False
    # bytes of the roles header's value; more roles: whole roles up to it, and a
    # `<roles_header>-Truncated: true` header (the assertion carries them all)
    roles_header_limit: int = 4096


@dataclass(frozen=True)
class TelemetryConfig:
    """Tracing with OpenTelemetry (README "Tracing"); off while otlp_endpoint is empty."""

    otlp_endpoint: str = ""  # an OTLP/HTTP collector, e.g. "http://127.0.0.1:4318"
    service_name: str = "gateway"


@dataclass(frozen=True)
class MfaConfig:
    """Second factors (README "Second factors"): which kinds, and who must have one."""

    totp: bool = True  # authenticator-app codes (RFC 6238)
    webauthn: bool = True  # security keys and passkeys
    issuer: str = "Gateway"  # the name authenticator apps show beside the account
    rp_id: str = ""  # WebAuthn relying party id; "" = public_url's host
    # true: every user needs a second factor (enrolled at their first sign-in), on every
    # required route; service tokens are exempt (only a route's own `mfa = true` refuses them)
    required: bool = False


@dataclass(frozen=True)
class AuditConfig:
    """Where audit events go (README "Audit events")."""

    file: Path | None = None  # relative: to the config file's folder; unset: the log


@dataclass(frozen=True)
class Route:
    """One `[[routes]]` entry: which requests, which upstream, which policy."""

    name: str
    path: str
    upstream: str  # "" when loaded for the ASGI/WSGI middleware, whose app takes its place
    host: str | None = None
    auth: RouteAuth = "required"
    roles: tuple[str, ...] = ()
    # who may enter a required route: any of these users or any of the roles (unset: anyone)
    users: tuple[str, ...] = ()
    # the client address (after trusted_proxies) must be inside one of these, for everyone
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # from inside these a required route needs no sign-in (identity headers only if signed in)
    bypass_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    methods: frozenset[str] | None = None
    strip_prefix: bool = False
    timeout: float = 30.0
    case_sensitive: bool = False
    preserve_host: bool = False
    strip_headers: tuple[str, ...] = ()
    bearer: bool = True
    websocket: bool = True
    # send the OpenID provider's access token of the session upstream (oidc sessions only)
    pass_access_token: bool = False
    access_token_header: str = "Authorization"  # as "Bearer <token>"; another name: the token
    # true: a session without a second factor is stepped up (sent to the factor page)
    mfa: bool = False
    # unset keys: the top-level [identity] section's
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
    audit: AuditConfig = field(default_factory=AuditConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    mfa: MfaConfig = field(default_factory=MfaConfig)

    @property
    def rp_id(self) -> str:
        """The WebAuthn relying party: `[mfa] rp_id`, else public_url's host."""
        return self.mfa.rp_id or (urlsplit(self.server.public_url).hostname or "")

    @property
    def webauthn_on(self) -> bool:
        """Security keys and passkeys offered (webauthn_usable)."""
        return webauthn_usable(self.mfa, self.server.public_url)

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
        """The cookie's name when Secure: `__Host-` prefixed, or `__Secure-` with a Domain.

        `__Host-` forbids a Domain attribute, so `[session] domain` takes `__Secure-`.
        """
        if self.cookie_secure:
            return ("__Secure-" if self.session.domain else "__Host-") + self.session.cookie
        return self.session.cookie


def webauthn_usable(mfa: MfaConfig, public_url: str) -> bool:
    """`[mfa] webauthn` with a relying party that is a domain name: browsers refuse an IP
    address as one, so with public_url on an IP security keys cannot work and are not offered."""
    rp_id = mfa.rp_id or (urlsplit(public_url).hostname or "")
    if not mfa.webauthn or not rp_id:
        return False
    try:
        ipaddress.ip_address(rp_id)
    except ValueError:
        return True
    return False
