"""The OpenLDAP fixture itself (tests/ldap_server.py): data, ACLs, TLS, stop and start.

Checked with ldap3 as a client, so the gateway's LDAP tests can rely on what the directory
says: memberOf from the memberof overlay (nested groups too), ppolicy refusing a locked
account, the service account reading everything but passwords and writing nothing.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPException

from tests.ldap_server import (
    ADMINS_DN,
    ALICE_DN,
    BOB_DN,
    CAROL_DN,
    DAVE_DN,
    DEVELOPERS_DN,
    ERIN_DN,
    GROUPS_DN,
    OPS_DN,
    PASSWORDS,
    PAT_DN,
    PAT_DN_FROM_SLAPD,
    PEOPLE_ADMIN_DN,
    PEOPLE_DN,
    SERVICE_DN,
    SERVICE_PASSWORD,
    STAFF_DN,
    Slapd,
    available,
    slapd,  # noqa: F401 - a fixture
    start_slapd,
)
from tests.services import need


def server(url: str, ca_file: Path | None = None) -> ldap3.Server:
    tls = None
    if ca_file is not None:
        tls = ldap3.Tls(ca_certs_file=str(ca_file), validate=ssl.CERT_REQUIRED)
    return ldap3.Server(url, tls=tls, connect_timeout=3)


def bind(
    url: str, dn: str, password: str, ca_file: Path | None = None, start_tls: bool = False
) -> ldap3.Connection:
    """A connection bound as `dn`; raises LDAPBindError (or a TLS error) if it is refused."""
    conn = ldap3.Connection(server(url, ca_file), dn, password, receive_timeout=5)
    conn.open()
    if start_tls:
        conn.start_tls()
    if not conn.bind():
        conn.unbind()
        raise ldap3.core.exceptions.LDAPBindError(conn.result)
    return conn


def service(directory: Slapd) -> ldap3.Connection:
    return bind(directory.url, SERVICE_DN, SERVICE_PASSWORD)


def entry(conn: ldap3.Connection, dn: str, *attributes: str) -> dict:
    assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes)), conn.result
    return conn.response[0]["attributes"]


def lower(values: list[str]) -> set[str]:
    return {value.lower() for value in values}


def test_memberof_for_users_and_nested_groups(slapd):  # noqa: F811
    conn = service(slapd)
    try:
        assert lower(entry(conn, ALICE_DN, "memberOf")["memberOf"]) == lower([STAFF_DN, OPS_DN])
        assert lower(entry(conn, OPS_DN, "memberOf")["memberOf"]) == lower([ADMINS_DN])
        assert lower(entry(conn, PEOPLE_ADMIN_DN, "memberOf")["memberOf"]) == lower([ADMINS_DN])
        assert lower(entry(conn, PAT_DN, "memberOf")["memberOf"]) == lower([STAFF_DN])
        assert entry(conn, CAROL_DN, "memberOf")["memberOf"] == []
        developers = entry(conn, DEVELOPERS_DN, "gidNumber", "memberUid")
        assert developers == {"gidNumber": 5000, "memberUid": ["bob"]}
        alice = entry(conn, ALICE_DN, "cn", "uid")
        assert alice == {"cn": ["Alice Liddell"], "uid": ["alice"]}
    finally:
        conn.unbind()


def test_the_service_account_finds_the_dn_that_needs_escaping(slapd):  # noqa: F811
    conn = service(slapd)
    try:
        cn = ldap3.utils.conv.escape_filter_chars("O'Brien, Pat (ops)*")
        assert conn.search(PEOPLE_DN, f"(cn={cn})", attributes=["uid"])
        found = [(e["dn"], e["attributes"]["uid"]) for e in conn.response]
        assert found == [(PAT_DN_FROM_SLAPD, ["pat"])]
        assert conn.search(GROUPS_DN, f"(member={ldap3.utils.conv.escape_filter_chars(PAT_DN)})")
        assert [e["dn"] for e in conn.response] == [STAFF_DN]
    finally:
        conn.unbind()


def test_lock_and_ad_attributes_are_readable(slapd):  # noqa: F811
    conn = service(slapd)
    try:
        carol = entry(conn, CAROL_DN, "pwdAccountLockedTime")
        assert carol["pwdAccountLockedTime"]  # ldap3 parses it as a (year 0) time
        assert entry(conn, DAVE_DN, "userAccountControl") == {"userAccountControl": 514}
        assert entry(conn, ERIN_DN, "userAccountControl") == {"userAccountControl": 512}
        # AD's bitwise filter (LDAP_MATCHING_RULE_BIT_AND) works on the test attribute
        assert conn.search(PEOPLE_DN, "(userAccountControl:1.2.840.113556.1.4.803:=2)")
        assert [e["dn"] for e in conn.response] == [DAVE_DN]
    finally:
        conn.unbind()


def test_the_service_account_cannot_read_passwords_or_write(slapd):  # noqa: F811
    conn = service(slapd)
    try:
        assert entry(conn, ALICE_DN, "userPassword") == {"userPassword": []}
        # not even a compare, or a filter on the password
        assert not conn.compare(ALICE_DN, "userPassword", PASSWORDS["alice"])
        assert conn.result["description"] == "insufficientAccessRights"
        assert not conn.search(PEOPLE_DN, "(userPassword=*)")  # ldap3: False for no entries
        assert (conn.result["description"], conn.response) == ("success", [])
        assert not conn.modify(ALICE_DN, {"sn": [(ldap3.MODIFY_REPLACE, ["X"])]})
        assert conn.result["description"] == "insufficientAccessRights"
        assert not conn.add(f"uid=eve,{PEOPLE_DN}", "inetOrgPerson", {"sn": "e", "cn": "e"})
        assert conn.result["description"] == "insufficientAccessRights"
        assert not conn.delete(BOB_DN)
        assert conn.result["description"] == "insufficientAccessRights"
        assert not conn.modify(STAFF_DN, {"member": [(ldap3.MODIFY_ADD, [CAROL_DN])]})
        assert conn.result["description"] == "insufficientAccessRights"
    finally:
        conn.unbind()


def test_anonymous_may_only_bind(slapd):  # noqa: F811
    conn = ldap3.Connection(server(slapd.url), auto_bind=True)
    try:
        # not even that the base exists
        assert not conn.search("dc=corp,dc=test", "(objectClass=*)")
        assert (conn.result["description"], conn.response) == ("noSuchObject", [])
        assert not conn.compare(ALICE_DN, "uid", "alice")
    finally:
        conn.unbind()


def test_alice_binds_over_ldap_starttls_and_ldaps(slapd):  # noqa: F811
    password = PASSWORDS["alice"]
    for conn in (
        bind(slapd.url, ALICE_DN, password),
        bind(slapd.url, ALICE_DN, password, slapd.ca_file, start_tls=True),
        bind(slapd.ldaps_url, ALICE_DN, password, slapd.ca_file),
    ):
        assert conn.extend.standard.who_am_i() == f"dn:{ALICE_DN}"
        conn.unbind()
    with pytest.raises(LDAPException):
        bind(slapd.url, ALICE_DN, "wrong")


def test_ldaps_and_starttls_refuse_another_ca(slapd):  # noqa: F811
    with pytest.raises(LDAPException):
        bind(slapd.ldaps_url, ALICE_DN, PASSWORDS["alice"], slapd.wrong_ca_file)
    with pytest.raises(LDAPException):
        bind(slapd.url, ALICE_DN, PASSWORDS["alice"], slapd.wrong_ca_file, start_tls=True)


def test_locked_carol_cannot_bind_and_ad_disabled_dave_can(slapd):  # noqa: F811
    # ppolicy refuses carol; userAccountControl means nothing to slapd (the gateway checks it)
    with pytest.raises(LDAPException):
        bind(slapd.url, CAROL_DN, PASSWORDS["carol"])
    bind(slapd.url, DAVE_DN, PASSWORDS["dave"]).unbind()
    bind(slapd.url, PAT_DN, PASSWORDS["pat"]).unbind()


def test_changes_through_add_modify_delete(slapd):  # noqa: F811
    dn = f"uid=temp,{PEOPLE_DN}"
    slapd.add(
        f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: temp\ncn: temp\nsn: temp\n"
        "userPassword: temp-pw-1\n"
    )
    slapd.modify(f"dn: {OPS_DN}\nchangetype: modify\nadd: member\nmember: {dn}\n")
    conn = service(slapd)
    try:
        assert lower(entry(conn, dn, "memberOf")["memberOf"]) == lower([OPS_DN])
        bind(slapd.url, dn, "temp-pw-1").unbind()
        slapd.modify(
            f"dn: {dn}\nchangetype: modify\nadd: pwdAccountLockedTime\n"
            "pwdAccountLockedTime: 000001010000Z\n"
        )
        with pytest.raises(LDAPException):
            bind(slapd.url, dn, "temp-pw-1")
        slapd.delete(dn)
        # the memberof overlay's refint drops the deleted member from its groups
        assert lower(entry(conn, OPS_DN, "member")["member"]) == lower([ALICE_DN])
    finally:
        conn.unbind()
    with pytest.raises(RuntimeError, match="No such object"):
        slapd.delete(dn)
    assert f'DEL dn="{dn}"' in slapd.log_text()


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_stop_refuses_and_start_brings_the_same_data_back(tmp_path):
    need("slapd", available(), "Debian's slapd and ldap-utils are needed")
    directory = start_slapd(tmp_path / "slapd")
    try:
        directory.modify(f"dn: {BOB_DN}\nchangetype: modify\nreplace: sn\nsn: Changed\n")
        url, ldaps_url = directory.url, directory.ldaps_url
        directory.stop()
        assert refuses(directory.port) and refuses(directory.ldaps_port)
        with pytest.raises(LDAPException):
            bind(url, ALICE_DN, PASSWORDS["alice"])
        directory.start()
        assert (directory.url, directory.ldaps_url) == (url, ldaps_url)
        conn = bind(ldaps_url, SERVICE_DN, SERVICE_PASSWORD, directory.ca_file)
        try:
            assert entry(conn, BOB_DN, "sn") == {"sn": ["Changed"]}
            assert lower(entry(conn, ALICE_DN, "memberOf")["memberOf"]) == lower([STAFF_DN, OPS_DN])
        finally:
            conn.unbind()
        assert directory.log_text().count("slapd starting") == 2
    finally:
        directory.close()
    assert refuses(directory.port)
