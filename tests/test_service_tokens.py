"""Service accounts: `gateway tokens create/list/revoke`, bearer use, replicas, and the id rule.

Two gateway replicas share one Redis database (of these tests' own), the key directory and
the users file, as replicas behind a load balancer do; the CLI works on the same store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
import redis
import sqlalchemy
from argon2 import PasswordHasher

from gateway.auth.keys import load_keys
from tests.conftest import USERS, Gateway, add_users, make_gateway, standard_routes
from tests.redis_servers import start_redis
from tests.services import need, port_open
from tests.upstream import RecordingUpstream

REDIS_URL = "redis://127.0.0.1:6379/12"
PEOPLE = {**USERS, "deploy": ("deploy-password-1", ("deploy",))}


def routes(upstream: str) -> str:
    return (
        standard_routes(upstream, upstream)
        + f"""
[[routes]]
name = "deployments"
path = "/deployments"
upstream = "{upstream}"
auth = "required"
roles = ["deploy"]

[[routes]]
name = "for-the-user"
path = "/for-the-user"
upstream = "{upstream}"
auth = "required"
users = ["deploy"]

[[routes]]
name = "for-the-service"
path = "/for-the-service"
upstream = "{upstream}"
auth = "required"
users = ["service:deploy"]

[[routes]]
name = "cookie-only"
path = "/cookie-only"
upstream = "{upstream}"
auth = "required"
bearer = false
"""
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, upstream) -> Iterator[tuple[Gateway, Gateway]]:
    need("redis", port_open("127.0.0.1", 6379), "nothing listens on 127.0.0.1:6379")
    redis.Redis.from_url(REDIS_URL).flushdb()
    base = tmp_path_factory.mktemp("service-tokens")
    shared = base / "shared"
    shared.mkdir()
    add_users(shared / "users.toml", PEOPLE)
    started = []
    for name in ("a", "b"):
        extra = "\n".join(
            [
                "[server]",
                'public_url = "http://localhost:8080"',
                "[auth]",
                f'users_file = "{shared / "users.toml"}"',
                "[keys]",
                f'dir = "{shared / "keys"}"',
                "[audit]",
                f'file = "{shared / "audit.log"}"',
            ]
        )
        started.append(
            make_gateway(base / name, routes(upstream.url), extra, users=None, store=REDIS_URL)
        )
    yield started[0], started[1]
    for gw in started:
        gw.stop()


def tokens(gw: Gateway, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "tokens", *args, "-c", str(gw.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode == 0) is ok, done.stdout + done.stderr
    return done


def create(gw: Gateway, name: str, *args: str) -> str:
    token = tokens(gw, "create", name, *args).stdout.strip()
    assert token.startswith("gwst_") and len(token) == 48, token
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "accept": "application/json"}


def audit_events(gw: Gateway) -> list[dict]:
    path = gw.config.parent.parent / "shared" / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def listed(gw: Gateway) -> dict[str, list[str]]:
    lines = tokens(gw, "list").stdout.splitlines()
    header = lines[0].split()
    assert header[:3] == ["NAME", "ID", "ROLES"], lines
    rows = {}
    for line in lines[1:]:
        cells = [c for c in line.split("  ") if c.strip()]
        rows[cells[0].strip()] = [c.strip() for c in cells]
    return rows


def test_a_token_works_on_both_replicas_and_is_refused_on_b_at_once_after_revoke_on_a(
    replicas, upstream
):
    a, b = replicas
    token = create(a, "ci-runner", "--roles", "deploy,staff")
    for gw in (a, b):
        upstream.clear()
        response = gw.client().get("/deployments/x", headers=bearer(token))
        assert response.status_code == 200, response.text
        forwarded = upstream.last()
        assert forwarded.header("x-user-id") == ["service:ci-runner"]
        assert forwarded.header("x-user-roles") == ["deploy,staff"]
        # our token is never forwarded
        assert forwarded.header("authorization") == []
    me = b.client().get("/.auth/me", headers=bearer(token)).json()
    assert me["sub"] == "service:ci-runner" and me["roles"] == ["deploy", "staff"]
    tokens(a, "revoke", "ci-runner")
    # no cache anywhere: the very next request on the other replica is refused
    refused = b.client().get("/deployments/x", headers=bearer(token))
    assert refused.status_code == 401
    assert a.client().get("/deployments/x", headers=bearer(token)).status_code == 401
    revoked = [e for e in audit_events(a) if e["event"] == "service_token.revoked"]
    assert [e["service"] for e in revoked] == ["ci-runner"]


def test_list_shows_roles_expiry_and_last_use(replicas):
    a, b = replicas
    token = create(a, "reporter", "--roles", "staff", "--expires", "90d")
    row = listed(b)["reporter"]
    assert row[1] == "service:reporter" and row[2] == "staff"
    assert row[-1] == "never"  # not used yet
    assert row[-2] != "never"  # 90 days from now
    assert b.client().get("/app/x", headers=bearer(token)).status_code == 200
    row = listed(a)["reporter"]
    assert row[-1] != "never"
    used = time.mktime(time.strptime(row[-1], "%Y-%m-%d %H:%M:%S"))
    assert abs(used - time.time()) < 120
    # first use is one audit event, however many replicas and requests see it
    assert a.client().get("/app/y", headers=bearer(token)).status_code == 200
    first = [
        e
        for e in audit_events(a)
        if e["event"] == "service_token.first_used" and e["service"] == "reporter"
    ]
    assert len(first) == 1
    tokens(a, "revoke", "reporter")
    assert "reporter" not in listed(a)


def test_only_the_hash_is_stored_and_no_secret_reaches_the_audit_log(replicas):
    a, _ = replicas
    token = create(a, "hashed", "--roles", "staff")
    store = redis.Redis.from_url(REDIS_URL)
    dump = b""
    for key in store.scan_iter("*"):
        dump += key + b"\n"
        kind = store.type(key)
        if kind == b"string":
            dump += store.get(key) or b""
        elif kind == b"hash":
            dump += b"".join(k + v for k, v in store.hgetall(key).items())
    assert token.encode() not in dump
    assert token[5:].encode() not in dump
    assert hashlib.sha256(token.encode()).hexdigest().encode() in dump
    log = (a.config.parent.parent / "shared" / "audit.log").read_text()
    assert token not in log and token[5:] not in log
    created = [e for e in audit_events(a) if e["event"] == "service_token.created"]
    assert {"service": "hashed", "roles": ["staff"], "by": "cli"}.items() <= created[-1].items()
    tokens(a, "revoke", "hashed")


def test_a_service_and_a_user_of_the_same_name_are_never_taken_for_each_other(replicas, upstream):
    a, _ = replicas
    token = create(a, "deploy", "--roles", "deploy")
    user = a.login("deploy", PEOPLE["deploy"][0])
    assert user.get("/.auth/me").json()["sub"] == "deploy"
    # users = ["deploy"] names the user, not the service
    assert user.get("/for-the-user/x").status_code == 200
    assert a.client().get("/for-the-user/x", headers=bearer(token)).status_code == 403
    # users = ["service:deploy"] names the service, not the user
    assert a.client().get("/for-the-service/x", headers=bearer(token)).status_code == 200
    assert user.get("/for-the-service/x", headers={"accept": "application/json"}).status_code == 403
    # the user's own sign-out does nothing to the service, nor the service's to the user
    assert a.client().post("/.auth/logout", headers=bearer(token), json={}).status_code == 204
    assert user.get("/for-the-user/x").status_code == 200
    assert a.client().get("/for-the-service/x", headers=bearer(token)).status_code == 200
    tokens(a, "revoke", "deploy")
    assert user.get("/for-the-user/x").status_code == 200


def test_a_session_token_claiming_a_service_id_is_refused(replicas, upstream):
    a, _ = replicas
    # even signed with the gateway's own key (which sign-in never does for such an id)
    (key,) = load_keys(a.config.parent.parent / "shared" / "keys")
    real = a.login("alice").cookies["gw_session"]
    claims = jwt.decode(real, options={"verify_signature": False})
    claims["sub"] = "service:ci-runner"
    forged = jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
    upstream.clear()
    as_cookie = {"cookie": f"gw_session={forged}", "accept": "application/json"}
    for headers in (bearer(forged), as_cookie):
        assert a.client().get("/app/x", headers=headers).status_code == 401
    assert upstream.requests == []
    assert "reserved_id" in a.logs()


def test_a_token_is_only_a_bearer_on_bearer_routes_never_a_cookie(replicas, upstream):
    a, _ = replicas
    token = create(a, "narrow", "--roles", "staff")
    upstream.clear()
    assert a.client().get("/cookie-only/x", headers=bearer(token)).status_code == 401
    as_cookie = {"cookie": f"gw_session={token}", "accept": "application/json"}
    assert a.client().get("/app/x", headers=as_cookie).status_code == 401
    assert upstream.requests == []
    tokens(a, "revoke", "narrow")


@pytest.mark.parametrize(
    "presented",
    [
        "gwst_" + "A" * 43,  # the right shape, never issued
        "gwst_short",
        "gwst_" + "A" * 44,
        "gwst_" + "A" * 42 + "!",
    ],
)
def test_tokens_never_issued_are_refused(replicas, upstream, presented):
    a, _ = replicas
    upstream.clear()
    response = a.client().get("/app/x", headers=bearer(presented))
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert upstream.requests == []


def test_a_tampered_token_is_refused(replicas):
    a, _ = replicas
    token = create(a, "tamper", "--roles", "staff")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert a.client().get("/app/x", headers=bearer(flipped)).status_code == 401
    assert a.client().get("/app/x", headers=bearer(token)).status_code == 200
    tokens(a, "revoke", "tamper")


def test_an_expired_token_is_refused(replicas):
    a, b = replicas
    token = create(a, "brief", "--roles", "staff", "--expires", "2s")
    assert b.client().get("/app/x", headers=bearer(token)).status_code == 200
    time.sleep(2.2)
    assert b.client().get("/app/x", headers=bearer(token)).status_code == 401
    assert "brief" not in listed(a)
    # the name is free again once its token has ended
    create(a, "brief", "--roles", "staff")
    tokens(a, "revoke", "brief")


@pytest.mark.parametrize(
    "args, why",
    [
        (("create", "Bad Name"), "is not 1-64 of"),
        (("create", "ok", "--roles", "bad role"), "role 'bad role'"),
        (("create", "ok", "--expires", "soon"), "--expires 'soon'"),
        (("create", "ok", "--expires", "0s"), "longer than zero"),
        (("revoke", "nobody"), "has no token"),
    ],
)
def test_bad_token_commands_say_why(replicas, args, why):
    a, _ = replicas
    done = tokens(a, *args, ok=False)
    assert why in done.stderr and "Traceback" not in done.stderr


def test_a_second_token_for_one_name_is_refused_until_revoked(replicas):
    a, _ = replicas
    first = create(a, "twice", "--roles", "staff")
    done = tokens(a, "create", "twice", ok=False)
    assert "has a token already" in done.stderr
    assert a.client().get("/app/x", headers=bearer(first)).status_code == 200
    tokens(a, "revoke", "twice")
    second = create(a, "twice")
    assert a.client().get("/app/x", headers=bearer(first)).status_code == 401
    assert a.client().get("/app/x", headers=bearer(second)).status_code == 200
    tokens(a, "revoke", "twice")


def test_the_store_down_refuses_a_token_and_never_takes_it_unchecked(tmp_path, upstream):
    need("redis", shutil.which("redis-server") is not None, "no redis-server")
    server = start_redis(tmp_path / "redis")
    gw = make_gateway(
        tmp_path / "gw",
        routes(upstream.url),
        users=PEOPLE,
        store=f"redis://127.0.0.1:{server.port}/0",
    )
    try:
        token = create(gw, "lonely", "--roles", "staff")
        assert gw.client().get("/app/x", headers=bearer(token)).status_code == 200
        server.kill()
        upstream.clear()
        response = gw.client().get("/app/x", headers=bearer(token))
        assert response.status_code == 503
        assert response.json()["error"] == "store_unavailable"
        assert upstream.requests == []
    finally:
        gw.stop()
        server.stop()


def test_a_source_id_with_the_service_prefix_never_signs_in(tmp_path, upstream):
    legacy = tmp_path / "legacy.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{legacy}")
    stored = PasswordHasher().hash("impostor-password-1")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE people (id TEXT, name TEXT, hash TEXT)"))
        conn.execute(
            sqlalchemy.text("INSERT INTO people VALUES ('service:deploy', 'impostor', :h)"),
            {"h": stored},
        )
    engine.dispose()
    extra = f"""
[auth]
users = "sql"

[auth.sql]
dsn = "sqlite:///{legacy}"
query = "SELECT id, hash, '' FROM people WHERE name = :username"
"""
    gw = make_gateway(tmp_path / "gw", routes(upstream.url), extra, users=None)
    try:
        response = gw.client().post(
            "/.auth/login", json={"username": "impostor", "password": "impostor-password-1"}
        )
        assert response.status_code == 401
        assert "gw_session" not in response.cookies
        assert "reserved prefix" in gw.logs()
    finally:
        gw.stop()


def test_forward_auth_takes_a_token_where_the_route_takes_a_bearer(replicas):
    a, b = replicas
    token = create(a, "checker", "--roles", "deploy")

    def verify(uri: str) -> httpx.Response:
        headers = {**bearer(token), "x-forwarded-method": "GET", "x-forwarded-uri": uri}
        return b.client().get("/.auth/verify", headers=headers)

    allowed = verify("/deployments/x")
    assert allowed.status_code == 200
    assert allowed.headers["x-user-id"] == "service:checker"
    assert allowed.headers["x-gateway-bearer"] == "used"
    assert verify("/cookie-only/x").status_code == 401
    assert verify("/admin/x").status_code == 403  # no admin role
    tokens(a, "revoke", "checker")
    assert verify("/deployments/x").status_code == 401


def test_a_name_ending_in_a_line_break_is_refused(replicas):
    # a regex's `$` also matches before a final newline: the name would become X-User-Id
    a, _ = replicas
    done = tokens(a, "create", "linebreak\n", ok=False)
    assert "is not 1-64" in done.stdout + done.stderr
    assert "linebreak" not in listed(a)
