"""`python -m gateway.demo legacy|api --port N`: run one demo upstream on 127.0.0.1."""

from __future__ import annotations

import argparse

import uvicorn

from gateway.demo.apps import api_app, legacy_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo")
    parser.add_argument("app", choices=["legacy", "api"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = legacy_app() if args.app == "legacy" else api_app()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


main()
