"""Where passwords are checked: one module per source, chosen by `[auth] users`.

A new source is a module here with `from_config(config) -> UserBackend`, its config section,
and one line in SOURCES; the sign-in endpoint names no source.
"""

from __future__ import annotations

import importlib

from gateway.config import Config
from gateway.sources.base import UserBackend

# `[auth] users` -> the module that builds that source (imported only when configured)
SOURCES = {
    "file": "gateway.sources.file",
    "sql": "gateway.sources.sql",
    "htpasswd": "gateway.sources.htpasswd",
    "ldap": "gateway.sources.ldap",
    "none": "gateway.sources.none",
}


def build_users(config: Config) -> UserBackend:
    """The password source the config names."""
    module = importlib.import_module(SOURCES[config.auth.users])
    return module.from_config(config)
