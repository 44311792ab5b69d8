"""Audit events: a known sequence against a real gateway and its CLI gives exactly these lines.

One gateway process with `[audit] file`, the operator's `gateway` commands on the same config,
a SIGHUP reload. The file holds one JSON object per line, in order, and never a password,
token or cookie.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway import audit
from gateway.sources.file import remove_user
from tests.conftest import USERS, make_gateway, standard_routes, write_config
from tests.test_ops import wait_for
from tests.upstream import RecordingUpstream

PEOPLE = {**USERS, "carol": ("carol-password-1", ("staff",))}
EXTRA = """
[auth]
refresh = "1s"

[login_limits]
max_failures = 2

[audit]
file = "audit/events.log"
"""


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sign_in(client: httpx.Client, user: str, password: str) -> httpx.Response:
    return client.post("/.auth/login", json={"username": user, "password": password})


@pytest.fixture()
def upstream():
    server = RecordingUpstream()
    yield server
    server.close()


def test_a_known_sequence_leaves_exactly_its_audit_events(tmp_path: Path, upstream):
    routes = standard_routes(upstream.url, upstream.url)
    gw = make_gateway(tmp_path, routes, EXTRA, users=PEOPLE)
    log_file = tmp_path / "audit" / "events.log"
    secrets: list[str] = [password for password, _ in PEOPLE.values()]
    try:
        anon = gw.client()
        assert sign_in(anon, "bob", "wrong-1").status_code == 401
        assert sign_in(anon, "Bob", "wrong-2").status_code == 401
        assert sign_in(anon, "bob", PEOPLE["bob"][0]).status_code == 429  # locked out
        alice = gw.client()
        assert sign_in(alice, "ALICE", PEOPLE["alice"][0]).status_code == 200
        first_sid = jwt_sid(alice.cookies["gw_session"])
        secrets.append(alice.cookies["gw_session"])
        assert sign_in(alice, "alice", PEOPLE["alice"][0]).status_code == 200  # again
        second_sid = jwt_sid(alice.cookies["gw_session"])
        secrets.append(alice.cookies["gw_session"])
        assert (
            alice.post("/.auth/logout", headers={"accept": "application/json"}).status_code == 204
        )
        carol = gw.client()
        assert sign_in(carol, "carol", PEOPLE["carol"][0]).status_code == 200
        carol_sid = jwt_sid(carol.cookies["gw_session"])
        secrets.append(carol.cookies["gw_session"])
        remove_user(gw.directory / "users.toml", "carol")  # by hand: the refresh finds it
        time.sleep(1.2)
        assert carol.get("/app/x", headers={"accept": "application/json"}).status_code == 401

        cli(gw.config, "sessions", "revoke", "alice")
        cli(gw.config, "users", "disable", "bob")
        cli(gw.config, "users", "enable", "bob")
        kid2 = cli(gw.config, "keys", "rotate").stdout.split()[2].rstrip(":")
        cli(gw.config, "keys", "rotate")
        cli(gw.config, "keys", "retire", kid2)

        text = gw.config.read_text()
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config.reloaded" in log_file.read_text(), what="the reload event")
        write_config(gw.directory, gw.port, 'routes = "broken"', EXTRA)
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config.refused" in log_file.read_text(), what="the refusal event")
        gw.config.write_text(text)
    finally:
        gw.stop()

    seen = events(log_file)
    lines = [(e["event"], e.get("user"), e.get("typed"), e.get("reason")) for e in seen]
    assert lines == [
        ("signin.failed", "bob", "bob", "invalid_credentials"),
        ("signin.failed", "bob", "Bob", "invalid_credentials"),
        ("signin.locked", "bob", "bob", None),
        ("signin.succeeded", "alice", "ALICE", None),
        ("session.revoked", "alice", None, "signed_in_again"),
        ("signin.succeeded", "alice", "alice", None),
        ("signout", "alice", None, None),
        ("signin.succeeded", "carol", "carol", None),
        ("session.ended", "carol", None, "removed or disabled at the source"),
        ("session.revoked", "alice", None, None),
        ("user.disabled", "bob", None, None),
        ("session.revoked", "bob", None, "user changed"),
        ("user.enabled", "bob", None, None),
        ("key.rotated", None, None, None),
        ("key.rotated", None, None, None),
        ("key.retired", None, None, None),
        ("config.reloaded", None, None, None),
        ("config.refused", None, None, seen[-1].get("reason")),
    ]
    by_event = {e["event"]: e for e in seen}
    assert seen[3]["session"] == first_sid and seen[4]["session"] == first_sid
    assert seen[5]["session"] == second_sid and seen[6]["session"] == second_sid
    assert seen[8]["session"] == carol_sid
    assert by_event["signin.succeeded"]["source"] == "file"
    assert by_event["signin.succeeded"]["amr"] == ["pwd"]
    assert by_event["signin.succeeded"]["client"] == "127.0.0.1"
    assert by_event["signin.locked"]["retry_after"] > 0
    assert by_event["key.retired"]["kid"] == kid2
    assert "routes" in seen[-1]["reason"]
    assert all(set(e) <= {"time", "event", *audit.EVENTS[e["event"]]} for e in seen)
    raw = log_file.read_text()
    assert [s for s in secrets if s in raw] == []
    assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600


def jwt_sid(token: str) -> str:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})["sid"]


def test_an_event_with_a_field_it_does_not_list_is_refused():
    # a password can only reach the file through a field someone added on purpose
    with pytest.raises(ValueError):
        audit.event("signin.failed", password="hunter2")
