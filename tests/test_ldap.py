"""`users = "ldap"` against a real OpenLDAP server (tests/ldap_server.py), through real gateways.

Each gateway runs as `gateway run` would, in front of a recording upstream; the directory is
Debian's slapd with the people, groups, nested groups, locked and disabled accounts and the DN
that needs escaping described in tests/ldap_server.py. Changes at the source are made with
ldapmodify as the directory's administrator, as an operator would.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from gateway.config import ConfigError, load_config
from gateway.core.authn import SOURCE_RETRY_SECONDS
from tests import ldap_server as ls
from tests.conftest import Gateway, make_gateway, write_config
from tests.ldap_server import Slapd, slapd, start_slapd  # noqa: F401 - slapd is a fixture
from tests.upstream import RecordingUpstream

PEOPLE = ls.PEOPLE_DN
GROUPS = ls.GROUPS_DN
PASSWORDS = ls.PASSWORDS
INVALID = {"error": "invalid_credentials", "detail": "Wrong username or password."}
ROUTES = """
[[routes]]
name = "app"
path = "/app"
upstream = "{upstream}"
auth = "required"
"""


def ldap_extra(directory: Slapd, url: str = "", **keys: object) -> str:
    """The [auth] and [auth.ldap] tables for a gateway in front of `directory`."""
    table = {
        "url": url or directory.url,
        "bind_dn": ls.SERVICE_DN,
        "bind_password": ls.SERVICE_PASSWORD,
        "base_dn": PEOPLE,
        "group_base_dn": GROUPS,
        "timeout": "3s",
    }
    table.update(keys)
    refresh = table.pop("refresh", "1m")
    revocation = table.pop("revocation", "lazy")
    max_failures = table.pop("max_failures", 1000)
    lines = []
    for key, value in table.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {_toml(str(value))}")
    return (
        f'[auth]\nusers = "ldap"\nrefresh = "{refresh}"\n\n'
        f'[session]\nrevocation = "{revocation}"\n\n'
        f"[login_limits]\nmax_failures = {max_failures}\n\n[auth.ldap]\n" + "\n".join(lines) + "\n"
    )


def _toml(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def start(
    tmp: Path, directory: Slapd, upstream: RecordingUpstream, url: str = "", **keys: object
) -> Gateway:
    return make_gateway(
        tmp, ROUTES.format(upstream=upstream.url), ldap_extra(directory, url, **keys), users=None
    )


def login(gw: Gateway, username: str, password: str) -> tuple[httpx.Client, httpx.Response]:
    client = gw.client(timeout=30)
    response = client.post("/.auth/login", json={"username": username, "password": password})
    return client, response


def roles_seen(gw: Gateway, client: httpx.Client, upstream: RecordingUpstream) -> set[str]:
    upstream.clear()
    page = client.get("/app/page")
    assert page.status_code == 200, page.text
    return set(filter(None, upstream.last().header("x-user-roles")[0].split(",")))


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(slapd: Slapd, upstream, tmp_path_factory) -> Iterator[Gateway]:  # noqa: F811
    """groupOfNames by {dn}: the DESIGN.md defaults."""
    gateway = start(tmp_path_factory.mktemp("ldap-gw"), slapd, upstream)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def nested_gw(slapd: Slapd, upstream, tmp_path_factory) -> Iterator[Gateway]:  # noqa: F811
    """groupOfNames and posixGroup, nested groups followed."""
    gateway = start(
        tmp_path_factory.mktemp("ldap-nested"),
        slapd,
        upstream,
        group_filter="(|(&(objectClass=groupOfNames)(member={dn}))"
        "(&(objectClass=posixGroup)(memberUid={username})))",
        nested_groups=True,
    )
    yield gateway
    gateway.stop()


# -- signing in -------------------------------------------------------------------------


def test_a_directory_user_signs_in_and_the_upstream_sees_the_id_and_group_roles(gw, upstream):
    client, response = login(gw, "alice", PASSWORDS["alice"])
    with closing(client):
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == "alice"
        assert set(response.json()["roles"]) == {"staff", "ops"}
        upstream.clear()
        assert client.get("/app/inbox").status_code == 200
        seen = upstream.last()
        assert seen.header("x-user-id") == ["alice"]
        assert set(seen.header("x-user-roles")[0].split(",")) == {"staff", "ops"}


@pytest.mark.parametrize(
    "typed",
    ["ALICE", " Alice ", "\uff41\uff4c\uff49\uff43\uff45", "\uff21\uff2c\uff29\uff23\uff25"],
    ids=["upper case", "blanks and mixed case", "fullwidth", "FULLWIDTH"],
)
def test_every_spelling_of_a_name_is_the_one_canonical_user(gw, upstream, typed):
    client, response = login(gw, typed, PASSWORDS["alice"])
    with closing(client):
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == "alice"
        upstream.clear()
        client.get("/app/x")
        assert upstream.last().header("x-user-id") == ["alice"]


@pytest.mark.parametrize(
    "username,password",
    [
        ("alice", "wrong"),
        ("nobody", PASSWORDS["alice"]),
        ("carol", PASSWORDS["carol"]),
        ("dave", PASSWORDS["dave"]),
        ("alice", ""),
        ("", ""),
    ],
    ids=[
        "a wrong password",
        "an unknown user",
        "pwdAccountLockedTime set (OpenLDAP)",
        "userAccountControl ACCOUNTDISABLE (AD)",
        "an empty password (an unauthenticated bind)",
        "nothing at all",
    ],
)
def test_refused_sign_ins_all_look_alike(gw, username, password):
    client, response = login(gw, username, password)
    with closing(client):
        assert response.status_code in (400, 401), response.text
        if response.status_code == 401:
            assert response.json() == INVALID
        assert client.cookies.get("gw_session") is None
        assert client.get("/app/x").status_code in (302, 401)


def test_an_enabled_active_directory_account_signs_in(gw):
    client, response = login(gw, "erin", PASSWORDS["erin"])
    client.close()
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["staff"]


def test_a_dn_that_needs_escaping_finds_its_groups(gw):
    # cn=O'Brien\, Pat (ops)*: the comma, parentheses and asterisk are escaped in {dn}
    client, response = login(gw, "pat", PASSWORDS["pat"])
    client.close()
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == "pat"
    assert response.json()["roles"] == ["staff"]


@pytest.mark.parametrize(
    "typed",
    [
        "*",
        "a*",
        "*)(uid=*",
        "alice)(uid=*",
        "admin)(|(uid=*",
        "*)(|(objectClass=*",
        "alice\\2a",
        "al\\69ce",
        "alice)(&",
        "x)(uid=alice",
    ],
)
@pytest.mark.parametrize("whose", ["alice", "admin"])
def test_an_injected_filter_never_matches_another_entry(gw, typed, whose):
    client, response = login(gw, typed, PASSWORDS[whose])
    client.close()
    assert response.status_code == 401, response.text
    assert response.json() == INVALID


def test_nested_and_posix_groups_give_their_roles(nested_gw):
    _, alice = login(nested_gw, "alice", PASSWORDS["alice"])
    # ops is a member of admins: alice is an admin through it
    assert set(alice.json()["roles"]) == {"staff", "ops", "admins"}
    _, bob = login(nested_gw, "bob", PASSWORDS["bob"])
    assert set(bob.json()["roles"]) == {"staff", "developers"}


def test_without_nested_groups_only_direct_groups_count(gw):
    _, alice = login(gw, "alice", PASSWORDS["alice"])
    assert "admins" not in alice.json()["roles"]
    _, bob = login(gw, "bob", PASSWORDS["bob"])
    assert set(bob.json()["roles"]) == {"staff"}  # the posixGroup is not in this filter


def test_groups_from_member_of_as_active_directory_lists_them(
    slapd,  # noqa: F811
    upstream,
    tmp_path,
):
    gw = start(tmp_path, slapd, upstream, group_filter="", member_of_attribute="memberOf")
    try:
        _, alice = login(gw, "alice", PASSWORDS["alice"])
        assert set(alice.json()["roles"]) == {"staff", "ops"}
        _, pat = login(gw, "pat", PASSWORDS["pat"])
        assert pat.json()["roles"] == ["staff"]
    finally:
        gw.stop()
    nested = start(
        tmp_path / "nested",
        slapd,
        upstream,
        group_filter="",
        member_of_attribute="memberOf",
        nested_groups=True,
    )
    try:
        _, alice = login(nested, "alice", PASSWORDS["alice"])
        assert set(alice.json()["roles"]) == {"staff", "ops", "admins"}
    finally:
        nested.stop()


# -- changes at the source ------------------------------------------------------------------


def _add_person(directory: Slapd, uid: str, password: str, groups: tuple[str, ...] = ()) -> str:
    dn = f"uid={uid},{PEOPLE}"
    directory.add(
        f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
        f"userPassword: {password}\n"
    )
    for group in groups:
        _member(directory, group, dn, "add")
    return dn


def _member(directory: Slapd, group: str, dn: str, change: str) -> None:
    directory.modify(
        f"dn: cn={group},{GROUPS}\nchangetype: modify\n{change}: member\nmember: {dn}\n"
    )


def _after_refresh() -> None:
    time.sleep(1.2)  # the gateways below use refresh = "1s"


@pytest.mark.parametrize("revocation", ["lazy", "strict"])
def test_changes_in_the_directory_reach_the_next_request_after_refresh(
    slapd,  # noqa: F811
    upstream,
    tmp_path,
    revocation,
):
    uid = f"temp-{revocation}"
    dn = _add_person(slapd, uid, "temp-pw-1", ("staff",))
    gw = start(tmp_path, slapd, upstream, refresh="1s", revocation=revocation)
    try:
        client, response = login(gw, uid, "temp-pw-1")
        assert response.status_code == 200, response.text
        assert roles_seen(gw, client, upstream) == {"staff"}
        # a group added: the next request after refresh carries it
        _member(slapd, "ops", dn, "add")
        _after_refresh()
        assert roles_seen(gw, client, upstream) == {"staff", "ops"}
        # locked in the directory: refused, cookie cleared
        slapd.modify(
            f"dn: {dn}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
            "pwdAccountLockedTime: 000001010000Z\n"
        )
        _after_refresh()
        refused = client.get("/app/page", headers={"accept": "application/json"})
        assert refused.status_code == 401
        assert client.cookies.get("gw_session") is None
        # unlocked, signed in again, then deleted: refused too
        slapd.modify(f"dn: {dn}\nchangetype: modify\ndelete: pwdAccountLockedTime\n")
        client, response = login(gw, uid, "temp-pw-1")
        assert response.status_code == 200, response.text
        _member(slapd, "ops", dn, "delete")
        _member(slapd, "staff", dn, "delete")
        slapd.delete(dn)
        _after_refresh()
        assert client.get("/app/page", headers={"accept": "application/json"}).status_code == 401
    finally:
        gw.stop()


# -- attacks through the directory's data and through odd passwords ------------------------


def test_a_second_value_of_the_user_attribute_signs_in_no_one(
    slapd,  # noqa: F811
    upstream,
    tmp_path,
):
    # erin may write her own uid somewhere ("by self write"): she puts `uid: admin` first
    gw = start(tmp_path, slapd, upstream, refresh="1s")
    before, response = login(gw, "erin", PASSWORDS["erin"])
    assert response.status_code == 200, response.text
    slapd.modify(f"dn: {ls.ERIN_DN}\nchangetype: modify\nadd: uid\nuid: admin\n")
    # her own value deleted and added again: slapd now lists `admin` before `erin`
    slapd.modify(
        f"dn: {ls.ERIN_DN}\nchangetype: modify\ndelete: uid\nuid: erin\n-\nadd: uid\nuid: erin\n"
    )
    try:
        client, response = login(gw, "erin", PASSWORDS["erin"])
        with closing(client):
            assert response.status_code == 401, response.text
            assert response.json() == INVALID
            assert client.cookies.get("gw_session") is None
        # "admin" now finds two entries (admin's and erin's): refused as before
        _, as_admin = login(gw, "admin", PASSWORDS["erin"])
        assert as_admin.status_code == 401, as_admin.text
        # erin signed in before the change: the next refresh ends her session
        _after_refresh()
        upstream.clear()
        refused = before.get("/app/page", headers={"accept": "application/json"})
        assert refused.status_code == 401, refused.text
        assert all(r.header("x-user-id") != ["admin"] for r in upstream.requests)
        assert f"{ls.ERIN_DN!r} has 2 values of uid: refused" in gw.logs()
    finally:
        before.close()
        slapd.modify(f"dn: {ls.ERIN_DN}\nchangetype: modify\ndelete: uid\nuid: admin\n")
        gw.stop()


def test_member_of_counts_only_groups_under_group_base_dn(
    slapd,  # noqa: F811
    upstream,
    tmp_path,
):
    # a group named admins outside ou=groups (where users or their managers may create
    # entries), with bob and the group staff as members; and one inside, with bob
    outside = f"cn=admins,{PEOPLE}"
    inside = f"cn=auditors,{GROUPS}"
    slapd.add(_group_ldif(outside, "admins", ls.BOB_DN, ls.STAFF_DN))
    slapd.add(_group_ldif(inside, "auditors", ls.BOB_DN))
    gateways = []
    try:
        for name, keys in (
            ("direct", {}),
            ("nested", {"nested_groups": True}),
            # a group_base_dn spelt in other case and spacing is the same DN
            ("spelt", {"group_base_dn": "OU=Groups, DC=Corp,DC=Test"}),
        ):
            gw = start(
                tmp_path / name,
                slapd,
                upstream,
                group_filter="",
                member_of_attribute="memberOf",
                **keys,
            )
            gateways.append(gw)
            _, bob = login(gw, "bob", PASSWORDS["bob"])
            assert bob.status_code == 200, (name, bob.text)
            assert set(bob.json()["roles"]) == {"staff", "auditors"}, (name, bob.text)
            _, alice = login(gw, "alice", PASSWORDS["alice"])
            expected = {"staff", "ops", "admins"} if name == "nested" else {"staff", "ops"}
            assert set(alice.json()["roles"]) == expected, (name, alice.text)
            assert f"group {outside!r} is not under group_base_dn" in gw.logs()
        # group_base_dn unset (base_dn, ou=people, fills it in): every listed group counts,
        # as before, or groups under ou=groups would give none
        gw = start(
            tmp_path / "unset",
            slapd,
            upstream,
            group_filter="",
            member_of_attribute="memberOf",
            group_base_dn="",
        )
        gateways.append(gw)
        _, bob = login(gw, "bob", PASSWORDS["bob"])
        assert {"staff", "auditors"} <= set(bob.json()["roles"]), bob.text
    finally:
        for gw in gateways:
            gw.stop()
        slapd.delete(inside)
        slapd.delete(outside)


def _group_ldif(dn: str, cn: str, *members: str) -> str:
    return f"dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n" + "".join(
        f"member: {member}\n" for member in members
    )


def test_a_password_ldap3_cannot_send_is_a_wrong_password(
    slapd,  # noqa: F811
    upstream,
    tmp_path,
):
    # ldap3's SASLprep refuses a control character, a private-use one, and one mapped to
    # nothing; for an existing user that used to be a 503 (and an unknown user's a 401),
    # uncounted, with every pooled service connection dropped
    gw = start(tmp_path, slapd, upstream, max_failures=3)
    try:
        _, bob = login(gw, "bob", PASSWORDS["bob"])
        assert bob.status_code == 200, bob.text
        service = _connections(slapd.log_text(), ls.SERVICE_DN)
        for password in ("\x01", "\ue000", "\u00ad"):
            _, known = login(gw, "alice", password)
            _, unknown = login(gw, "nobody", password)
            assert (known.status_code, known.json()) == (401, INVALID), repr(password)
            assert (unknown.status_code, unknown.json()) == (401, INVALID), repr(password)
        # three failures for alice: max_failures, so even her right password waits
        _, locked = login(gw, "alice", PASSWORDS["alice"])
        assert locked.status_code == 429, locked.text
        # others are served, on the same pooled service connection
        _, bob = login(gw, "bob", PASSWORDS["bob"])
        assert bob.status_code == 200, bob.text
        assert _connections(slapd.log_text(), ls.SERVICE_DN) == service
        assert "directory unavailable" not in gw.logs()
    finally:
        gw.stop()


# -- the directory down, TLS, timeouts, the pool ----------------------------------------------


@pytest.mark.parametrize("revocation", ["lazy", "strict"])
def test_a_directory_that_stops_gives_503_and_sign_in_recovers_when_it_returns(
    upstream, tmp_path, revocation
):
    directory = start_slapd(tmp_path / "slapd")
    gw = start(tmp_path / "gw", directory, upstream, refresh="1s", revocation=revocation)
    try:
        client, response = login(gw, "alice", PASSWORDS["alice"])
        assert response.status_code == 200, response.text
        directory.stop()
        _, down = login(gw, "bob", PASSWORDS["bob"])
        assert down.status_code == 503, down.text
        _after_refresh()
        page = client.get("/app/page", headers={"accept": "application/json"})
        # lazy keeps serving a valid token while the source cannot answer; strict refuses
        assert page.status_code == (200 if revocation == "lazy" else 503), page.text
        directory.start()
        _, back = login(gw, "bob", PASSWORDS["bob"])
        assert back.status_code == 200, back.text
        # strict: the refresh waits out the source's retry pause (SOURCE_RETRY_SECONDS) first
        deadline = time.monotonic() + SOURCE_RETRY_SECONDS + 3
        while (status := client.get("/app/page").status_code) != 200:
            assert revocation == "strict" and time.monotonic() < deadline, status
            time.sleep(0.25)
        assert "bob-pw-1" not in gw.logs() and "gateway-secret" not in gw.logs()
    finally:
        gw.stop()
        directory.close()


def test_ldaps_and_starttls_with_the_ca_file(slapd, upstream, tmp_path):  # noqa: F811
    for name, url, keys in (
        ("ldaps", slapd.ldaps_url, {}),
        ("starttls", slapd.url, {"start_tls": True}),
    ):
        gw = start(tmp_path / name, slapd, upstream, url=url, ca_file=str(slapd.ca_file), **keys)
        try:
            _, response = login(gw, "alice", PASSWORDS["alice"])
            assert response.status_code == 200, (name, response.text)
        finally:
            gw.stop()


def test_a_directory_certificate_from_another_ca_is_refused(slapd, upstream, tmp_path):  # noqa: F811
    for name, url, keys in (
        ("ldaps", slapd.ldaps_url, {}),
        ("starttls", slapd.url, {"start_tls": True}),
    ):
        gw = start(
            tmp_path / name, slapd, upstream, url=url, ca_file=str(slapd.wrong_ca_file), **keys
        )
        try:
            _, response = login(gw, "alice", PASSWORDS["alice"])
            assert response.status_code == 503, (name, response.text)
            assert "directory unavailable" in gw.logs()
        finally:
            gw.stop()


def test_a_directory_that_never_answers_times_out_with_503(upstream, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(silent.accept()[0])  # accepted, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = silent.getsockname()[1]

    class Silent:
        url = f"ldap://127.0.0.1:{port}"

    gw = start(tmp_path, Silent(), upstream, timeout="1s")  # type: ignore[arg-type]
    try:
        _, response = login(gw, "alice", PASSWORDS["alice"])
        assert response.status_code == 503, response.text
    finally:
        gw.stop()
        silent.close()
        for conn in held:
            conn.close()


def _connections(log: str, bind_dn: str) -> set[str]:
    """The slapd connection numbers that bound as `bind_dn`."""
    pattern = re.compile(r'conn=(\d+) op=\d+ BIND dn="([^"]*)"')
    return {conn for conn, dn in pattern.findall(log) if dn.lower() == bind_dn.lower()}


def test_searches_share_a_small_pool_and_nothing_is_ever_written(upstream, tmp_path):
    directory = start_slapd(tmp_path / "slapd")
    gw = start(tmp_path / "gw", directory, upstream, pool_size=2)
    try:
        results: list[int] = []

        def one(user: str) -> None:
            client, response = login(gw, user, PASSWORDS[user])
            client.close()
            results.append(response.status_code)

        threads = [
            threading.Thread(target=one, args=(user,))
            for user in ["alice", "bob", "erin", "pat", "admin"] * 4
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [200] * len(threads)
        log = directory.log_text()
        service = _connections(log, ls.SERVICE_DN)
        assert 1 <= len(service) <= 2, service
        admin = _connections(log, ls.ADMIN_DN)
        writes = re.findall(r"conn=(\d+) op=\d+ (ADD|MOD|MODRDN|DEL|PASSMOD|EXT) ", log)
        assert [w for w in writes if w[0] not in admin] == []
    finally:
        gw.stop()
        directory.close()


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys,error",
    [
        ({"bind_dn": ""}, "auth.ldap.bind_dn: missing"),
        ({"bind_password": ""}, "auth.ldap.bind_password: missing"),
        ({"base_dn": ""}, "auth.ldap.base_dn: missing"),
        ({"url": "http://127.0.0.1:389"}, "is not an ldap:// or ldaps:// URL"),
        ({"url": "ldap://127.0.0.1:389/dc=corp"}, "must be only ldap[s]://host[:port]"),
        ({"user_filter": "(uid=alice)"}, "does not use {username}"),
        ({"user_filter": "(uid={username}"}, "is not a valid LDAP filter"),
        ({"user_filter": "(uid={user})"}, "placeholder other than"),
        ({"group_filter": "(objectClass=groupOfNames)"}, "uses neither {dn} nor {username}"),
        ({"start_tls": True, "url": "ldaps://127.0.0.1:636"}, "not with an ldaps:// url"),
        ({"ca_file": "missing-ca.pem"}, "is not a file"),
        ({"timeout": "0s"}, "auth.ldap.timeout"),
        ({"pool_size": 0}, "auth.ldap.pool_size"),
        ({"role_attribute": "c n"}, "is not an LDAP attribute name"),
        (
            {"nested_groups": True, "group_filter": "(memberUid={username})"},
            "auth.ldap.nested_groups: needs",
        ),
        ({"surprise": 1}, "auth.ldap.surprise: unknown key"),
    ],
)
def test_bad_ldap_config_is_refused_with_the_field_named(tmp_path, keys, error):
    class Directory:
        url = "ldap://127.0.0.1:389"

    path = write_config(tmp_path, 8000, ROUTES.format(upstream="http://127.0.0.1:9"), "")
    extra = ldap_extra(Directory(), **keys)  # type: ignore[arg-type]
    path.write_text(path.read_text().replace('[auth]\nusers_file = "users.toml"', "") + extra)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert error in str(refused.value), str(refused.value)


def test_good_ldap_config_loads_with_group_base_defaulting_to_base(tmp_path):
    class Directory:
        url = "ldap://127.0.0.1:389"

    path = write_config(tmp_path, 8000, ROUTES.format(upstream="http://127.0.0.1:9"), "")
    extra = ldap_extra(Directory(), group_base_dn="")  # type: ignore[arg-type]
    path.write_text(path.read_text().replace('[auth]\nusers_file = "users.toml"', "") + extra)
    config = load_config(path)
    assert config.auth.users == "ldap"
    assert config.auth.ldap.group_base_dn == PEOPLE
    assert config.auth.ldap.timeout == 3.0
