"""`users = "htpasswd"`: Apache htpasswd files, with hashes made by the tools that make them.

Hashes come from Apache's `htpasswd` (apache2-utils), `openssl passwd -apr1` and the bcrypt
package; the source is built from a real config over a real file on disk, and real `gateway
run` processes sign users in over HTTP while the file is edited under them. Tests needing
`htpasswd` or `openssl` skip without them, unless GATEWAY_TEST_REQUIRE names them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, build_config
from gateway.sources.base import User
from gateway.sources.htpasswd import HtpasswdUsers, apr1_md5, from_config
from tests.conftest import Gateway, free_port, make_gateway
from tests.legacy_hashes import bcrypt_hash, php_password_hash
from tests.services import need
from tests.upstream import RecordingUpstream

ROUTE = {"name": "site", "path": "/", "upstream": "http://127.0.0.1:9"}
PASSWORD = "correct horse ✓ pässword"
INVALID = {"error": "invalid_credentials", "detail": "Wrong username or password."}


# -- hashes from the tools that write them ---------------------------------------------


def htpasswd_tool(flags: str, name: str, password: str) -> str:
    """The hash `htpasswd -nb<flags> name password` prints (Apache's apache2-utils)."""
    need("htpasswd", shutil.which("htpasswd") is not None, "apt-get install apache2-utils")
    out = subprocess.run(
        ["htpasswd", f"-nb{flags}", name, password], capture_output=True, text=True, check=True
    ).stdout
    written, _, stored = out.strip().partition(":")
    assert written == name, out
    return stored


def openssl_apr1(password: str, salt: str) -> str:
    """What `openssl passwd -apr1 -salt SALT PASSWORD` prints."""
    need("openssl", shutil.which("openssl") is not None, "apt-get install openssl")
    out = subprocess.run(
        ["openssl", "passwd", "-apr1", "-salt", salt, password],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def bcrypt_2y(password: str, rounds: int = 5) -> str:
    """bcrypt under the `$2y$` prefix `htpasswd -B` writes (htpasswd's default cost is 5)."""
    return "$2y$" + bcrypt_hash(password, rounds=rounds)[4:]


def sha1_by_definition(password: str) -> str:
    """{SHA} as Apache documents it: base64 of the unsalted SHA-1 digest."""
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


STRONG: dict[str, Callable[[str], str]] = {
    "bcrypt $2y$ from htpasswd -B": lambda pw: htpasswd_tool("B", "alice", pw),
    "bcrypt $2y$ cost 10 from htpasswd -B -C 10": lambda pw: htpasswd_tool("BC10", "alice", pw),
    "bcrypt $2b$ from the bcrypt package": lambda pw: bcrypt_hash(pw, b"2b", rounds=5),
    "bcrypt $2a$ from the bcrypt package": lambda pw: bcrypt_hash(pw, b"2a", rounds=5),
    "bcrypt $2y$ as PHP password_hash writes it": php_password_hash,
}
WEAK: dict[str, Callable[[str], str]] = {
    "{SHA} from htpasswd -s": lambda pw: htpasswd_tool("s", "alice", pw),
    "{SHA} by its definition": sha1_by_definition,
    "$apr1$ from htpasswd -m": lambda pw: htpasswd_tool("m", "alice", pw),
    "$apr1$ from openssl passwd -apr1": lambda pw: openssl_apr1(pw, "Zq8x.k/1"),
}
REFUSED: dict[str, tuple[Callable[[str], str], str]] = {
    "plain text written by hand": (lambda pw: pw, "plain text"),
    "plain text from htpasswd -p": (lambda pw: htpasswd_tool("p", "alice", pw), "plain text"),
    "crypt(3) DES from htpasswd -d": (lambda pw: htpasswd_tool("d", "alice", pw), "crypt-des"),
    "SHA-512 crypt from htpasswd -5": (lambda pw: htpasswd_tool("5", "alice", pw), "sha512-crypt"),
    "an LDAP {SSHA}": (lambda pw: "{SSHA}c2VjcmV0c2FsdHNhbHQ=", "unknown"),
}


# -- the source, built from a config over a real file ----------------------------------


def write_htpasswd(path: Path, lines: list[str]) -> Path:
    """Replace the file as an editor or config tool would (write aside, rename over)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path


def source(directory: Path, lines: list[str] | None = None, **auth: object) -> HtpasswdUsers:
    """The `users = "htpasswd"` source a config in `directory` builds."""
    if lines is not None:
        write_htpasswd(directory / "users.htpasswd", lines)
    raw = {"auth": {"users": "htpasswd", **auth}, "routes": [ROUTE]}
    return from_config(build_config(raw, directory, env={}))


def sign_in(users: HtpasswdUsers, name: str, password: str) -> User | None:
    return asyncio.run(users.authenticate(name, password))


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "login refused" in r.getMessage()]


@pytest.mark.parametrize("make", list(STRONG.values()), ids=list(STRONG))
def test_a_bcrypt_entry_verifies_and_a_wrong_password_is_refused(tmp_path, make):
    users = source(tmp_path, [f"alice:{make(PASSWORD)}"])
    assert sign_in(users, "alice", PASSWORD) == User("alice", ())
    assert sign_in(users, "alice", PASSWORD + "x") is None
    assert sign_in(users, "alice", "") is None


@pytest.mark.parametrize("make", list(WEAK.values()), ids=list(WEAK))
def test_a_weak_entry_verifies_once_weak_hashes_are_allowed(tmp_path, make):
    users = source(tmp_path, [f"alice:{make(PASSWORD)}"], htpasswd_allow_weak_hashes=True)
    assert sign_in(users, "alice", PASSWORD) == User("alice", ())
    assert sign_in(users, "alice", PASSWORD + "x") is None


@pytest.mark.parametrize("make", list(WEAK.values()), ids=list(WEAK))
def test_a_weak_entry_is_refused_with_a_log_line_unless_allowed(tmp_path, caplog, make):
    stored = make(PASSWORD)
    users = source(tmp_path, [f"alice:{stored}"])
    assert sign_in(users, "alice", PASSWORD) is None
    (line,) = refusals(caplog)
    name = "apr1" if stored.startswith("$apr1$") else "sha1"
    assert "'alice'" in line and f"(format: {name})" in line
    assert "auth.htpasswd_allow_weak_hashes = true" in line


@pytest.mark.parametrize("make,name", list(REFUSED.values()), ids=list(REFUSED))
def test_plain_text_and_crypt_entries_are_refused_even_with_weak_hashes_allowed(
    tmp_path, caplog, make, name
):
    users = source(tmp_path, [f"alice:{make(PASSWORD)}"], htpasswd_allow_weak_hashes=True)
    assert sign_in(users, "alice", PASSWORD) is None
    (line,) = refusals(caplog)
    assert "'alice'" in line and f"(format: {name})" in line
    # the load already said so, once per line
    assert any(f"'alice' has a {name} hash" in r.getMessage() for r in caplog.records)


def test_a_bcrypt_cost_over_16_is_refused_without_being_run(tmp_path, caplog):
    made = bcrypt_2y(PASSWORD, rounds=4)
    users = source(tmp_path, ["alice:" + made.replace("$04$", "$17$", 1)])
    started = time.monotonic()
    assert sign_in(users, "alice", PASSWORD) is None
    assert time.monotonic() - started < 2  # cost 17 would take many seconds
    (line,) = refusals(caplog)
    assert "bcrypt cost 17 is out of range" in line and "(format: bcrypt)" in line


@pytest.mark.parametrize(
    "password,salt",
    [
        ("secret", "abcdefgh"),
        (PASSWORD, "sAlT./09"),
        ("", "x"),
        ("a" * 16, "12345678"),
        ("b" * 17, "short"),
        ("c" * 100, "zzzzzzzz"),
        ("salt longer than 8 is cut", "0123456789"),
    ],
    ids=[
        "a short password",
        "a UTF-8 password",
        "an empty password",
        "exactly one MD5 block of password",
        "one byte more than a block",
        "a long password",
        "a salt longer than 8 characters",
    ],
)
def test_apr1_matches_openssl(password, salt):
    assert apr1_md5(password.encode(), salt.encode()) == openssl_apr1(password, salt)


@pytest.mark.parametrize(
    "password",
    ["secret", PASSWORD, "x" * 60],
    ids=["a short password", "a UTF-8 password", "a 60-byte password"],
)
def test_apr1_matches_apache_htpasswd_with_its_own_random_salt(password):
    stored = htpasswd_tool("m", "alice", password)
    salt = stored.split("$")[2]
    assert apr1_md5(password.encode(), salt.encode()) == stored


# -- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed,user",
    [
        ("alice", "alice"),
        ("ALICE", "alice"),
        (" Alice ", "alice"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # fullwidth letters: NFKC makes them ASCII
        ("bob", "bob"),
        ("BoB", "bob"),
        ("\uff42\uff4f\uff42", "bob"),
    ],
    ids=[
        "as written",
        "upper case",
        "padded, mixed case",
        "fullwidth",
        "a file name written capitalised, typed lower",
        "a file name written capitalised, typed mixed",
        "a file name written capitalised, typed fullwidth",
    ],
)
def test_every_spelling_of_a_name_signs_in_as_the_one_canonical_user(tmp_path, typed, user):
    lines = [f"alice:{bcrypt_hash(PASSWORD, rounds=4)}", f"Bob:{bcrypt_hash(PASSWORD, rounds=4)}"]
    users = source(tmp_path, lines)
    assert sign_in(users, typed, PASSWORD) == User(user, ())


def test_a_name_spelled_like_an_earlier_one_is_ignored_and_logged(tmp_path, caplog):
    first, second = "first-password", "second-password"
    lines = [f"alice:{bcrypt_hash(first, rounds=4)}", f"ALICE:{bcrypt_hash(second, rounds=4)}"]
    users = source(tmp_path, lines)
    assert sign_in(users, "alice", first) == User("alice", ())
    assert sign_in(users, "ALICE", second) is None
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "line 2: 'ALICE' is the same user as line 1" in error.getMessage()


def test_comments_blank_lines_and_a_third_field_are_read_as_apache_reads_them(tmp_path, caplog):
    stored = bcrypt_hash(PASSWORD, rounds=4)
    lines = [
        "# made by htpasswd",
        "",
        "   ",
        f"  dave:{stored}:Dave Example, room 12  ",
        "no colon on this line",
        f"\x1bevil:{stored}",
    ]
    users = source(tmp_path, lines)
    assert sign_in(users, "dave", PASSWORD) == User("dave", ())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("line 5 has no ':'" in e for e in errors), errors
    assert any("line 6: the name '\\x1bevil' is not allowed" in e for e in errors), errors
    assert sign_in(users, "\x1bevil", PASSWORD) is None


def test_every_user_gets_the_configured_roles_and_none_by_default(tmp_path):
    lines = [f"alice:{bcrypt_hash(PASSWORD, rounds=4)}"]
    assert sign_in(source(tmp_path, lines), "alice", PASSWORD) == User("alice", ())
    users = source(tmp_path, lines, htpasswd_roles=["staff", "ops", "staff"])
    assert sign_in(users, "alice", PASSWORD) == User("alice", ("staff", "ops"))


# -- the same answer after the same work -----------------------------------------------


def _ratio_of_work(users: HtpasswdUsers, attempt: tuple[str, str], baseline: tuple[str, str]):
    """Median time of a refused `attempt` over that of a refused `baseline`, interleaved."""
    times: dict[tuple[str, str], list[float]] = {attempt: [], baseline: []}
    for _ in range(9):
        for name, password in (attempt, baseline):
            started = time.perf_counter()
            assert sign_in(users, name, password) is None
            times[name, password].append(time.perf_counter() - started)
    return statistics.median(times[attempt]) / statistics.median(times[baseline])


@pytest.mark.parametrize("cost", [5, 10], ids=["htpasswd's default cost 5", "cost 10"])
def test_an_unknown_user_costs_what_a_wrong_password_does(tmp_path, cost):
    lines = [f"user{i}:{bcrypt_2y(PASSWORD, rounds=cost)}" for i in range(3)]
    users = source(tmp_path, lines)
    sign_in(users, "nobody", "warm-up")  # the dummy hash is made on first use
    ratio = _ratio_of_work(users, ("nobody", "wrong password"), ("user1", "wrong password"))
    # a fixed dummy would not do: the argon2 one the users file burns is ~100x cost 5
    assert 0.4 < ratio < 2.5, ratio


def test_a_refused_format_costs_the_work_of_a_wrong_password_too(tmp_path):
    lines = [f"user{i}:{bcrypt_2y(PASSWORD, rounds=5)}" for i in range(2)]
    users = source(tmp_path, [*lines, f"carol:{PASSWORD}"])
    sign_in(users, "nobody", "warm-up")
    ratio = _ratio_of_work(users, ("carol", PASSWORD), ("user1", "wrong password"))
    assert 0.4 < ratio < 2.5, ratio


# -- the file on disk ------------------------------------------------------------------


def test_the_file_is_read_again_when_it_changes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.users")
    path = tmp_path / "users.htpasswd"
    alice = f"alice:{bcrypt_hash('old password', rounds=4)}"
    users = source(tmp_path, [alice])
    assert sign_in(users, "alice", "old password") == User("alice", ())
    assert sign_in(users, "carol", "carol password") is None

    write_htpasswd(path, [alice, f"carol:{bcrypt_hash('carol password', rounds=4)}"])
    assert sign_in(users, "carol", "carol password") == User("carol", ())

    write_htpasswd(path, [f"alice:{bcrypt_hash('new password', rounds=4)}"])
    assert sign_in(users, "alice", "new password") == User("alice", ())
    assert sign_in(users, "alice", "old password") is None
    assert sign_in(users, "carol", "carol password") is None


def test_an_edit_in_place_that_leaves_size_and_mtime_alone_is_still_seen(tmp_path):
    # `htpasswd` rewrites the file in place; a file system with coarse timestamps can give
    # the new version the very mtime (and a bcrypt line the very size) of the old one
    path = tmp_path / "users.htpasswd"
    users = source(tmp_path, [f"alice:{bcrypt_hash('old password', rounds=4)}"])
    assert sign_in(users, "alice", "old password") == User("alice", ())
    before = path.stat()
    with path.open("r+b") as handle:
        handle.write(f"alice:{bcrypt_hash('new password', rounds=4)}\n".encode())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert sign_in(users, "alice", "new password") == User("alice", ())
    assert sign_in(users, "alice", "old password") is None


def test_a_file_that_disappears_keeps_its_last_good_copy_until_it_is_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.users")
    path = tmp_path / "users.htpasswd"
    users = source(tmp_path, [f"alice:{bcrypt_hash(PASSWORD, rounds=4)}"])
    path.unlink()
    assert sign_in(users, "alice", PASSWORD) == User("alice", ())
    assert sign_in(users, "alice", PASSWORD) == User("alice", ())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # said once, not on every sign-in
    assert "cannot be read (No such file or directory)" in errors[0]
    assert "the 1 user(s) read before stay" in errors[0]

    write_htpasswd(path, [f"bob:{bcrypt_hash(PASSWORD, rounds=4)}"])
    assert sign_in(users, "bob", PASSWORD) == User("bob", ())
    assert sign_in(users, "alice", PASSWORD) is None
    assert any("can be read again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["missing", "a directory"])
def test_a_file_that_cannot_be_read_at_start_is_a_config_error(tmp_path, kind):
    if kind == "a directory":
        (tmp_path / "users.htpasswd").mkdir()
    with pytest.raises(ConfigError) as info:
        source(tmp_path)
    reason = "No such file or directory" if kind == "missing" else "Is a directory"
    path = tmp_path / "users.htpasswd"
    assert info.value.errors == [f"auth.htpasswd_file: {str(path)!r} cannot be read ({reason})"]


def test_allowing_weak_hashes_warns_at_start(tmp_path, caplog):
    source(tmp_path, [], htpasswd_allow_weak_hashes=True)
    assert any(
        r.levelno == logging.WARNING and "auth.htpasswd_allow_weak_hashes is on" in r.getMessage()
        for r in caplog.records
    )


# -- config ----------------------------------------------------------------------------


def test_the_file_is_relative_to_the_config_and_weak_hashes_are_off_by_default(tmp_path):
    raw = {"auth": {"users": "htpasswd", "htpasswd_file": "etc/htpasswd"}, "routes": [ROUTE]}
    auth = build_config(raw, tmp_path, env={}).auth
    assert auth.htpasswd_file == tmp_path / "etc" / "htpasswd"
    assert auth.htpasswd_allow_weak_hashes is False
    assert auth.htpasswd_roles == ()


@pytest.mark.parametrize(
    "key,value,error",
    [
        ("htpasswd_file", "", "auth.htpasswd_file: '' must not be empty"),
        (
            "htpasswd_allow_weak_hashes",
            "yes",
            "auth.htpasswd_allow_weak_hashes: 'yes' must be true or false",
        ),
        (
            "htpasswd_roles",
            ["staff", "a,b"],
            "auth.htpasswd_roles: ['staff', 'a,b'] has 'a,b'; a role is 1-64 letters, digits, "
            "'.', '_', ':', '-'",
        ),
        (
            "htpasswd_roles",
            "staff",
            "auth.htpasswd_roles: 'staff' must be a list of non-empty strings",
        ),
    ],
    ids=["an empty file name", "a boolean as a word", "a role with a comma", "roles not a list"],
)
def test_gateway_check_names_the_bad_htpasswd_field(tmp_path, key, value, error):
    with pytest.raises(ConfigError) as info:
        build_config(
            {"auth": {"users": "htpasswd", key: value}, "routes": [ROUTE]}, tmp_path, env={}
        )
    assert info.value.errors == [error]


def test_gateway_run_without_the_file_exits_naming_the_field(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            listen = "127.0.0.1:{free_port()}"
            admin_listen = "127.0.0.1:{free_port()}"
            [auth]
            users = "htpasswd"
            htpasswd_file = "missing.htpasswd"
            [keys]
            dir = "keys"
            [store]
            url = "memory://"
            [[routes]]
            name = "site"
            path = "/"
            upstream = "http://127.0.0.1:9"
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    path = str(tmp_path / "missing.htpasswd")
    assert f"error: auth.htpasswd_file: {path!r} cannot be read (No such file" in run.stderr


# -- end to end: a real `gateway run` --------------------------------------------------


def _start(directory: Path, upstream: RecordingUpstream, lines: list[str]) -> Gateway:
    directory.mkdir(parents=True, exist_ok=True)
    write_htpasswd(directory / "users.htpasswd", lines)
    routes = f'\n[[routes]]\nname = "app"\npath = "/"\nupstream = "{upstream.url}"\n'
    extra = """
        [auth]
        users = "htpasswd"
        htpasswd_file = "users.htpasswd"
        htpasswd_roles = ["staff"]

        [login_limits]
        max_failures = 1000
    """
    return make_gateway(directory, routes, extra, users=None)


def _signs_in_as(gateway: Gateway, upstream: RecordingUpstream, name: str, password: str) -> str:
    """The X-User-Id the upstream receives after this sign-in, or "" when it is refused."""
    client = gateway.client()
    response = client.post("/.auth/login", json={"username": name, "password": password})
    if response.status_code == 401:
        assert response.json() == INVALID
        return ""
    assert response.status_code == 200, response.text
    upstream.clear()
    assert client.get("/whoami").status_code == 200
    recorded = upstream.last()
    assert recorded.header("X-User-Roles") == ["staff"]
    (user_id,) = recorded.header("X-User-Id")
    return user_id


def test_a_real_gateway_signs_an_htpasswd_user_in_and_the_upstream_sees_them(tmp_path, upstream):
    lines = [
        "# oauth2-proxy's file, as it was",
        f"alice:{bcrypt_2y(PASSWORD, rounds=5)}",
        f"weak:{sha1_by_definition(PASSWORD)}",
    ]
    gateway = _start(tmp_path / "gw", upstream, lines)
    try:
        assert _signs_in_as(gateway, upstream, "alice", PASSWORD) == "alice"
        assert (
            _signs_in_as(gateway, upstream, "\uff21\uff2c\uff29\uff23\uff25", PASSWORD) == "alice"
        )
        assert _signs_in_as(gateway, upstream, "alice", "wrong") == ""
        assert _signs_in_as(gateway, upstream, "nobody", "wrong") == ""
        assert _signs_in_as(gateway, upstream, "weak", PASSWORD) == ""
    finally:
        gateway.stop()
    logs = gateway.logs()
    assert "htpasswd: 2 user(s) from" in logs
    assert "login refused for 'weak'" in logs and "(format: sha1)" in logs


def _edit_with_python(path: Path, name: str, password: str) -> None:
    kept = [line for line in path.read_text().splitlines() if not line.startswith(f"{name}:")]
    write_htpasswd(path, [*kept, f"{name}:{bcrypt_2y(password, rounds=5)}"])


def _edit_with_htpasswd(path: Path, name: str, password: str) -> None:
    need("htpasswd", shutil.which("htpasswd") is not None, "apt-get install apache2-utils")
    subprocess.run(["htpasswd", "-bB", str(path), name, password], check=True, capture_output=True)


@pytest.mark.parametrize(
    "edit",
    [_edit_with_python, _edit_with_htpasswd],
    ids=["a file replaced by renaming over it", "Apache's htpasswd -b editing it in place"],
)
def test_editing_the_file_under_a_running_gateway_takes_effect(tmp_path, upstream, edit):
    path = tmp_path / "gw" / "users.htpasswd"
    gateway = _start(tmp_path / "gw", upstream, [f"alice:{bcrypt_hash('old one', rounds=5)}"])
    try:
        assert _signs_in_as(gateway, upstream, "alice", "old one") == "alice"
        assert _signs_in_as(gateway, upstream, "carol", "carol's") == ""

        edit(path, "carol", "carol's")
        assert _signs_in_as(gateway, upstream, "carol", "carol's") == "carol"

        edit(path, "alice", "new one")
        assert _signs_in_as(gateway, upstream, "alice", "new one") == "alice"
        assert _signs_in_as(gateway, upstream, "alice", "old one") == ""
    finally:
        gateway.stop()
