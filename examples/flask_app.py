"""A Flask app whose sign-in, sessions and route policy come from the gateway's WSGI middleware.

Run from the repository root, in the venv (`pip install flask` if it is missing):

    gateway users add alice --roles admin -c examples/flask.toml
    python examples/flask_app.py                 # werkzeug's server on http://localhost:5000
    # or any WSGI server, e.g. gunicorn --threads 8 -b 127.0.0.1:5000 \
    #     --chdir examples 'flask_app:create_app()'

`/` greets whoever is signed in, `/notes` sends you to the sign-in page first, `/admin` needs the
role "admin". The middleware serves /.auth/login, /.auth/logout and /.auth/me itself.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from flask import Flask, jsonify, request

from gateway.wsgi import GatewayMiddleware

CONFIG = Path(__file__).with_name("flask.toml")
SIGN_OUT = '<form method="post" action="/.auth/logout"><button>Sign out</button></form>'


def create_app(config: str | os.PathLike[str] = CONFIG) -> Flask:
    """The Flask app, wrapped: `app.wsgi_app` is replaced so `app` stays a Flask object."""
    app = Flask(__name__)

    @app.get("/")
    def home() -> str:
        # REMOTE_USER is set by the middleware (never by the client); None when anonymous
        user = request.environ.get("REMOTE_USER")
        if user is None:
            return '<p>Hello, stranger. <a href="/.auth/login?next=/notes">Sign in</a></p>'
        return f"<p>Hello, {escape(user)}.</p>{SIGN_OUT}"

    @app.get("/notes")
    def notes() -> str:
        # the same identity as a header, as the proxy would send it
        return f"<p>{escape(request.headers['X-User-Id'])}'s notes</p>{SIGN_OUT}"

    @app.get("/admin")
    def admin():
        identity = request.environ["gateway.identity"]
        return jsonify(user=identity.sub, roles=list(identity.roles))

    app.wsgi_app = GatewayMiddleware(app.wsgi_app, config)  # type: ignore[method-assign]
    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=5000, threaded=True)
