"""`python -m gateway.healthcheck [URL] [--any-status]`: a container HEALTHCHECK without curl.

Without a URL it asks the gateway the config names ($GATEWAY_CONFIG) for `{prefix}/health` on
its own listen port, so the image's HEALTHCHECK follows the config. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from gateway.config import Config, ConfigError, config_path, load_config

WILDCARDS = {"0.0.0.0", "::", ""}


def health_url(config: Config) -> str:
    """The gateway's own liveness URL, reached from inside its container or host."""
    host = config.server.host
    if host in WILDCARDS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{config.auth.prefix}/health"


def healthy(url: str, any_status: bool = False, timeout: float = 3.0) -> bool:
    """True when `url` answers 200 (or, with any_status, anything below 500)."""
    parts = urlsplit(url)
    # http.client reads no proxy settings from the environment, unlike urllib
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        status = connection.getresponse().status
    except OSError:
        return False
    finally:
        connection.close()
    return status < 500 if any_status else status == 200


def main(argv: Sequence[str] | None = None) -> int:
    """Check once and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gateway.healthcheck")
    parser.add_argument("url", nargs="?", help="default: the configured gateway's /health")
    parser.add_argument("--any-status", action="store_true", help="any answer below 500 is ok")
    args = parser.parse_args(argv)
    url = args.url
    if url is None:
        try:
            url = health_url(load_config(config_path(None)))
        except ConfigError as exc:
            print(f"healthcheck: {exc.errors[0]}", file=sys.stderr)
            return 1
    if not url.startswith("http://"):
        parser.error("the URL must be http://")
    return 0 if healthy(url, args.any_status) else 1


if __name__ == "__main__":
    sys.exit(main())
