"""The tutorial approach (setup 4): Flask checks the cookie JWT with PyJWT, forwards with requests."""

from __future__ import annotations

import os

import jwt
import requests
from flask import Flask, Response, abort, request

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9001")
SECRET = os.environ.get("BENCH_SECRET", "")
ISSUER = os.environ.get("BENCH_ISSUER", "http://localhost:8000")
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}

app = Flask(__name__)
upstream = requests.Session()


@app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@app.route("/<path:path>", methods=["GET", "POST"])
def proxy(path: str) -> Response:
    token = request.cookies.get("gw_session", "")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=ISSUER, issuer=ISSUER)
    except jwt.PyJWTError:
        abort(401)
    headers = {
        k: v for k, v in request.headers if k.lower() not in HOP and k.lower() != "x-user-id"
    }
    headers["X-User-Id"] = claims["sub"]
    reply = upstream.request(
        request.method,
        UPSTREAM + request.full_path.rstrip("?"),
        headers=headers,
        data=request.get_data(),
        timeout=30,
    )
    passed = [(k, v) for k, v in reply.raw.headers.items() if k.lower() not in HOP]
    return Response(reply.content, reply.status_code, passed)
