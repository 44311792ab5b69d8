"""A signed-in user's standing follows the users source: removed, disabled, roles changed.

The gateway runs in this process with a FakeClock (tests/inproc.py) against a real SQLite
store, a real users file, htpasswd file or users table (SQLite, PostgreSQL, MariaDB) and a
real upstream; `gateway users` runs as the operator would run it, in a subprocess on the same
files. tests/test_lifecycle_modes.py shows the same through the middleware and /verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import jwt
import pytest
import sqlalchemy

from gateway.auth.sessions import STRICT_CACHE_SECONDS
from gateway.config import ConfigError, load_config
from gateway.sources.file import remove_user, set_user
from gateway.sources.hashes import hash_password
from gateway.store import open_store
from tests.conftest import USERS, add_users, free_port, standard_routes, write_config
from tests.inproc import FakeClock, InProcessGateway
from tests.services import need_port
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


class Serves(Protocol):
    """Anything that hands out clients for a running gateway (tests/inproc, the modes file)."""

    def client(self, **kwargs: object) -> httpx.Client: ...


def login(gw: Serves, user: str = "alice", password: str = "") -> httpx.Client:
    """A client holding the session cookie of a JSON sign-in."""
    client = gw.client()
    password = password or USERS[user][0]
    response = client.post("/.auth/login", json={"username": user, "password": password})
    assert response.status_code == 200, response.text
    return client


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def assert_roles_reached(
    client: httpx.Client, upstream: RecordingUpstream, roles: list[str]
) -> None:
    """The last request reached the upstream with these roles in the header and assertion,
    and the client holds a token carrying them."""
    seen = upstream.last()
    assert seen.header("x-user-roles") == [",".join(roles)]
    (assertion,) = seen.header("x-gateway-assertion")
    assert claims_of(assertion)["roles"] == roles
    assert claims_of(client.cookies[COOKIE])["roles"] == roles


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
        assert_roles_reached(client, upstream, ["staff", "ops"])


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


# -- the SQL source: SQLite, PostgreSQL and MariaDB ---------------------------------------
#
# One users table per test (a unique name, dropped afterwards) holding ada, id 41; the test
# changes it with SQL statements as an operator would, on its own connection. The gateway
# reaches PostgreSQL (127.0.0.1:5432, user postgres, database `test`) and MariaDB
# (127.0.0.1:3306, root, database `test`) through a TCP forwarder the test can cut: a real
# loss of every connection and of the port, while the shared server keeps running.

ADA_PASSWORD = "ada pässword ✓ 1"
# kind: (service for need_port, its port, the operator's SQLAlchemy URL, the gateway's DSN)
SQL_SERVERS = {
    "postgresql": (
        "postgres",
        5432,
        "postgresql+psycopg://postgres@127.0.0.1:{port}/test",
        "postgresql://postgres@127.0.0.1:{port}/test",
    ),
    "mariadb": (
        "mariadb",
        3306,
        "mysql+pymysql://root@127.0.0.1:{port}/test",
        "mysql://root@127.0.0.1:{port}/test",
    ),
}


@functools.cache
def ada_hash() -> str:
    return hash_password(ADA_PASSWORD)


class Outage(Protocol):
    """A users source the test can take away (`down`) and give back (`up`)."""

    def down(self) -> None: ...

    def up(self) -> None: ...


class GarbledFile:
    """An SQLite file overwritten in place with bytes that are not a database, then restored.

    The same path, so the pool's open connection fails as a new one does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.good: bytes | None = None

    def down(self) -> None:
        self.good = self.path.read_bytes()
        self.path.write_bytes(b"not a database" * 512)

    def up(self) -> None:
        if self.good is not None:
            self.path.write_bytes(self.good)
            self.good = None


class TcpForwarder:
    """127.0.0.1:`port` relayed to a database server's port, in threads.

    `down()` closes the port and every relayed connection (what the gateway sees when its
    database goes away); `up()` listens on the same port again.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            doomed = [s for s in (self._listener, *self._open) if s is not None]
            self._listener = None
            self._open.clear()
        for sock in doomed:
            _close(sock)  # shutdown wakes the threads blocked in accept() and recv()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down() closed the port
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()  # the database refused: so does the forwarder
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # down() came in between
                    _close(client)
                    _close(server)
                    return
                self._open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@dataclass
class UsersDb:
    """A users table holding ada (id 41, role staff) in one backend, as the gateway reads it."""

    kind: str
    engine: sqlalchemy.Engine  # the operator's own connection
    table: str
    dsn: str  # as gateway.toml names it
    outage: Outage

    def sql(self, statement: str, **params: object) -> None:
        """Run one statement and commit it, as an operator at a database prompt would."""
        with self.engine.begin() as conn:
            conn.execute(sqlalchemy.text(statement), params)

    def auth(self) -> str:
        """The `[auth]` lines: the query takes the canonical name and needs an active row."""
        query = (
            f"SELECT id, password_hash, roles FROM {self.table}"
            " WHERE username = :username AND active"
        )
        # indented as start() indents its own lines: write_config dedents them together
        return f"""users = "sql"

        [auth.sql]
        dsn = "{self.dsn}"
        query = "{query}"
"""


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def users_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UsersDb]:
    kind = request.param
    table = f"gw_lifecycle_{uuid.uuid4().hex[:10]}"
    forwarder: TcpForwarder | None = None
    if kind == "sqlite":
        path = tmp_path / "users.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        # relative to gateway.toml, which start() writes in tmp_path
        db = UsersDb(kind, engine, table, "sqlite:///users.db", GarbledFile(path))
    else:
        service, port, url, dsn = SQL_SERVERS[kind]
        need_port(service, port)
        engine = sqlalchemy.create_engine(url.format(port=port))
        forwarder = TcpForwarder(port)
        db = UsersDb(kind, engine, table, dsn.format(port=forwarder.port), forwarder)
    try:
        db.sql(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, username VARCHAR(64) NOT NULL UNIQUE,"
            " password_hash VARCHAR(255), roles VARCHAR(255),"
            " active BOOLEAN NOT NULL DEFAULT TRUE)"
        )
        db.sql(
            f"INSERT INTO {table} (id, username, password_hash, roles)"
            " VALUES (41, 'ada', :hash, 'staff')",
            hash=ada_hash(),
        )
        yield db
    finally:
        db.outage.up()  # a test that failed with its source down leaves it so
        db.sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()
        if forwarder is not None:
            forwarder.down()


def start_sql(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str, db: UsersDb
) -> tuple[InProcessGateway, FakeClock, Path]:
    return start(tmp_path, upstream, revocation, db.auth())


@MODES
def test_sql_row_deleted_is_refused_after_refresh_and_changed_roles_apply(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str, users_db: UsersDb
):
    """An UPDATE of the roles column reaches the next request; a DELETE ends the session.

    Signed in as "ADA": the query gets the canonical "ada" at sign-in and at every refresh,
    which PostgreSQL's case-sensitive `=` needs to find the row again.
    """
    gw, clock, config = start_sql(tmp_path, upstream, revocation, users_db)
    with gw:
        client = login(gw, "ADA", ADA_PASSWORD)
        token = claims_of(client.cookies[COOKIE])
        # the id column is `sub`; the name the query takes rides along for the refresh
        assert (token["sub"], token["username"], token["roles"]) == ("41", "ada", ["staff"])
        users_db.sql(f"UPDATE {users_db.table} SET roles = 'staff,ops' WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x").status_code == 200
        assert upstream.last().header("x-user-id") == ["41"]
        assert_roles_reached(client, upstream, ["staff", "ops"])
        users_db.sql(f"DELETE FROM {users_db.table} WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401
        assert COOKIE not in client.cookies
        assert session_revoked(config, token["sid"])


def test_sql_name_taken_over_by_another_row_is_not_the_same_user(
    tmp_path: Path, upstream: RecordingUpstream, users_db: UsersDb
):
    """ada's row deleted and the name given to a new row (id 42, admin): the old session is
    not that user, whatever the new row's roles."""
    gw, clock, _ = start_sql(tmp_path, upstream, "lazy", users_db)
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        users_db.sql(f"DELETE FROM {users_db.table} WHERE id = 41")
        users_db.sql(
            f"INSERT INTO {users_db.table} (id, username, password_hash, roles)"
            " VALUES (42, 'ada', :hash, 'admin')",
            hash=ada_hash(),
        )
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401
        # the new row's owner signs in as herself, with her own id
        assert claims_of(login(gw, "ada", ADA_PASSWORD).cookies[COOKIE])["sub"] == "42"


def test_sql_deactivated_row_is_refused_after_refresh(
    tmp_path: Path, upstream: RecordingUpstream, users_db: UsersDb
):
    """`active = FALSE`: the query finds no row at the refresh, so the session ends."""
    gw, clock, _ = start_sql(tmp_path, upstream, "strict", users_db)
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        users_db.sql(f"UPDATE {users_db.table} SET active = FALSE WHERE id = 41")
        clock.advance(REFRESH + 1)
        assert client.get("/app/x", headers=API).status_code == 401


@pytest.mark.parametrize(
    ("revocation", "status"),
    [("lazy", 200), ("strict", 503)],
    ids=["lazy keeps serving the valid token", "strict answers 503"],
)
def test_sql_source_down_during_refresh(
    tmp_path: Path, upstream: RecordingUpstream, revocation: str, status: int, users_db: UsersDb
):
    """The database gone at the refresh: lazy serves the token it has until `exp` (then 503),
    strict answers 503; back up, the next refresh after the retry pause lets ada in."""
    gw, clock, _ = start_sql(tmp_path, upstream, revocation, users_db)
    with gw:
        client = login(gw, "ada", ADA_PASSWORD)
        before = client.cookies[COOKIE]
        users_db.outage.down()
        clock.advance(REFRESH + 1)
        response = client.get("/app/x", headers=API)
        assert response.status_code == status
        if revocation == "lazy":
            assert "set-cookie" not in response.headers  # served, not re-issued
            assert client.cookies[COOKIE] == before
            clock.advance(ACCESS_TTL)  # past exp: nothing valid left to serve
            assert client.get("/app/x", headers=API).status_code == 503
        users_db.outage.up()
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
