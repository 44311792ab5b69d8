"""A real OpenLDAP directory on 127.0.0.1 for the tests of `users = "ldap"`.

`Slapd` runs Debian's slapd (2.5) in the foreground as a subprocess, with a cn=config of its
own (built by `slapadd -n0` from a generated LDIF) and an mdb database, both in a temporary
directory, listening on `ldap://127.0.0.1:P` (StartTLS offered) and `ldaps://127.0.0.1:Q` with
a certificate for IP 127.0.0.1 and DNS localhost signed by a CA made here (`ca_file`);
`wrong_ca_file` is an unrelated CA, for "certificate from another CA" tests.

Loaded: back_mdb; the memberof overlay (users carry `memberOf` for their groupOfNames groups,
and so does a group that is a member of another group); ppolicy with a default policy, so the
operational attribute `pwdAccountLockedTime` exists and a bind by a locked user fails at
slapd. Schemas: core, cosine, nis (posixGroup), inetorgperson, and a tiny TEST schema,
`gatewayTestAdUser`, that exists only to test the Active Directory bits: it defines AD's
`userAccountControl` (AD's own OID 1.2.840.113556.1.4.8, INTEGER, single-valued) and an
auxiliary objectClass under the unassigned test arc 1.3.6.1.4.1.99999 that MAY carry it. It
is not any real directory's schema.

Access: the rootdn (ADMIN_DN / ADMIN_PASSWORD) makes the fixture's changes (`add`, `modify`,
`delete` run ldapadd, ldapmodify and ldapdelete as it); the service account (SERVICE_DN /
SERVICE_PASSWORD) may read people and groups, operational attributes included, but never
`userPassword` (auth only) and may write nothing; users may bind (and read their own entry,
password aside); anonymous may only bind. `log_text()` is slapd's stats log: every
connection, bind, search and change, with its result.

The data (the constants below name every DN and password), under `dc=corp,dc=test`:

    ou=people    alice (cn "Alice Liddell"), bob, carol (locked: pwdAccountLockedTime
                 000001010000Z), dave (userAccountControl 514: AD disabled), erin
                 (userAccountControl 512: AD normal), admin, and
                 `cn=O'Brien\\, Pat (ops)*` (uid pat), a DN that needs escaping in a filter
    ou=groups    staff (groupOfNames: alice, bob, erin, pat), ops (alice),
                 admins (the group ops, and admin), developers (posixGroup, gidNumber 5000,
                 memberUid bob)
    ou=services  gateway (the service account)
    ou=policies  default (the ppolicy default policy: pwdLockout TRUE, or slapd 2.5 ignores
                 pwdAccountLockedTime; pwdMaxFailure 0, so wrong passwords never lock anyone)

slapd hands DNs back in its own spelling: pat's comes back as PAT_DN_FROM_SLAPD (`\2C` for
the escaped comma) in search results and in member and memberOf values; compare DNs parsed,
not as strings.

Tests use the module-scoped `slapd` fixture (`from tests.ldap_server import slapd  # noqa:
F401`), or `start_slapd(directory)` for a directory of their own that they may stop, start
again (same ports, same data) and close.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port
from tests.services import need

_SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])


def _tool(name: str) -> str | None:
    """Where `name` is: on PATH, or in the sbin directories a non-root PATH often lacks."""
    return shutil.which(name) or shutil.which(name, path=_SBIN)


SLAPD = _tool("slapd")
SLAPADD = _tool("slapadd")
LDAPMODIFY = _tool("ldapmodify")
LDAPDELETE = _tool("ldapdelete")
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = Path("/etc/ldap/schema")

BASE_DN = "dc=corp,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
SERVICES_DN = f"ou=services,{BASE_DN}"
POLICIES_DN = f"ou=policies,{BASE_DN}"
POLICY_DN = f"cn=default,{POLICIES_DN}"

ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
SERVICE_DN = f"cn=gateway,{SERVICES_DN}"
SERVICE_PASSWORD = "gateway-secret"

# uid -> password, for every person in ou=people
PASSWORDS = {
    "alice": "alice-pw-1",
    "bob": "bob-pw-1",
    "carol": "carol-pw-1",
    "dave": "dave-pw-1",
    "erin": "erin-pw-1",
    "pat": "pat-pw-1",
    "admin": "admin-pw-1",
}
ALICE_DN = f"uid=alice,{PEOPLE_DN}"
BOB_DN = f"uid=bob,{PEOPLE_DN}"
CAROL_DN = f"uid=carol,{PEOPLE_DN}"
DAVE_DN = f"uid=dave,{PEOPLE_DN}"
ERIN_DN = f"uid=erin,{PEOPLE_DN}"
# the RDN has a comma (escaped), parentheses and an asterisk: all need escaping in a filter
PAT_DN = f"cn=O'Brien\\, Pat (ops)*,{PEOPLE_DN}"
# slapd hands that DN back (search results, member and memberOf values) with the comma
# hex-escaped: the same DN, but not the same string
PAT_DN_FROM_SLAPD = f"cn=O'Brien\\2C Pat (ops)*,{PEOPLE_DN}"
PEOPLE_ADMIN_DN = f"uid=admin,{PEOPLE_DN}"
# uid -> DN
USER_DNS = {
    "alice": ALICE_DN,
    "bob": BOB_DN,
    "carol": CAROL_DN,
    "dave": DAVE_DN,
    "erin": ERIN_DN,
    "pat": PAT_DN,
    "admin": PEOPLE_ADMIN_DN,
}
LOCKED_TIME = "000001010000Z"  # pwdAccountLockedTime: locked until an administrator unlocks
AD_DISABLED = 514  # userAccountControl NORMAL_ACCOUNT | ACCOUNTDISABLE
AD_NORMAL = 512  # userAccountControl NORMAL_ACCOUNT

STAFF_DN = f"cn=staff,{GROUPS_DN}"
OPS_DN = f"cn=ops,{GROUPS_DN}"
ADMINS_DN = f"cn=admins,{GROUPS_DN}"
DEVELOPERS_DN = f"cn=developers,{GROUPS_DN}"

START_SECONDS = 10.0
STOP_SECONDS = 10.0
_LDAP_TOOL_ENV = {"LDAPNOINIT": "1"}  # ignore /etc/ldap/ldap.conf and ~/.ldaprc

# the TEST schema: only for the Active Directory bits (see the module docstring)
TEST_SCHEMA_LDIF = """\
dn: cn=gatewaytest,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: gatewaytest
olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  DESC 'TEST schema: Active Directory account flags'
  EQUALITY integerMatch ORDERING integerOrderingMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.99999.1.2.1 NAME 'gatewayTestAdUser'
  DESC 'TEST schema: an entry carrying AD userAccountControl'
  SUP top AUXILIARY MAY userAccountControl )
"""


def ssha(password: str) -> str:
    """`{SSHA}` of `password` as slappasswd makes it: SHA-1 over password + salt, then salt."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _person(dn: str, uid: str, cn: str, sn: str, *extra: str) -> str:
    lines = [
        f"dn: {dn}",
        "objectClass: inetOrgPerson",
        *(line for line in extra if line.startswith("objectClass:")),
        f"uid: {uid}",
        f"cn: {cn}",
        f"sn: {sn}",
        f"mail: {uid}@corp.test",
        f"userPassword: {ssha(PASSWORDS[uid])}",
        *(line for line in extra if not line.startswith("objectClass:")),
    ]
    return "\n".join(lines) + "\n"


def data_ldif() -> str:
    """The directory's entries, in an order the memberof overlay needs (members first)."""
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
        "dc: corp\no: Corp (test)\n",
        *(
            f"dn: ou={ou},{BASE_DN}\nobjectClass: organizationalUnit\nou: {ou}\n"
            for ou in ("people", "groups", "services", "policies")
        ),
        f"dn: {POLICY_DN}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\n"
        "cn: default\npwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: 0\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: gateway\ndescription: the gateway's service account\n"
        f"userPassword: {ssha(SERVICE_PASSWORD)}\n",
        _person(ALICE_DN, "alice", "Alice Liddell", "Liddell"),
        _person(BOB_DN, "bob", "Bob Builder", "Builder"),
        _person(
            CAROL_DN, "carol", "Carol Locked", "Locked", f"pwdAccountLockedTime: {LOCKED_TIME}"
        ),
        _person(
            DAVE_DN,
            "dave",
            "Dave Disabled",
            "Disabled",
            "objectClass: gatewayTestAdUser",
            f"userAccountControl: {AD_DISABLED}",
        ),
        _person(
            ERIN_DN,
            "erin",
            "Erin Enabled",
            "Enabled",
            "objectClass: gatewayTestAdUser",
            f"userAccountControl: {AD_NORMAL}",
        ),
        _person(PAT_DN, "pat", "O'Brien, Pat (ops)*", "O'Brien"),
        _person(PEOPLE_ADMIN_DN, "admin", "Admin Person", "Person"),
        _group(STAFF_DN, "staff", ALICE_DN, BOB_DN, ERIN_DN, PAT_DN),
        _group(OPS_DN, "ops", ALICE_DN),
        _group(ADMINS_DN, "admins", OPS_DN, PEOPLE_ADMIN_DN),
        f"dn: {DEVELOPERS_DN}\nobjectClass: posixGroup\ncn: developers\ngidNumber: 5000\n"
        "memberUid: bob\n",
    ]
    return "\n".join(entries)


def _group(dn: str, cn: str, *members: str) -> str:
    return f"dn: {dn}\nobjectClass: groupOfNames\ncn: {cn}\n" + "".join(
        f"member: {member}\n" for member in members
    )


def _acl() -> list[str]:
    """olcAccess for the mdb database: first match wins, the rootdn is never checked."""
    service = f'dn.exact="{SERVICE_DN}"'
    return [
        # passwords: bind only, for everyone (a bind is checked as anonymous)
        "to attrs=userPassword by * auth",
        # people and groups: the service account reads (and searches), users read themselves
        f'to dn.subtree="{PEOPLE_DN}" by {service} read by self read by * none',
        f'to dn.subtree="{GROUPS_DN}" by {service} read by * none',
        "to * by * none",
    ]


def _entry(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def config_ldif(directory: Path) -> str:
    """The cn=config for an instance living in `directory` (slapadd -n0 takes it)."""
    mdb = "olcDatabase={1}mdb,cn=config"
    schemas = [SCHEMA_DIR / f"{name}.ldif" for name in ("core", "cosine", "nis", "inetorgperson")]
    schemas.append(directory / "test-schema.ldif")
    entries = [
        _entry(
            "dn: cn=config",
            "objectClass: olcGlobal",
            "cn: config",
            "olcLogLevel: stats",
            f"olcTLSCACertificateFile: {directory / 'ca.pem'}",
            f"olcTLSCertificateFile: {directory / 'server.pem'}",
            f"olcTLSCertificateKeyFile: {directory / 'server.key'}",
        ),
        _entry(
            "dn: cn=module{0},cn=config",
            "objectClass: olcModuleList",
            "cn: module{0}",
            f"olcModulePath: {MODULE_PATH}",
            "olcModuleLoad: {0}back_mdb",
            "olcModuleLoad: {1}memberof",
            "olcModuleLoad: {2}ppolicy",
        ),
        _entry("dn: cn=schema,cn=config", "objectClass: olcSchemaConfig", "cn: schema"),
        *(_entry(f"include: file://{schema}") for schema in schemas),
        _entry(
            "dn: olcDatabase={-1}frontend,cn=config",
            "objectClass: olcDatabaseConfig",
            "objectClass: olcFrontendConfig",
            "olcDatabase: {-1}frontend",
        ),
        _entry(
            "dn: olcDatabase={0}config,cn=config",
            "objectClass: olcDatabaseConfig",
            "olcDatabase: {0}config",
            "olcAccess: {0}to * by * none",
        ),
        _entry(
            f"dn: {mdb}",
            "objectClass: olcDatabaseConfig",
            "objectClass: olcMdbConfig",
            "olcDatabase: {1}mdb",
            f"olcSuffix: {BASE_DN}",
            f"olcRootDN: {ADMIN_DN}",
            f"olcRootPW: {ssha(ADMIN_PASSWORD)}",
            f"olcDbDirectory: {directory / 'db'}",
            "olcDbMaxSize: 67108864",
            "olcDbIndex: objectClass eq",
            "olcDbIndex: uid,cn,mail eq",
            "olcDbIndex: member,memberUid eq",
            *(f"olcAccess: {{{i}}}{rule}" for i, rule in enumerate(_acl())),
        ),
        _entry(
            f"dn: olcOverlay={{0}}memberof,{mdb}",
            "objectClass: olcOverlayConfig",
            "objectClass: olcMemberOf",
            "olcOverlay: {0}memberof",
            "olcMemberOfRefInt: TRUE",
            "olcMemberOfGroupOC: groupOfNames",
            "olcMemberOfMemberAD: member",
            "olcMemberOfMemberOfAD: memberOf",
        ),
        _entry(
            f"dn: olcOverlay={{1}}ppolicy,{mdb}",
            "objectClass: olcOverlayConfig",
            "objectClass: olcPPolicyConfig",
            "olcOverlay: {1}ppolicy",
            f"olcPPolicyDefault: {POLICY_DN}",
        ),
    ]
    return "\n".join(entries)


# -- certificates -----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """slapd's certificate: SAN IP 127.0.0.1 and DNS localhost, signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_certificates(directory: Path) -> None:
    """ca.pem, server.pem, server.key (slapd's) and wrong-ca.pem (an unrelated CA)."""
    ca_key, ca_cert = _ca("gateway tests LDAP CA")
    key, cert = _server_cert(ca_key, ca_cert)
    (directory / "ca.pem").write_bytes(_pem(ca_cert))
    (directory / "server.pem").write_bytes(_pem(cert))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    (directory / "wrong-ca.pem").write_bytes(_pem(_ca("some other CA")[1]))


# -- the server -------------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class SlapdExited(RuntimeError):
    """slapd exited while starting (the message ends with the tail of its log)."""


class Slapd:
    """One slapd instance living in `directory`: config, database, certificates and log.

    The ports are picked when it is made and kept for good, so `stop()` then `start()` brings
    the same directory back at the same URLs with the data it had.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.ldaps_port = free_port()
        self.config_dir = directory / "slapd.d"
        self.db_dir = directory / "db"
        self.log = directory / "slapd.log"
        self.ca_file = directory / "ca.pem"
        self.wrong_ca_file = directory / "wrong-ca.pem"
        self.proc: subprocess.Popen | None = None
        self._loaded = False

    @property
    def url(self) -> str:
        """ldap://127.0.0.1:port (StartTLS offered)."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        """ldaps://127.0.0.1:port."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def _configure(self) -> None:
        """Certificates, the cn=config directory (slapadd -n0) and the empty database."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_certificates(self.directory)
        (self.directory / "test-schema.ldif").write_text(TEST_SCHEMA_LDIF)
        (self.directory / "admin.pw").write_text(ADMIN_PASSWORD)
        (self.directory / "admin.pw").chmod(0o600)
        config = self.directory / "config.ldif"
        config.write_text(config_ldif(self.directory))
        shutil.rmtree(self.config_dir, ignore_errors=True)
        shutil.rmtree(self.db_dir, ignore_errors=True)
        self.config_dir.mkdir()
        self.db_dir.mkdir()
        done = subprocess.run(
            [_need_tool(SLAPADD, "slapadd"), "-n0", "-F", str(self.config_dir), "-l", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"slapadd -n0 failed ({done.returncode}):\n{done.stderr}")

    def start(self) -> None:
        """Start slapd (configuring and loading the data the first time); wait for its ports.

        The first start picks fresh ports again (a few times) if slapd exits at once, as it
        does when another process took a port between free_port() and slapd's bind; later
        starts use the same ports, so a taken port is an error then.
        """
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.config_dir.exists():
            self._configure()
        for attempt in range(1 if self._loaded else 3):
            if attempt:
                self.port, self.ldaps_port = free_port(), free_port()
            self._spawn()
            try:
                self._wait_ports()
                break
            except SlapdExited:
                if self._loaded or attempt == 2:
                    raise
        if not self._loaded:
            self.add(data_ldif())
            self._loaded = True

    def _spawn(self) -> None:
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [
                    _need_tool(SLAPD, "slapd"),
                    "-d",
                    "stats",
                    "-h",
                    f"{self.url}/ {self.ldaps_url}/",
                    "-F",
                    str(self.config_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )

    def _wait_ports(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_SECONDS
        waiting = [self.port, self.ldaps_port]
        while waiting:
            if self.proc.poll() is not None:
                raise SlapdExited(f"slapd exited with {self.proc.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"slapd did not listen on {waiting} after {START_SECONDS}s:\n{self._tail()}"
                )
            if _accepts(waiting[0]):
                waiting.pop(0)
            else:
                time.sleep(0.02)
        if self.proc.poll() is not None:  # what answered was not this slapd
            raise SlapdExited(f"slapd exited with {self.proc.returncode}:\n{self._tail()}")

    def stop(self) -> None:
        """Stop slapd (SIGTERM, then SIGKILL); its ports refuse connections afterwards."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop for good (the directory's files stay, for the log)."""
        self.stop()

    def log_text(self) -> str:
        """slapd's stats log so far (every start appends to it)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- changes as the rootdn, over ldap:// ------------------------------------------------

    def _as_admin(self, tool: list[str], stdin: str = "") -> None:
        done = subprocess.run(
            [*tool, "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(self.directory / "admin.pw")],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **_LDAP_TOOL_ENV},
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(tool[0]).name} failed ({done.returncode}): {done.stderr.strip()}\n{stdin}"
            )

    def add(self, ldif: str) -> None:
        """Add the entries in `ldif` (ldapadd); raises RuntimeError with stderr on failure."""
        self._as_admin([_need_tool(LDAPMODIFY, "ldapmodify"), "-a"], ldif)

    def modify(self, ldif: str) -> None:
        """Apply the change records in `ldif` (ldapmodify: `changetype: ...` in each)."""
        self._as_admin([_need_tool(LDAPMODIFY, "ldapmodify")], ldif)

    def delete(self, dn: str) -> None:
        """Delete the entry `dn` (ldapdelete)."""
        self._as_admin([_need_tool(LDAPDELETE, "ldapdelete"), dn])

    def __enter__(self) -> Slapd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _need_tool(path: str | None, name: str) -> str:
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian: slapd, ldap-utils)")
    return path


def available() -> bool:
    """True when slapd, slapadd and the ldap-utils tools are installed."""
    return None not in (SLAPD, SLAPADD, LDAPMODIFY, LDAPDELETE) and Path(MODULE_PATH).is_dir()


def start_slapd(directory: Path) -> Slapd:
    """A started slapd with the test data, living in `directory` (made if missing)."""
    server = Slapd(directory)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A started directory with the test data for the module's tests; closed after them."""
    need(
        "slapd",
        available(),
        "Debian's slapd and ldap-utils are needed (apt-get install slapd ldap-utils)",
    )
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.close()
