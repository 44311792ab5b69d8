"""An authenticating reverse proxy: login, signed JWT cookie, per-route policy."""

__version__ = "0.1.0"
