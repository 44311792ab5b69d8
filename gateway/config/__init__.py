"""The gateway's config: the model (defaults), loading (TOML, ${ENV}) and validation.

Everything is imported from here; the submodules are `model`, `load`, `validate` and `values`.
"""

from __future__ import annotations

from gateway.config.load import DEFAULT_CONFIG, build_config, config_path, interpolate, load_config
from gateway.config.model import (
    HTTP_METHODS,
    Algorithm,
    AuditConfig,
    AuthConfig,
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
    SecureAuto,
    ServerConfig,
    SessionConfig,
    SqlUsersConfig,
    StoreConfig,
    TelemetryConfig,
    UsersSource,
    local_url,
)
from gateway.config.validate import ConfigError, validate_config
from gateway.config.values import parse_duration

__all__ = [
    "DEFAULT_CONFIG",
    "HTTP_METHODS",
    "Algorithm",
    "AuditConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "IdentityConfig",
    "KeysConfig",
    "LdapConfig",
    "LoginLimitsConfig",
    "MfaConfig",
    "OidcConfig",
    "Revocation",
    "Route",
    "RouteAuth",
    "SameSite",
    "SecureAuto",
    "ServerConfig",
    "SessionConfig",
    "SqlUsersConfig",
    "StoreConfig",
    "TelemetryConfig",
    "UsersSource",
    "build_config",
    "config_path",
    "interpolate",
    "load_config",
    "local_url",
    "parse_duration",
    "validate_config",
]
