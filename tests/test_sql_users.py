"""`users = "sql"` end to end: a legacy users table in SQLite, PostgreSQL and MariaDB.

Each backend gets the same table, seeded with hashes written by the libraries that
write them (argon2-cffi, bcrypt, PHP's `$2y$`, Django, Werkzeug), and a real gateway
process signs people in from it over HTTP. The table names are unique to the run and
dropped afterwards. PostgreSQL (127.0.0.1:5432, user postgres, database `test`) and
MariaDB (127.0.0.1:3306, root, database `test`) skip when absent unless
GATEWAY_TEST_REQUIRE names them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from gateway.sources.sql import engine_url, parse_roles
from tests.conftest import Gateway, closed_port, free_port, make_gateway, write_config
from tests.legacy_hashes import (
    argon2id,
    bcrypt_hash,
    django_make_password,
    django_pbkdf2_legacy,
    django_salted,
    php_password_hash,
    werkzeug_hash,
)
from tests.services import need_port
from tests.upstream import RecordingUpstream

INVALID = {"error": "invalid_credentials", "detail": "Wrong username or password."}


@dataclass(frozen=True)
class Account:
    """One row of the legacy users table, and what signing in as it must give."""

    id: int
    username: str
    password: str
    stored: str | None
    roles: str | None = None  # the comma-separated column
    role_list: tuple[str, ...] = ()  # the array column (text[] / JSON)
    extra_roles: tuple[str, ...] = ()  # rows of the second (roles) table


def _accounts() -> list[Account]:
    def pw(name: str) -> str:
        return f"{name} pässword ✓ 1"

    return [
        Account(1, "ada", pw("ada"), argon2id(pw("ada")), "staff, ops", ("staff", "ops")),
        Account(2, "brian", pw("brian"), bcrypt_hash(pw("brian"), b"2a"), "staff", ("staff",)),
        Account(3, "carol", pw("carol"), bcrypt_hash(pw("carol"), b"2b"), "admin,staff"),
        Account(4, "dmitri", pw("dmitri"), php_password_hash(pw("dmitri")), "php-admin"),
        Account(5, "edsger", pw("edsger"), django_make_password(pw("edsger")), "django"),
        Account(6, "fran", pw("fran"), django_pbkdf2_legacy(pw("fran")), None, (), ("old",)),
        Account(7, "grace", pw("grace"), werkzeug_hash(pw("grace"), "pbkdf2:sha256:260000")),
        Account(8, "hedy", pw("hedy"), werkzeug_hash(pw("hedy"), "scrypt"), "flask,ops"),
        Account(9, "ivan", pw("ivan"), django_salted("sha1", pw("ivan"), "q8Zx2k"), "weak"),
        Account(10, "jo", pw("jo"), django_make_password(pw("jo"), "md5"), "weak"),
        Account(11, "ken", pw("ken"), "{SSHA}c2VjcmV0c2FsdHNhbHQ=", "mystery"),
        Account(12, "lin", pw("lin"), None, "no-password"),
        Account(
            13,
            "mo",
            pw("mo"),
            argon2id(pw("mo")),
            "ignored,when,roles_query",
            ("editor", "viewer"),
            ("auditor", "reporter"),
        ),
    ]


ACCOUNTS = {a.username: a for a in _accounts()}
STRONG = {
    "argon2id (argon2-cffi)": "ada",
    "bcrypt $2a$": "brian",
    "bcrypt $2b$": "carol",
    "bcrypt $2y$ (PHP password_hash)": "dmitri",
    "Django pbkdf2_sha256 (Django 5)": "edsger",
    "Django pbkdf2_sha256 (Django 3.2 iterations)": "fran",
    "Werkzeug pbkdf2:sha256": "grace",
    "Werkzeug scrypt": "hedy",
}
WEAK = {"salted sha1 (Django format)": "ivan", "salted md5 (Django)": "jo"}


# -- the databases -------------------------------------------------------------------


@dataclass
class LegacyDb:
    """A seeded users table (and roles table) in one backend, with the test's own engine."""

    kind: str
    engine: sqlalchemy.Engine
    users: str
    roles: str
    dsn: str  # as an operator writes it in gateway.toml
    alias_dsn: str  # the same database spelled another accepted way
    down_dsn: str  # the same kind of database where none answers
    write_query: str  # a query that would write if the connection let it
    seeded: tuple[list[tuple], list[tuple]] = ((), ())  # type: ignore[assignment]

    def snapshot(self) -> tuple[list[tuple], list[tuple]]:
        with self.engine.connect() as conn:
            users = conn.execute(sqlalchemy.text(f"SELECT * FROM {self.users} ORDER BY id"))
            roles = conn.execute(
                sqlalchemy.text(f"SELECT * FROM {self.roles} ORDER BY user_id, role")
            )
            return [tuple(r) for r in users], [tuple(r) for r in roles]


def _schema(kind: str, users: str, roles: str) -> list[str]:
    role_list = {"sqlite": "TEXT", "postgresql": "TEXT[]", "mariadb": "JSON"}[kind]
    return [
        f"""CREATE TABLE {users} (
            id INTEGER PRIMARY KEY,
            username VARCHAR(64) NOT NULL UNIQUE,
            password_hash VARCHAR(255),
            roles VARCHAR(255),
            role_list {role_list},
            login_count INTEGER NOT NULL DEFAULT 0
        )""",
        f"CREATE TABLE {roles} (user_id INTEGER NOT NULL, role VARCHAR(64) NOT NULL)",
    ]


def _seed(db: LegacyDb) -> None:
    with db.engine.begin() as conn:
        for statement in _schema(db.kind, db.users, db.roles):
            conn.execute(sqlalchemy.text(statement))
        for a in ACCOUNTS.values():
            role_list: object = list(a.role_list) if a.role_list else None
            if db.kind != "postgresql" and role_list is not None:
                role_list = json.dumps(role_list)
            conn.execute(
                sqlalchemy.text(
                    f"INSERT INTO {db.users} (id, username, password_hash, roles, role_list)"
                    " VALUES (:id, :username, :stored, :roles, :role_list)"
                ),
                {
                    "id": a.id,
                    "username": a.username,
                    "stored": a.stored,
                    "roles": a.roles,
                    "role_list": role_list,
                },
            )
            for role in a.extra_roles:
                conn.execute(
                    sqlalchemy.text(f"INSERT INTO {db.roles} (user_id, role) VALUES (:id, :role)"),
                    {"id": a.id, "role": role},
                )


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def legacy_db(request, tmp_path_factory) -> Iterator[LegacyDb]:
    kind = request.param
    token = uuid.uuid4().hex[:10]
    users, roles = f"gw_users_{token}", f"gw_roles_{token}"
    update = (
        f"UPDATE {users} SET login_count = login_count + 1 WHERE username = :username"
        " RETURNING id, password_hash, roles"
    )
    if kind == "sqlite":
        base = tmp_path_factory.mktemp("sql-users")
        path = base / "legacy.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{path}")
        # gateway configs live one folder down: the DSN is relative to the config file
        db = LegacyDb(
            kind,
            engine,
            users,
            roles,
            dsn="sqlite:///../legacy.db",
            alias_dsn=f"sqlite:///{path}",
            down_dsn="sqlite:///../missing/legacy.db",
            write_query=update,
        )
    elif kind == "postgresql":
        need_port("postgres", 5432)
        engine = sqlalchemy.create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
        db = LegacyDb(
            kind,
            engine,
            users,
            roles,
            dsn="postgresql://postgres@127.0.0.1:5432/test",
            alias_dsn="postgres://postgres@127.0.0.1:5432/test",
            down_dsn=f"postgresql://postgres@127.0.0.1:{closed_port()}/test",
            # a writable CTE: the read looks innocent, the WITH part writes
            write_query=(f"WITH bump AS ({update}) SELECT id, password_hash, roles FROM bump"),
        )
    else:
        need_port("mariadb", 3306)
        engine = sqlalchemy.create_engine("mysql+pymysql://root@127.0.0.1:3306/test")
        db = LegacyDb(
            kind,
            engine,
            users,
            roles,
            dsn="mysql://root@127.0.0.1:3306/test",
            alias_dsn="mariadb://root@127.0.0.1:3306/test",
            down_dsn=f"mysql://root@127.0.0.1:{closed_port()}/test",
            # MariaDB has no UPDATE ... RETURNING; DELETE ... RETURNING writes as surely
            write_query=(
                f"DELETE FROM {users} WHERE username = :username RETURNING id, password_hash, roles"
            ),
        )
    try:
        _seed(db)
        db.seeded = db.snapshot()
        yield db
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {users}"))
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS {roles}"))
        engine.dispose()


# -- the gateways --------------------------------------------------------------------


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def start_sql_gateway(
    directory: Path,
    upstream: RecordingUpstream,
    dsn: str,
    query: str,
    roles_query: str = "",
    allow_weak: bool = False,
    max_failures: int = 1000,
) -> Gateway:
    routes = f"""
[[routes]]
name = "app"
path = "/app"
upstream = "{upstream.url}"
auth = "required"
"""
    extra = f"""
[auth]
users = "sql"

[login_limits]
max_failures = {max_failures}

[auth.sql]
dsn = {_toml(dsn)}
query = {_toml(query)}
roles_query = {_toml(roles_query)}
allow_weak_hashes = {"true" if allow_weak else "false"}
"""
    return make_gateway(directory, routes, extra, users=None)


def _gateway_dir(db: LegacyDb, tmp_path_factory, name: str) -> Path:
    if db.kind == "sqlite":
        # beside legacy.db, so that "sqlite:///../legacy.db" finds it
        base = Path(db.engine.url.database).parent
        return base / f"gw-{name}"
    return tmp_path_factory.mktemp(f"gw-{db.kind}-{name}")


@pytest.fixture(scope="module")
def main_gateway(legacy_db, upstream, tmp_path_factory) -> Iterator[Gateway]:
    """Roles as a comma-separated column; weak hashes not allowed."""
    gw = start_sql_gateway(
        _gateway_dir(legacy_db, tmp_path_factory, "main"),
        upstream,
        legacy_db.dsn,
        f"SELECT id, password_hash, roles FROM {legacy_db.users} WHERE username = :username",
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def array_gateway(legacy_db, upstream, tmp_path_factory) -> Iterator[Gateway]:
    """Roles as an array column: PostgreSQL text[], a JSON array in MariaDB and SQLite."""
    gw = start_sql_gateway(
        _gateway_dir(legacy_db, tmp_path_factory, "array"),
        upstream,
        legacy_db.dsn,
        f"SELECT id, password_hash, role_list FROM {legacy_db.users} WHERE username = :username",
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def weak_gateway(legacy_db, upstream, tmp_path_factory) -> Iterator[Gateway]:
    """Weak hashes allowed, roles from a second query, the DSN in its alias spelling."""
    gw = start_sql_gateway(
        _gateway_dir(legacy_db, tmp_path_factory, "weak"),
        upstream,
        legacy_db.alias_dsn,
        f"SELECT id, password_hash FROM {legacy_db.users} WHERE username = :username",
        roles_query=f"SELECT role FROM {legacy_db.roles} WHERE user_id = :id ORDER BY role",
        allow_weak=True,
    )
    yield gw
    gw.stop()


def login(gw: Gateway, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = gw.client()
    # ASCII-escaped JSON: a NUL or any other character arrives exactly as written
    body = json.dumps({"username": username, "password": password})
    response = client.post(
        "/.auth/login", content=body, headers={"content-type": "application/json"}
    )
    return client, response


def login_as(gw: Gateway, username: str) -> tuple[httpx.Client, httpx.Response]:
    return login(gw, username, ACCOUNTS[username].password)


# -- signing in ----------------------------------------------------------------------


@pytest.mark.parametrize("username", list(STRONG.values()), ids=list(STRONG))
def test_each_hash_format_signs_in_through_the_gateway(main_gateway, username):
    account = ACCOUNTS[username]
    client, response = login_as(main_gateway, username)
    with closing(client):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["sub"] == str(account.id)
        expected = [r.strip() for r in (account.roles or "").split(",") if r.strip()]
        assert body["roles"] == expected
        me = client.get("/.auth/me")
        assert me.status_code == 200
        assert me.json()["sub"] == str(account.id)


@pytest.mark.parametrize("username", list(STRONG.values()), ids=list(STRONG))
def test_a_wrong_password_is_refused_for_each_hash_format(main_gateway, username):
    client, response = login(main_gateway, username, ACCOUNTS[username].password + "x")
    with closing(client):
        assert response.status_code == 401
        assert response.json() == INVALID
        assert client.cookies.get("gw_session") is None
        assert client.get("/.auth/me").status_code == 401


@pytest.mark.parametrize(
    "username",
    ["nobody", "' OR '1'='1", "ada'--", "ada\u0000"],
    ids=["a name not in the table", "an SQL injection", "a comment injection", "a NUL byte"],
)
def test_an_unknown_user_gets_the_same_401_as_a_wrong_password(main_gateway, username):
    _, wrong = login(main_gateway, "ada", "not the password")
    _, unknown = login(main_gateway, username, ACCOUNTS["ada"].password)
    assert unknown.status_code == 401
    assert (unknown.status_code, unknown.json()) == (wrong.status_code, wrong.json())


@pytest.mark.parametrize(
    "variant",
    ["ADA", "ada ", " Ada", "\uff41\uff44\uff41", "\uff21\uff24\uff21"],
    ids=["upper case", "a trailing blank", "mixed case, a leading blank", "fullwidth", "FULLWIDTH"],
)
def test_every_spelling_of_a_name_reaches_the_query_in_one_form(main_gateway, variant):
    # the query compares `username = :username` exactly: only the canonical "ada" finds the
    # row, in PostgreSQL's case-sensitive collation as in MariaDB's folding one
    _, response = login(main_gateway, variant, ACCOUNTS["ada"].password)
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == str(ACCOUNTS["ada"].id)


def test_spellings_the_query_folds_together_share_one_failure_budget(
    legacy_db, upstream, tmp_path_factory
):
    # a query (or a collation: MariaDB's general_ci takes "adá" for "ada") that finds one row
    # by several names must not give each name its own lockout budget
    gw = start_sql_gateway(
        _gateway_dir(legacy_db, tmp_path_factory, "folding"),
        upstream,
        legacy_db.dsn,
        f"SELECT id, password_hash, roles FROM {legacy_db.users} "
        "WHERE replace(username, '-', '') = replace(:username, '-', '')",
        max_failures=3,
    )
    try:
        for variant in ("a-da", "ad-a", "-ada"):
            _, response = login(gw, variant, "not the password")
            assert response.status_code == 401
            assert response.json() == INVALID
        for spelling in ("ada", "a--da"):
            _, response = login(gw, spelling, ACCOUNTS["ada"].password)
            assert response.status_code == 429, response.text
        # a wrong password under a new spelling gets the same 429: a 401 beside the right
        # password's 429 would tell the two apart, and each spelling would guess again
        for spelling in ("ada--", "ada---"):
            _, response = login(gw, spelling, "still not the password")
            assert response.status_code == 429, response.text
        # another user of the same table is not locked by ada's failures
        _, response = login_as(gw, "mo")
        assert response.status_code == 200, response.text
    finally:
        gw.stop()


def test_roles_from_a_comma_separated_column_reach_the_upstream(main_gateway, upstream):
    client, response = login_as(main_gateway, "ada")
    with closing(client):
        assert response.json()["roles"] == ["staff", "ops"]
        upstream.clear()
        page = client.get("/app/inbox")
        assert page.status_code == 200
        seen = upstream.last()
        assert seen.header("x-user-id") == ["1"]
        assert seen.header("x-user-roles") == ["staff,ops"]


def test_roles_from_an_array_column(array_gateway, legacy_db):
    client, response = login_as(array_gateway, "ada")
    client.close()
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["staff", "ops"]
    _, response = login_as(array_gateway, "mo")
    assert response.json()["roles"] == ["editor", "viewer"]
    _, response = login_as(array_gateway, "carol")  # NULL array: no roles
    assert response.status_code == 200
    assert response.json()["roles"] == []


def test_roles_from_a_second_query(weak_gateway):
    _, response = login_as(weak_gateway, "mo")
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["auditor", "reporter"]
    _, response = login_as(weak_gateway, "fran")
    assert response.json()["roles"] == ["old"]
    _, response = login_as(weak_gateway, "ada")  # no rows in the roles table
    assert response.json()["roles"] == []


# -- hashes the gateway will not take ------------------------------------------------


def test_an_unknown_hash_format_is_a_401_a_log_line_and_the_gateway_keeps_serving(main_gateway):
    _, response = login_as(main_gateway, "ken")
    assert response.status_code == 401
    assert response.json() == INVALID
    assert "sql users: login refused for '11': unrecognised password hash format" in (
        main_gateway.logs()
    )
    assert main_gateway.proc.poll() is None
    _, again = login_as(main_gateway, "ada")
    assert again.status_code == 200


def test_a_user_without_a_stored_hash_cannot_sign_in(main_gateway):
    _, response = login_as(main_gateway, "lin")
    assert response.status_code == 401
    assert response.json() == INVALID
    assert "login refused for '12': no password hash stored" in main_gateway.logs()


@pytest.mark.parametrize("username", list(WEAK.values()), ids=list(WEAK))
def test_weak_hashes_are_refused_unless_allowed(main_gateway, username):
    _, response = login_as(main_gateway, username)
    assert response.status_code == 401
    assert response.json() == INVALID
    user_id = ACCOUNTS[username].id
    assert f"login refused for '{user_id}'" in main_gateway.logs()
    assert "set allow_weak_hashes = true to accept it" in main_gateway.logs()
    assert "allow_weak_hashes is on" not in main_gateway.logs()


@pytest.mark.parametrize("username", list(WEAK.values()), ids=list(WEAK))
def test_weak_hashes_sign_in_when_allowed_with_a_warning_at_start(weak_gateway, username):
    assert "WARNING gateway.users auth.sql.allow_weak_hashes is on" in weak_gateway.logs()
    _, response = login_as(weak_gateway, username)
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == str(ACCOUNTS[username].id)
    _, wrong = login(weak_gateway, username, "not it")
    assert wrong.status_code == 401


# -- the database ----------------------------------------------------------------------


def test_a_database_that_is_down_gives_503_json_not_a_crash(legacy_db, upstream, tmp_path_factory):
    directory = _gateway_dir(legacy_db, tmp_path_factory, "down")
    gw = start_sql_gateway(
        directory,
        upstream,
        legacy_db.down_dsn,
        f"SELECT id, password_hash, roles FROM {legacy_db.users} WHERE username = :username",
    )
    try:
        _, response = login_as(gw, "ada")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"] == "store_unavailable"
        assert "sql users: database error:" in gw.logs()
        assert "Traceback" not in gw.logs()
        assert gw.client().get("/.auth/health").status_code == 200
        _, again = login_as(gw, "ada")
        assert again.status_code == 503
        assert gw.proc.poll() is None
    finally:
        gw.stop()
    if legacy_db.kind == "sqlite":
        # opened read-only: a wrong path is an error, never a new empty database
        assert not (directory.parent / "missing").exists()


def test_a_query_that_writes_is_refused_by_the_read_only_connection(
    legacy_db, upstream, tmp_path_factory
):
    gw = start_sql_gateway(
        _gateway_dir(legacy_db, tmp_path_factory, "write"),
        upstream,
        legacy_db.dsn,
        legacy_db.write_query,
    )
    try:
        for _ in range(2):  # the second time on a pooled connection
            _, response = login_as(gw, "ada")
            assert response.status_code == 503, response.text
        refusal = {
            "sqlite": "attempt to write a readonly database",
            "postgresql": "ReadOnlySqlTransaction: cannot execute SELECT in a read-only transaction",
            "mariadb": "Cannot execute statement in a READ ONLY transaction",
        }[legacy_db.kind]
        assert refusal in gw.logs()
        assert gw.proc.poll() is None
    finally:
        gw.stop()
    assert legacy_db.snapshot() == legacy_db.seeded


def test_signing_in_never_writes_to_the_users_database(main_gateway, weak_gateway, legacy_db):
    for username in ACCOUNTS:
        login_as(main_gateway, username)
    for username in (*WEAK.values(), "mo"):
        login_as(weak_gateway, username)
        login(weak_gateway, username, "wrong")
    assert legacy_db.snapshot() == legacy_db.seeded


def test_the_logs_never_show_a_password(main_gateway, weak_gateway):
    logs = main_gateway.logs() + weak_gateway.logs()
    for account in ACCOUNTS.values():
        assert account.password not in logs


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("not a url", "is not a database URL"),
        ("oracle://scott:tiger-secret@127.0.0.1/orcl", "scheme 'oracle' is not"),
        ("mysql+mysqldb://root:tiger-secret@127.0.0.1/test", "scheme 'mysql+mysqldb' is not"),
        ("sqlite://", "is not a database URL"),
    ],
    ids=["not a URL", "a database we have no driver for", "a driver we do not ship", "no file"],
)
def test_gateway_check_refuses_a_dsn_that_cannot_work(tmp_path, dsn, message):
    extra = f"""
[auth]
users = "sql"

[auth.sql]
dsn = {_toml(dsn)}
query = "SELECT id, hash FROM users WHERE name = :username"
"""
    routes = '[[routes]]\nname = "a"\npath = "/"\nupstream = "http://127.0.0.1:9"\n'
    config = write_config(tmp_path, free_port(), routes, extra)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"auth.sql.dsn: {message}" in done.stderr
    assert "tiger-secret" not in done.stderr


@pytest.mark.parametrize(
    ("column", "roles"),
    [
        ("staff, ops", ("staff", "ops")),
        ("staff,,staff, ", ("staff",)),
        (["staff", "ops"], ("staff", "ops")),
        ('["staff", "ops"]', ("staff", "ops")),
        (b"staff,ops", ("staff", "ops")),
        ([b"staff", b"ops"], ("staff", "ops")),
        (None, ()),
        ("", ()),
        ("staff,evil\r\nX-User-Id: root", ("staff",)),
    ],
    ids=[
        "a comma-separated string",
        "repeats and blanks dropped",
        "an array",
        "a JSON array in a text column",
        "bytes from a binary column",
        "an array of bytes",
        "NULL",
        "an empty string",
        "a control character drops that role",
    ],
)
def test_roles_are_read_from_what_a_database_returns(column, roles):
    assert parse_roles(column) == roles


@pytest.mark.parametrize(
    ("dsn", "driver", "database"),
    [
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+psycopg", "test"),
        ("postgres://postgres@127.0.0.1:5432/test", "postgresql+psycopg", "test"),
        ("mysql://root@127.0.0.1:3306/test", "mysql+pymysql", "test"),
        ("mariadb://root@127.0.0.1:3306/test", "mysql+pymysql", "test"),
        ("sqlite:///data/app.db", "sqlite", "file:///srv/gw/data/app.db?mode=ro"),
        ("sqlite:///../app.db", "sqlite", "file:///srv/gw/../app.db?mode=ro"),
        ("sqlite:////var/lib/app/app.db", "sqlite", "file:///var/lib/app/app.db?mode=ro"),
        ("sqlite:///a b.db", "sqlite", "file:///srv/gw/a%20b.db?mode=ro"),
    ],
)
def test_dsn_forms_map_to_our_drivers_and_read_only_sqlite_files(dsn, driver, database):
    url = engine_url(dsn, Path("/srv/gw"))
    assert url.drivername == driver
    assert url.database == database
    if driver == "sqlite":
        assert url.query["uri"] == "true"


def test_a_passkey_signs_in_a_user_of_the_database(main_gateway):
    """The factor lives in the gateway's store; at a passkey sign-in the user is asked of the
    database again (by the name it gave), as at a refresh: its roles, its id."""
    from tests.soft_authenticator import SoftAuthenticator

    client, response = login_as(main_gateway, "ada")
    assert response.status_code == 200, response.text
    user_id = response.json()["sub"]
    key = SoftAuthenticator(f"http://localhost:{main_gateway.port}")
    try:
        options = client.post("/.auth/mfa/webauthn/register/options", json={}).json()
        added = client.post(
            "/.auth/mfa/webauthn/register", json={"credential": key.create(options)}
        )
        assert added.status_code == 200, added.text
        anonymous = main_gateway.client()
        options = anonymous.post("/.auth/mfa/webauthn/passkey/options", json={}).json()
        done = anonymous.post("/.auth/mfa/webauthn/passkey", json={"credential": key.get(options)})
        assert done.status_code == 200, done.text
        assert done.json()["sub"] == user_id and done.json()["amr"] == ["hwk"]
        assert done.json()["roles"] == ["staff", "ops"]
    finally:
        reset = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "mfa",
                "reset",
                user_id,
                "-c",
                str(main_gateway.config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=main_gateway.directory,
        )
        assert reset.returncode == 0, reset.stderr
