"""What every attack needs: raw requests, sessions, forged tokens, and what the upstream saw."""

from __future__ import annotations

import itertools
import json
import time
import tomllib
import uuid
from collections.abc import Iterable
from typing import BinaryIO

import httpx
import jwt

from gateway.auth.keys import SigningKey, load_keys
from tests.conftest import USERS, Gateway
from tests.rawhttp import RawResponse, raw_request
from tests.upstream import Recorded, RecordingUpstream

BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
IDENTITY = ("x-user-id", "x-user-roles", "x-gateway-assertion")
_addresses = itertools.count(1)


def fresh_ip() -> str:
    """A documentation address no other test has used (for X-Forwarded-For on trusted_gw)."""
    n = next(_addresses)
    return f"198.51.{n // 250}.{n % 250 + 1}"


def request(
    gw: Gateway,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    host: str | None = None,
) -> RawResponse:
    """One request written byte for byte (no normalization), on its own connection."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'127.0.0.1:{gw.port}'}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return raw_request(gw.port, data)


def raw(gw: Gateway, data: bytes, timeout: float = 10.0) -> RawResponse:
    """Send bytes as they are and read one response."""
    return raw_request(gw.port, data, timeout=timeout)


def login(gw: Gateway, user: str, password: str | None = None, ip: str | None = None) -> str:
    """A session token for the user, from a JSON login."""
    headers = {"x-forwarded-for": ip} if ip else {}
    with httpx.Client(base_url=gw.url, trust_env=False) as client:
        response = client.post(
            "/.auth/login",
            json={"username": user, "password": password or USERS[user][0]},
            headers=headers,
        )
    assert response.status_code == 200, response.text
    return session_cookie(response.headers.get_list("set-cookie"))


def session_cookie(set_cookies: list[str]) -> str:
    """The token in the session cookie among these Set-Cookie values."""
    for value in set_cookies:
        name, _, rest = value.partition("=")
        if name in ("gw_session", "__Host-gw_session"):
            return rest.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {set_cookies}")


def public_url(gw: Gateway) -> str:
    """The gateway's configured public URL."""
    return tomllib.loads(gw.config.read_text())["server"]["public_url"]


def cookie_name(gw: Gateway) -> str:
    return "__Host-gw_session" if public_url(gw).startswith("https://") else "gw_session"


def with_cookie(gw: Gateway, token: str) -> tuple[str, str]:
    return ("Cookie", f"{cookie_name(gw)}={token}")


def signing_key(gw: Gateway) -> SigningKey:
    """The gateway's own signing key, read from its key directory (to test claim checks)."""
    return load_keys(gw.directory / "keys")[-1]


def claims(gw: Gateway, **override) -> dict:
    """A complete, currently valid set of session claims, with overrides (None removes)."""
    now = int(time.time())
    base = {
        "iss": public_url(gw),
        "aud": public_url(gw),
        "sub": "mallory",
        "roles": ["admin", "staff"],
        "sid": "forged-sid",
        "jti": "forged-jti",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def sign(gw: Gateway, payload: dict, headers: dict | None = None) -> str:
    """Sign with the gateway's real key (only the claim checks can refuse it)."""
    key = signing_key(gw)
    return jwt.encode(
        payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})}
    )


def b64(data: dict | bytes) -> str:
    raw_bytes = data if isinstance(data, bytes) else json.dumps(data).encode()
    return jwt.utils.base64url_encode(raw_bytes).decode()


def nothing_forwarded(upstream: RecordingUpstream, settle: float = 0.1) -> bool:
    """True when the upstream received no request at all (after a short settle)."""
    time.sleep(settle)
    return not upstream.requests


def only(upstream: RecordingUpstream) -> Recorded:
    """The one request the upstream received."""
    upstream.last()
    time.sleep(0.05)
    assert len(upstream.requests) == 1, [r.request_line for r in upstream.requests]
    return upstream.requests[0]


def no_identity(rec: Recorded) -> bool:
    """No identity header in any spelling reached the upstream."""
    folded = {k.lower().replace("_", "-").replace(".", "-") for k, _ in rec.headers}
    return not folded & set(IDENTITY)


def marked(path: str) -> str:
    """`path` with a unique suffix, so that its request's access-log line can be found."""
    return f"{path}-{uuid.uuid4().hex}"


def access_line(gw: Gateway, path: str, seconds: float = 5.0) -> dict:
    """The one access-log line for `path` (written once the response has been sent)."""
    deadline = time.monotonic() + seconds
    while True:
        found = []
        for line in gw.logs().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line, still being written
                continue
            if record.get("path") == path:
                found.append(record)
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} access-log lines for {path}"
            return found[0]
        time.sleep(0.02)


class WrongReason(AssertionError):
    """The token was refused, but the log names another reason than the case is about."""


def assert_reason(gw: Gateway, path: str, reason: str | None) -> None:
    """The access log says the token sent to `path` was refused for `reason` (None: not read)."""
    logged = access_line(gw, path)["auth_error"]
    if logged != reason:
        raise WrongReason(f"refused for {logged!r}, not for {reason!r}")


def json_body(response: RawResponse) -> dict:
    return json.loads(response.body)


def read_from(reader: BinaryIO) -> RawResponse:
    """One response from a buffered reader (several may be read off one connection)."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("connection closed without a response")
    headers = []
    while True:
        line = reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    length = [int(v) for k, v in headers if k.lower() == "content-length"]
    body = reader.read(length[0]) if length else b""
    return RawResponse(int(status_line.split(b" ")[1]), headers, body)
