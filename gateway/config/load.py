"""Loading: find and read gateway.toml, put ${ENV} into its strings, then validate it."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.model import Config
from gateway.config.validate import ConfigError, validate_config

DEFAULT_CONFIG = "gateway.toml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def build_config(
    raw: dict[str, Any],
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
    *,
    require_upstream: bool = True,
) -> Config:
    """Interpolate and validate a parsed TOML document; raise ConfigError listing every problem.

    `require_upstream=False` is the middleware's reading: a route may omit `upstream`.
    """
    errors: list[str] = []
    raw = interpolate(raw, "", errors, os.environ if env is None else env)
    return validate_config(raw, base_dir, errors, source, require_upstream=require_upstream)


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
