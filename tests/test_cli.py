"""The CLI as an operator runs it: `gateway check`, `gateway users`, `gateway keys`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.auth.keys import write_key
from gateway.config import ConfigError, load_config, parse_duration
from gateway.sources.file import read_users
from tests.conftest import USERS, closed_port, standard_routes

ROOT = Path(__file__).resolve().parent.parent


def gateway_cmd(
    *args: str, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None
):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
    )


GOOD = """
[server]
listen = "127.0.0.1:8123"
public_url = "https://gw.example.com"

[session]
secure = true

[[routes]]
name = "site"
path = "/"
upstream = "http://127.0.0.1:9001"
auth = "public"

[[routes]]
name = "crm"
path = "/crm"
host = "crm.example.com"
upstream = "http://127.0.0.1:9002"
strip_prefix = true
auth = "required"
roles = ["staff"]
methods = ["GET", "POST"]
timeout = "30s"
"""


def test_check_prints_the_routes_table(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    result = gateway_cmd("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("ok, 2 route(s)")
    assert lines[1].split() == ["NAME", "HOST", "PATH", "AUTH", "ROLES", "METHODS", "UPSTREAM"]
    assert lines[2].split() == ["site", "*", "/", "public", "-", "any", "http://127.0.0.1:9001"]
    assert lines[3].split() == [
        "crm",
        "crm.example.com",
        "/crm",
        "(strip)",
        "required",
        "staff",
        "GET,HEAD,POST",
        "http://127.0.0.1:9002",
    ]


def test_check_uses_gateway_config_env(tmp_path: Path):
    config = tmp_path / "elsewhere.toml"
    config.write_text(GOOD)
    result = gateway_cmd("check", env={"GATEWAY_CONFIG": str(config)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


BAD = """
[server]
listen = "nowhere"
public_url = "ftp://x"
bogus = 1

[session]
access_ttl = "soon"
same_site = "sideways"

[keys]
algorithm = "HS256"

[[routes]]
name = "a"
path = "/"
upstream = "htp:/x"
auth = "public"

[[routes]]
name = "b"
path = "relative"
upstream = "http://127.0.0.1:1"
auth = "maybe"
methods = ["FETCH"]
colour = "blue"
"""


def test_check_lists_every_error_with_its_field_path(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(BAD)
    result = gateway_cmd("check", "-c", str(config))
    assert result.returncode == 1
    err = result.stderr
    expected = [
        "error: server.listen: 'nowhere' is not \"host:port\"",
        "error: server.public_url: 'ftp://x' is not an http(s) URL",
        "error: server.bogus: unknown key",
        'error: session.access_ttl: \'soon\' is not a duration like "30s", "15m", "12h" or "7d"',
        "error: session.same_site: 'sideways' is not one of 'lax', 'strict', 'none'",
        "error: keys.secret: HS256 needs a secret of at least 32 bytes (got 0)",
        "error: routes[0].upstream: 'htp:/x' is not an http(s) URL",
        "error: routes[1].path: 'relative' must be an absolute path",
        "error: routes[1].auth: 'maybe' is not one of 'public', 'optional', 'required'",
        "error: routes[1].methods: ['FETCH'] has unknown method 'FETCH'",
        "error: routes[1].colour: unknown key",
    ]
    for line in expected:
        assert line in err, f"missing {line!r} in:\n{err}"
    assert "error(s) in the config" in err
    assert result.stdout == ""


def test_env_interpolation_and_missing_variable(tmp_path: Path):
    text = GOOD.replace("secure = true", 'secure = true\ncookie = "${COOKIE_NAME}"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    assert load_config(config, env={"COOKIE_NAME": "sess"}).session.cookie == "sess"
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert info.value.errors == ["session.cookie: environment variable ${COOKIE_NAME} is not set"]


def test_secure_cookie_gets_host_prefix(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    loaded = load_config(config)
    assert loaded.cookie_secure and loaded.cookie_name == "__Host-gw_session"


@pytest.mark.parametrize(
    "text,seconds",
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), ("250ms", 0.25), (5, 5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path):
    config = tmp_path / "sub" / "gateway.toml"
    config.parent.mkdir()
    config.write_text(GOOD)
    loaded = load_config(config)
    assert loaded.keys.dir == tmp_path / "sub" / "data" / "keys"
    assert loaded.auth.users_file == tmp_path / "sub" / "users.toml"


def test_check_missing_file_exits_1(tmp_path: Path):
    result = gateway_cmd("check", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "no such config file" in result.stderr


def test_usage_error_exits_2():
    assert gateway_cmd("frobnicate").returncode == 2


def test_users_add_list_passwd_remove(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    c = str(config)
    added = gateway_cmd(
        "users",
        "add",
        "Carol",
        "--roles",
        "staff,ops",
        "--password-stdin",
        "-c",
        c,
        stdin="s3cret-pass\n",
    )
    assert added.returncode == 0, added.stderr
    users_file = tmp_path / "users.toml"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    record = read_users(users_file)["carol"]
    assert record.hash.startswith("$argon2id$") and record.roles == ("staff", "ops")
    assert "s3cret-pass" not in users_file.read_text()

    again = gateway_cmd("users", "add", "carol", "--password-stdin", "-c", c, stdin="x\n")
    assert again.returncode == 1 and "exists" in again.stderr

    listed = gateway_cmd("users", "list", "-c", c)
    assert listed.stdout.splitlines()[1].split() == ["carol", "staff,ops"]

    old_hash = record.hash
    changed = gateway_cmd(
        "users", "passwd", "carol", "--password-stdin", "-c", c, stdin="n3w-pass\n"
    )
    assert changed.returncode == 0
    assert read_users(users_file)["carol"].hash != old_hash
    assert read_users(users_file)["carol"].roles == ("staff", "ops")

    removed = gateway_cmd("users", "remove", "carol", "-c", c)
    assert removed.returncode == 0
    assert read_users(users_file) == {}
    missing = gateway_cmd("users", "remove", "carol", "-c", c)
    assert missing.returncode == 1 and "no user" in missing.stderr


@pytest.mark.parametrize("revocation", ["", "strict"], ids=["default revocation", "strict"])
def test_users_passwd_ends_the_sessions_of_the_user(gateway_factory, upstream, revocation):
    """An operator's password reset ends a stolen session at once, as `disable` does: the
    running gateway and the CLI share the config and its SQLite store."""
    mode = f'\n[session]\nrevocation = "{revocation}"\n' if revocation else ""
    gw = gateway_factory(
        routes=standard_routes(upstream.url, f"http://127.0.0.1:{closed_port()}"),
        # the default (lazy) mode asks the store at the refresh: make that one second away
        extra='[auth]\nrefresh = "1s"\n' + mode,
    )
    json_only = {"accept": "application/json"}
    alice = gw.login("alice")
    bob = gw.login("bob")
    stolen = {**json_only, "cookie": f"gw_session={alice.cookies['gw_session']}"}
    assert gw.client().get("/app/x", headers=stolen).status_code == 200

    changed = gateway_cmd(
        "users",
        "passwd",
        "alice",
        "--password-stdin",
        "-c",
        str(gw.config),
        stdin="alice-new-password-2\n",
    )
    assert changed.returncode == 0, changed.stderr
    time.sleep(1.2)  # past the refresh (and strict mode's 1 s memory of a good answer)

    refused = gw.client().get("/app/x", headers=stolen)
    assert refused.status_code == 401, refused.text
    cookies = refused.headers.get_list("set-cookie")
    assert not [c for c in cookies if "Max-Age=0" not in c]  # cleared at most, not re-issued
    assert gw.client().get("/.auth/me", headers=stolen).status_code == 401
    assert bob.get("/app/x", headers=json_only).status_code == 200  # another user's stays
    assert changed.stdout.splitlines() == [
        "changed the password of alice",
        "revoked 1 session(s) of alice",
    ]
    old = gw.client().post(
        "/.auth/login", json={"username": "alice", "password": USERS["alice"][0]}
    )
    assert old.status_code == 401
    assert gw.login("alice", "alice-new-password-2").get("/app/x").status_code == 200


def test_users_add_refuses_bad_names_and_empty_passwords(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    bad = gateway_cmd(
        "users", "add", "../evil", "--password-stdin", "-c", str(config), stdin="pw\n"
    )
    assert bad.returncode == 1 and "not allowed" in bad.stderr
    empty = gateway_cmd("users", "add", "dave", "--password-stdin", "-c", str(config), stdin="\n")
    assert empty.returncode == 1 and "empty" in empty.stderr


def test_users_add_prompts_twice_on_a_terminal(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "users", "add", "erin", "-c", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,  # no controlling tty: getpass reads the pty on stdin
    )
    os.close(slave)
    output = b""
    # getpass flushes typed-ahead input (TCSAFLUSH), so answer each prompt only once shown
    for prompt in (b"Password: ", b"Repeat password: "):
        while not output.endswith(prompt):
            output += os.read(master, 1024)
        os.write(master, b"pty-password-1\n")
    assert proc.wait(timeout=30) == 0
    os.close(master)
    assert "erin" in read_users(tmp_path / "users.toml")


def test_keys_rotate_list_retire(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD.replace("[session]", '[keys]\ndir = "keys"\n\n[session]'))
    c = str(config)
    keys = tmp_path / "keys"
    oldest = write_key(keys, "EdDSA", now=time.time() - 3600)
    current = write_key(keys, "EdDSA", now=time.time() - 60)
    rotated = gateway_cmd("keys", "rotate", "-c", c)
    assert rotated.returncode == 0 and "signs in 10s" in rotated.stdout
    files = sorted(keys.glob("*.pem"))
    assert len(files) == 3
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    newest = files[2].stem
    listed = [
        line.split(None, 2) for line in gateway_cmd("keys", "list", "-c", c).stdout.splitlines()
    ]
    assert [row[0] for row in listed[1:]] == [oldest, current, newest]
    assert [row[2] for row in listed[1:]] == [
        "verifies",
        "active (signs)",
        "next (verifies; signs once it is 10s old)",
    ]
    refused = gateway_cmd("keys", "retire", current, "-c", c)
    assert refused.returncode == 1 and "active signing key" in refused.stderr
    too_new = gateway_cmd("keys", "retire", newest, "-c", c)
    assert too_new.returncode == 1 and "signs soon" in too_new.stderr
    retired = gateway_cmd("keys", "retire", oldest, "-c", c)
    assert retired.returncode == 0
    assert sorted(f.stem for f in keys.glob("*.pem")) == [current, newest]


def test_users_add_refuses_a_name_that_canonicalizes_like_an_existing_user(tmp_path: Path):
    config = tmp_path / "gateway.toml"
    config.write_text(GOOD)
    first = gateway_cmd(
        "users", "add", "alice", "--password-stdin", "-c", str(config), stdin="pw-1-long-enough\n"
    )
    assert first.returncode == 0, first.stderr
    again = gateway_cmd(
        "users",
        "add",
        "\uff21\uff2c\uff29\uff23\uff25",
        "--password-stdin",
        "-c",
        str(config),
        stdin="pw-2-long-enough\n",
    )
    assert again.returncode == 1 and "exists" in again.stderr


RULES = """
[[routes]]
name = "crm"
host = "crm.corp.test"
path = "/"
upstream = "http://127.0.0.1:9"
users = ["Alice"]
roles = ["sales"]
networks = ["10.0.0.0/8"]

[[routes]]
name = "status"
path = "/status"
upstream = "http://127.0.0.1:9"
bypass_networks = ["10.1.0.0/16"]

[[routes]]
name = "internal"
path = "/internal"
upstream = "http://127.0.0.1:9"
auth = "deny"

[[routes]]
name = "payroll"
path = "/payroll"
upstream = "http://127.0.0.1:9"
mfa = true
"""


@pytest.mark.parametrize(
    "args,route,rule,verdict",
    [
        (
            ["GET", "https://CRM.corp.test/page", "--user", "ALICE", "--from", "10.2.3.4"],
            "crm (host crm.corp.test",
            "users: alice is listed",
            "allow",
        ),
        (
            [
                "GET",
                "https://crm.corp.test/",
                "--user",
                "bob",
                "--roles",
                "sales,x",
                "--from",
                "10.0.0.9",
            ],
            "crm (host crm.corp.test",
            "roles: bob has sales",
            "allow",
        ),
        (
            [
                "GET",
                "https://crm.corp.test/",
                "--user",
                "bob",
                "--roles",
                "staff",
                "--from",
                "10.0.0.9",
            ],
            "crm",
            "users/roles: bob is not listed and has none of them",
            "forbidden (403)",
        ),
        (
            ["POST", "https://crm.corp.test/x", "--user", "alice", "--from", "192.168.1.1"],
            "crm",
            "networks: 192.168.1.1 is outside",
            "forbidden (403)",
        ),
        (["GET", "/status", "--from", "10.1.2.3"], "status", "bypass_networks", "allow"),
        (["GET", "/status", "--from", "10.2.0.1"], "status", "not signed in", "sign in first"),
        (
            ["GET", "/status/%2e%2e/internal/x", "--user", "root"],
            "internal",
            'auth = "deny"',
            "403",
        ),
        (
            ["GET", "/payroll", "--user", "carol"],
            "payroll",
            "mfa = true: carol has no second factor yet",
            "second factor first",
        ),
        (["GET", "/payroll", "--user", "carol", "--mfa"], "payroll", "mfa: a second", "allow"),
        (["GET", "/elsewhere"], "-", "no route matches", "not found (404)"),
        (["GET", "/.auth/login"], "-", "under auth.prefix", "the gateway's own endpoint"),
    ],
)
def test_explain_names_the_route_and_the_rule_that_decide(
    tmp_path: Path, args, route, rule, verdict
):
    config = tmp_path / "gateway.toml"
    config.write_text(RULES)
    result = gateway_cmd("explain", *args, "-c", str(config))
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["route"].startswith(route)
    assert rule in rows["rule"]
    assert verdict in rows["verdict"]


@pytest.mark.parametrize(
    "route,error",
    [
        ('auth = "public"\nusers = ["a"]', 'routes[0].users: users need auth = "required"'),
        (
            'auth = "optional"\nbypass_networks = ["10.0.0.0/8"]',
            "routes[0].bypass_networks: bypass",
        ),
        (
            'auth = "deny"\nroles = ["x"]',
            "routes[0].roles: roles need auth = \"required\", not 'deny'",
        ),
        ('networks = ["10.0.0.300/8"]', "routes[0].networks: ['10.0.0.300/8'] has '10.0.0.300/8'"),
        ('auth = "closed"', "routes[0].auth: 'closed' is not one of"),
    ],
)
def test_route_rules_in_the_config_are_checked(tmp_path: Path, route, error):
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[routes]]\nname = "r"\npath = "/"\nupstream = "http://127.0.0.1:9"\n{route}\n'
    )
    result = gateway_cmd("check", "-c", str(config))
    assert result.returncode == 1
    assert error in result.stderr, result.stderr
