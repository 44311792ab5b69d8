"""A signed-in user's standing follows the users source: removed, disabled, roles changed.

The gateway runs in this process with a FakeClock (tests/inproc.py) against a real SQLite
store, a real users file or SQLite users database and a real upstream; `gateway users`
runs as the operator would run it, in a subprocess on the same files.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.auth.sessions import STRICT_CACHE_SECONDS
from gateway.config import ConfigError, load_config
from gateway.sources.file import remove_user, set_user
from gateway.sources.hashes import hash_password
from gateway.store import open_store
from tests.conftest import USERS, add_users, free_port, standard_routes, write_config
from tests.inproc import FakeClock, InProcessGateway
from tests.upstream import RecordingUpstream

ACCESS_TTL = 600
REFRESH = 30
COOKIE = "gw_session"
API = {"accept": "application/json"}
MODES = pytest.mark.parametrize("revocation", ["lazy", "strict"])


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


def start(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str, auth: str = ""
) -> tuple[InProcessGateway, FakeClock, Path]:
    extra = f"""
        [auth]
        refresh = "{REFRESH}s"
        {auth}

        [session]
        access_ttl = "{ACCESS_TTL}s"
        revocation = "{revocation}"
        """
    path = write_config(tmp_path, free_port(), standard_routes(upstream.url, upstream.url), extra)
    add_users(tmp_path / "users.toml")
    clock = FakeClock(time.time())
    return InProcessGateway(load_config(path), clock), clock, path


def login(gw: InProcessGateway, user: str = "alice", password: str = "") -> httpx.Client:
    client = gw.client()
    password = password or USERS[user][0]
    response = client.post("/.auth/login", json={"username": user, "password": password})
    assert response.status_code == 200, response.text
    return client


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def users_cmd(config: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "users", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def remove_from_file(users_file: Path, name: str) -> None:
    remove_user(users_file, name)


def session_revoked(config: Path, sid: str) -> bool:
    async def read() -> bool:
        loaded = load_config(config)
        store = open_store(loaded.store.url, loaded.base_dir)
        try:
            session = await store.get_session(sid)
        finally:
            await store.close()
        return session is None or session.revoked

    return asyncio.run(read())


# -- the users file -----------------------------------------------------------------------


@MODES
def test_a_user_removed_from_the_file_is_refused_at_the_first_request_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock, config = start(tmp_path, upstream, revocation)
    with gw:
        client = login(gw)
        sid = claims_of(client.cookies[COOKIE])["sid"]
        # removed by editing the file, not by the CLI: nothing ends the session but the refresh
        remove_from_file(tmp_path / "users.toml", "alice")
        if revocation == "lazy":
            assert client.get("/app/x").status_code == 200  # before refresh: documented
        clock.advance(REFRESH + 1)
        refused = client.get("/app/x", headers=API)
        assert refused.status_code == 401
        assert COOKIE not in client.cookies  # the cookie is cleared
        assert session_revoked(config, sid)  # so every replica refuses it


@MODES
def test_changed_roles_reach_the_upstream_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock, _ = start(tmp_path, upstream, revocation)
    with gw:
        client = login(gw)
        set_user(tmp_path / "users.toml", "alice", USERS["alice"][0], ("staff", "ops"))
        clock.advance(REFRESH + 1)
        assert client.get("/app/x").status_code == 200
        seen = upstream.last()
        assert seen.header("x-user-roles") == ["staff,ops"]
        (assertion,) = seen.header("x-gateway-assertion")
        assert claims_of(assertion)["roles"] == ["staff", "ops"]
        assert claims_of(client.cookies[COOKIE])["roles"] == ["staff", "ops"]


def test_the_source_is_asked_once_per_refresh_interval(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start(tmp_path, upstream, "lazy")
    with gw:
        client = login(gw)
        clock.advance(REFRESH + 1)
        assert "set-cookie" in client.get("/app/x").headers  # refreshed: a new token
        clock.advance(REFRESH / 2)
        assert "set-cookie" not in client.get("/app/x").headers  # the new token is fresh


@MODES
def test_disable_ends_the_sessions_and_sign_in_and_enable_allows_it_again(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock, config = start(tmp_path, upstream, revocation)
    with gw:
        client = login(gw)
        sid = claims_of(client.cookies[COOKIE])["sid"]
        assert client.get("/app/x").status_code == 200
        done = users_cmd(config, "disable", "alice")
        assert "revoked 1 session(s) of alice" in done.stdout
        assert session_revoked(config, sid)
        if revocation == "strict":
            # at once: within this process's 1-second memory of a good answer
            clock.advance(STRICT_CACHE_SECONDS + 0.1)
        else:
            # lazy asks the store at refresh
            clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401
        refused = gw.client().post(
            "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
        )
        assert refused.status_code == 401
        assert "disabled" in users_cmd(config, "list").stdout
        users_cmd(config, "enable", "alice")
        again = login(gw)
        assert again.get("/app/x").status_code == 200


def test_remove_with_the_cli_ends_the_sessions_at_once(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, config = start(tmp_path, upstream, "strict")
    with gw:
        client = login(gw)
        other = login(gw, "bob")
        done = users_cmd(config, "remove", "alice")
        assert "revoked 1 session(s) of alice" in done.stdout
        clock.advance(STRICT_CACHE_SECONDS + 0.1)  # long before the refresh
        assert client.get("/app/x", headers=API).status_code == 401
        assert other.get("/app/x").status_code == 200


def test_forward_auth_refuses_a_removed_user_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, _ = start(tmp_path, upstream, "lazy")
    with gw:
        client = login(gw)
        check = {"x-forwarded-uri": "/app/x", "x-forwarded-method": "GET", **API}
        assert client.get("/.auth/verify", headers=check).status_code == 200
        remove_from_file(tmp_path / "users.toml", "alice")
        clock.advance(REFRESH + 1)
        assert client.get("/.auth/verify", headers=check).status_code == 401


@MODES
def test_a_bearer_token_follows_the_source_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock, _ = start(tmp_path, upstream, revocation)
    with gw:
        token = login(gw).cookies[COOKIE]
        bearer = gw.client(headers={"authorization": f"Bearer {token}", **API})
        set_user(tmp_path / "users.toml", "alice", USERS["alice"][0], ("staff", "ops"))
        clock.advance(REFRESH + 1)
        assert bearer.get("/app/x").status_code == 200
        assert upstream.last().header("x-user-roles") == ["staff,ops"]
        remove_from_file(tmp_path / "users.toml", "alice")
        clock.advance(REFRESH + 1)
        assert bearer.get("/app/x").status_code == 401


# -- sign-in starts clean -------------------------------------------------------------------


def test_signing_in_again_ends_the_session_the_cookie_held(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, _clock, config = start(tmp_path, upstream, "strict")
    with gw:
        client = login(gw)
        old = client.cookies[COOKIE]
        again = client.post("/.auth/login", json={"username": "bob", "password": USERS["bob"][0]})
        assert again.status_code == 200
        new = client.cookies[COOKIE]
        assert claims_of(new)["sid"] != claims_of(old)["sid"]
        assert session_revoked(config, claims_of(old)["sid"])
        replay = gw.client(cookies={COOKIE: old})
        assert replay.get("/app/x", headers=API).status_code == 401
        assert client.get("/app/x").status_code == 200


# -- the SQL source -------------------------------------------------------------------------

SQL_AUTH = """users = "sql"

        [auth.sql]
        dsn = "sqlite:///users.db"
        query = "SELECT id, password_hash, roles FROM accounts WHERE username = :username AND active"
"""
ADA_PASSWORD = "ada pässword ✓ 1"


def write_users_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, username TEXT, password_hash TEXT,"
            " roles TEXT, active INTEGER NOT NULL DEFAULT 1)"
        )
        db.execute(
            "INSERT INTO accounts VALUES (41, 'ada', ?, 'staff', 1)",
            (hash_password(ADA_PASSWORD),),
        )
    db.close()


def sql_change(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement)
    db.close()


def start_sql(tmp_path: Path, upstream: RecordingUpstream, revocation: str):
    write_users_db(tmp_path / "users.db")
    return start(tmp_path, upstream, revocation, SQL_AUTH)


@MODES
def test_sql_row_deleted_is_refused_after_refresh_and_changed_roles_apply(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    gw, clock, config = start_sql(tmp_path, upstream, revocation)
    db = tmp_path / "users.db"
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        token = claims_of(client.cookies[COOKIE])
        # the id column is `sub`; the name the query takes rides along for the refresh
        assert (token["sub"], token["username"]) == ("41", "ada")
        sql_change(db, "UPDATE accounts SET roles = 'staff,ops' WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x").status_code == 200
        assert upstream.last().header("x-user-id") == ["41"]
        assert upstream.last().header("x-user-roles") == ["staff,ops"]
        sql_change(db, "DELETE FROM accounts WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401
        assert COOKIE not in client.cookies
        assert session_revoked(config, token["sid"])


def test_sql_name_taken_over_by_another_row_is_not_the_same_user(
    tmp_path: Path, upstream: RecordingUpstream
):
    gw, clock, _ = start_sql(tmp_path, upstream, "lazy")
    db = tmp_path / "users.db"
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        sql_change(db, "UPDATE accounts SET id = 42 WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401


def test_sql_deactivated_row_is_refused_after_refresh(tmp_path: Path, upstream: RecordingUpstream):
    gw, clock, _ = start_sql(tmp_path, upstream, "strict")
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        sql_change(tmp_path / "users.db", "UPDATE accounts SET active = 0")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401


@pytest.mark.parametrize(
    ("revocation", "status"),
    [("lazy", 200), ("strict", 503)],
    ids=["lazy keeps serving the valid token", "strict answers 503"],
)
def test_sql_source_down_during_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str, status: int
):
    gw, clock, _ = start_sql(tmp_path, upstream, revocation)
    db = tmp_path / "users.db"
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        before = client.cookies[COOKIE]
        good = db.read_bytes()
        # the same file, now not a database: the pool's open connection fails too
        db.write_bytes(b"not a database" * 512)
        clock.advance(REFRESH + 1)
        response = client.get("/app/x", headers=API)
        assert response.status_code == status
        if revocation == "lazy":
            assert "set-cookie" not in response.headers  # served, not re-issued
            assert client.cookies[COOKIE] == before
            clock.advance(ACCESS_TTL)  # past exp: nothing valid left to serve
            assert client.get("/app/x", headers=API).status_code == 503
        db.write_bytes(good)
        clock.advance(10)  # past the retry pause after a failure
        assert client.get("/app/x").status_code == 200


# -- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('"0s"', "auth.refresh: '0s' must be longer than zero"),
        ('"soon"', 'auth.refresh: \'soon\' is not a duration like "30s", "15m", "12h" or "7d"'),
    ],
    ids=["zero is refused", "a word is refused"],
)
def test_refresh_must_be_a_positive_duration(tmp_path: Path, value: str, error: str):
    extra = f"[auth]\nrefresh = {value}\n"
    path = write_config(
        tmp_path, free_port(), standard_routes("http://127.0.0.1:9", "http://127.0.0.1:9"), extra
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == [error]


def test_refresh_defaults_to_a_minute(tmp_path: Path):
    path = write_config(
        tmp_path, free_port(), standard_routes("http://127.0.0.1:9", "http://127.0.0.1:9")
    )
    assert load_config(path).auth.refresh == 60.0


@MODES
def test_a_user_removed_from_the_htpasswd_file_is_refused_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str
):
    import bcrypt

    line = "alice:" + bcrypt.hashpw(b"alice-htpasswd-1", bcrypt.gensalt(5)).decode()
    (tmp_path / "users.htpasswd").write_text(line + "\n")
    auth = 'users = "htpasswd"\n        htpasswd_roles = ["staff"]'
    gw, clock, config = start(tmp_path, upstream, revocation, auth)
    with gw:
        client = login(gw, "alice", "alice-htpasswd-1")
        sid = claims_of(client.cookies[COOKIE])["sid"]
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 200  # still in the file
        (tmp_path / "users.htpasswd").write_text("")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401
        assert session_revoked(config, sid)
