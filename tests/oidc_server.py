"""A real OpenID Provider on 127.0.0.1 for the gateway's OpenID Connect tests.

`OidcProvider` runs panva's `oidc-provider` (OpenID Certified; the npm package pinned in
tests/oidc/package.json) with the machine's Node.js: tests/oidc/provider.js, with settings this
module writes to a JSON file. Issuer `http://127.0.0.1:PORT`; a second port, also on 127.0.0.1
only, is the admin API this class drives (see the script's header).

What it serves: discovery, the authorization endpoint (PKCE S256 required for every client),
the token endpoint (`client_secret_basic` or `client_secret_post`, per client), refresh tokens
(issued to every client allowed the refresh_token grant, with or without `offline_access`),
userinfo, revocation, JWKS, RP-initiated logout (`end_session_endpoint`) and Back-Channel
Logout 1.0. Scopes: openid, email (email, email_verified), profile (name, preferred_username,
given_name, family_name), groups (groups, a list), offline_access. By default the ID token
carries the scopes' claims, as Keycloak, Entra ID and Google do (`claims_in_id_token=False`:
only userinfo has them, as OpenID Connect Core says for the code flow).

Signing in: the provider's own interaction pages, kept plain. The login page is a form
(username = sub or preferred_username, and the account's password); consent is granted by the
consent interaction itself (`consent="auto"`) or on a page with an Allow button
(`consent="page"`). `authorize_as(sub, url)` walks an authorization URL through those same
pages with httpx, as a browser would, and returns where the provider sends the browser back
to (the client's redirect_uri with `code` and `state`, or `error`). No login shortcut exists.

Keys: this module makes them (RSA 2048, EC P-256, Ed25519) and hands the private JWKs to the
provider, so tests can also sign tokens with the provider's key (`sign`). For each key type
the first key signs; `rotate_keys()` puts a new one first (new kid in the JWKS).

Changes while it runs: `add_client`, `add_account` (also replaces), `disable(sub)` (the
account can no longer sign in, exchange a code, refresh or call userinfo), `rotate_keys`,
`configure(...)`, `override_next_id_token(...)` (the next ID token from the token endpoint
rewritten: claims, header, `alg: none`, or signed by another key), `backchannel_logout(...)`,
`take_down()` / `bring_up()` (the issuer's port refuses connections; state is kept).
`stop()` then `start()` brings the same issuer, keys, clients and accounts back, but sessions,
grants, codes and tokens live in the provider's memory and are gone.

The data (constants below): clients BASIC_CLIENT (client_secret_basic, RS256) and POST_CLIENT
(client_secret_post, ES256), both with REDIRECT_URI (on a .test name: never fetched); accounts
ALICE (groups staff, ops), BOB (staff, admin), CAROL (email not verified), DAVE (an email
outside corp.test). Tests use the module-scoped `oidc_provider` fixture (`from
tests.oidc_server import oidc_provider_fixture  # noqa: F401`: the fixture is named
`oidc_provider`, so a test's parameter does not shadow the import); a test that disables an
account or rotates keys there should use an account or expectation of its own, since the
module shares it. `start_oidc_provider(directory, ...)` makes one of a test's own.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.services import need

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SCRIPT = OIDC_DIR / "provider.js"
NODE = shutil.which("node")
NPM = shutil.which("npm")
MIN_NODE = (20, 19)  # oidc-provider 9 asks for 22 LTS and warns on 20, but runs (tests pass)
START_SECONDS = 15.0
STOP_SECONDS = 5.0
NPM_SECONDS = 300.0

REDIRECT_URI = "http://rp.test/callback"
POST_LOGOUT_REDIRECT_URI = "http://rp.test/signed-out"
DEFAULT_SCOPE = "openid email profile groups"

KeyType = Literal["RSA", "EC", "OKP"]
ALGORITHMS: dict[str, KeyType] = {
    "RS256": "RSA",
    "PS256": "RSA",
    "ES256": "EC",
    "EdDSA": "OKP",
    "Ed25519": "OKP",
}


class OidcError(RuntimeError):
    """The provider refused or failed something (the message says what it answered)."""


# -- clients, accounts, keys ------------------------------------------------------------------


@dataclass
class Client:
    """A registered client (a relying party such as the gateway)."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    token_endpoint_auth_method: str = "client_secret_basic"
    id_token_signed_response_alg: str = "RS256"
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])
    response_types: list[str] = field(default_factory=lambda: ["code"])
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The client's metadata as oidc-provider takes it."""
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": list(self.redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
            "grant_types": list(self.grant_types),
            "response_types": list(self.response_types),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
        }
        if self.backchannel_logout_uri:
            out["backchannel_logout_uri"] = self.backchannel_logout_uri
            out["backchannel_logout_session_required"] = self.backchannel_logout_session_required
        return {**out, **self.extra}


@dataclass
class Account:
    """An end-user at the provider: `sub`, a password for the login form, and claims."""

    sub: str
    password: str
    preferred_username: str | None = None
    email: str | None = None
    email_verified: bool = True
    groups: list[str] = field(default_factory=list)
    name: str | None = None
    disabled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def claims(self) -> dict[str, Any]:
        """The claims the provider hands out (filtered by the granted scopes)."""
        out: dict[str, Any] = {"sub": self.sub, "groups": list(self.groups)}
        for key in ("preferred_username", "email", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.email is not None:
            out["email_verified"] = self.email_verified
        return {**out, **self.extra}

    def settings(self) -> dict[str, Any]:
        return {"password": self.password, "claims": self.claims(), "disabled": self.disabled}


@dataclass
class SigningKey:
    """One of the provider's signing keys, private half included."""

    kid: str
    kty: KeyType
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

    @classmethod
    def generate(cls, kty: KeyType = "RSA") -> SigningKey:
        """A fresh key: RSA 2048, EC P-256 or Ed25519."""
        key: Any
        if kty == "RSA":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kty == "EC":
            key = ec.generate_private_key(ec.SECP256R1())
        elif kty == "OKP":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"no such key type: {kty}")
        return cls(kid=f"{kty.lower()}-{secrets.token_hex(6)}", kty=kty, private_key=key)

    def _jwk(self, key: Any) -> dict[str, Any]:
        algorithm = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[self.kty]
        jwk = algorithm.to_jwk(key, as_dict=True)
        jwk.pop("key_ops", None)  # PyJWT's ["sign"] would keep oidc-provider from verifying
        return {**jwk, "kid": self.kid, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        """The private JWK (what the provider is given)."""
        return self._jwk(self.private_key)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK (what the provider's JWKS shows)."""
        return self._jwk(self.private_key.public_key())


def pkce_pair() -> tuple[str, str]:
    """A PKCE code_verifier and its S256 code_challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


BASIC_CLIENT = Client(
    "basic-client",
    "basic-client-secret-0123456789",
    [REDIRECT_URI],
    post_logout_redirect_uris=[POST_LOGOUT_REDIRECT_URI],
)
POST_CLIENT = Client(
    "post-client",
    "post-client-secret-0123456789",
    [REDIRECT_URI],
    token_endpoint_auth_method="client_secret_post",
    id_token_signed_response_alg="ES256",
)
ALICE = Account(
    "alice-0001",
    "alice-oidc-pw",
    preferred_username="alice",
    email="alice@corp.test",
    groups=["staff", "ops"],
    name="Alice Liddell",
)
BOB = Account(
    "bob-0002",
    "bob-oidc-pw",
    preferred_username="bob",
    email="bob@corp.test",
    groups=["staff", "admin"],
    name="Bob Builder",
)
CAROL = Account(
    "carol-0003",
    "carol-oidc-pw",
    preferred_username="carol",
    email="carol@corp.test",
    email_verified=False,
    groups=["staff"],
)
DAVE = Account(
    "dave-0004",
    "dave-oidc-pw",
    preferred_username="dave",
    email="dave@elsewhere.test",
    groups=["staff"],
)
CLIENTS = (BASIC_CLIENT, POST_CLIENT)
ACCOUNTS = (ALICE, BOB, CAROL, DAVE)


# -- installing oidc-provider -----------------------------------------------------------------

_install: tuple[bool, str] | None = None


def _node_version() -> tuple[int, ...] | None:
    if NODE is None:
        return None
    try:
        done = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v(\d+)\.(\d+)", done.stdout.strip())
    return (int(match[1]), int(match[2])) if match else None


def _installed() -> bool:
    """True when node_modules holds the versions package-lock.json names."""
    try:
        lock = json.loads((OIDC_DIR / "package-lock.json").read_text())["packages"]
        for name in ("oidc-provider", "jose"):
            wanted = lock[f"node_modules/{name}"]["version"]
            package = OIDC_DIR / "node_modules" / name / "package.json"
            if json.loads(package.read_text())["version"] != wanted:
                return False
    except (OSError, KeyError, ValueError):
        return False
    return True


def ensure_installed() -> tuple[bool, str]:
    """(True, "") once tests/oidc/node_modules is installed; else (False, why).

    Runs `npm ci` quietly there when node_modules is missing or out of date (a fresh checkout),
    once per process and under a lock, so parallel test processes install it only once.
    """
    global _install
    if _install is not None:
        return _install
    version = _node_version()
    if version is None:
        _install = (False, "Node.js is not installed (Debian: nodejs npm)")
    elif version < MIN_NODE:
        _install = (False, f"Node.js {'.'.join(map(str, version))} is older than 20.19")
    elif _installed():
        _install = (True, "")
    elif NPM is None:
        _install = (False, "npm is not installed (Debian: npm), so tests/oidc cannot be set up")
    else:
        _install = _npm_ci()
    return _install


def _npm_ci() -> tuple[bool, str]:
    lock_path = Path(tempfile.gettempdir()) / f"gateway-oidc-npm-{os.getuid()}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():  # another process did it while we waited
            return True, ""
        try:
            done = subprocess.run(
                [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=OIDC_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"npm ci in tests/oidc failed: {exc}"
        if done.returncode != 0 or not _installed():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            return False, f"npm ci in tests/oidc failed ({done.returncode}):\n{tail}"
    return True, ""


def available() -> bool:
    """True when Node.js is here and oidc-provider is installed (installing it if need be)."""
    return ensure_installed()[0]


# -- the provider -----------------------------------------------------------------------------


def _http(**kwargs: Any) -> httpx.Client:
    """An httpx client for 127.0.0.1: no proxies from the environment, no redirects followed."""
    return httpx.Client(trust_env=False, follow_redirects=False, timeout=10.0, **kwargs)


class OidcProvider:
    """One oidc-provider process living in `directory` (settings, ready file and log).

    The ports are picked on the first `start()` and kept, so `stop()` then `start()` brings the
    same issuer back. Clients, accounts, keys and switches are kept here and written to the
    provider at every start; changes while it runs go through the admin API.
    """

    def __init__(
        self,
        directory: Path,
        clients: Iterable[Client] = (),
        accounts: Iterable[Account] = (),
        *,
        consent: Literal["auto", "page"] = "auto",
        claims_in_id_token: bool = True,
        refresh_tokens: Literal["always", "offline_access"] = "always",
        rotate_refresh_tokens: bool = False,
        strict_client_auth: bool = True,
        ttl: Mapping[str, int] | None = None,
    ) -> None:
        self.directory = directory
        self.clients: dict[str, Client] = {c.client_id: copy.deepcopy(c) for c in clients}
        self.accounts: dict[str, Account] = {a.sub: copy.deepcopy(a) for a in accounts}
        self.keys: list[SigningKey] = [SigningKey.generate(kty) for kty in ("RSA", "EC", "OKP")]
        self.switches: dict[str, Any] = {
            "consent": consent,
            "claims_in_id_token": claims_in_id_token,
            "refresh_tokens": refresh_tokens,
            "rotate_refresh_tokens": rotate_refresh_tokens,
            "strict_client_auth": strict_client_auth,
            "ttl": dict(ttl or {}),
        }
        self.cookie_keys = [secrets.token_urlsafe(32)]
        self.port = 0
        self.admin_port = 0
        self.log = directory / "provider.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin: httpx.Client | None = None

    # -- process ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """`http://127.0.0.1:PORT` (known once started)."""
        if not self.port:
            raise RuntimeError("the provider has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the node process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the provider (with everything this object holds); wait until it serves."""
        if self.running:
            return
        ok, why = ensure_installed()
        if not ok:
            raise RuntimeError(why)
        self.directory.mkdir(parents=True, exist_ok=True)
        ready = self.directory / "ready.json"
        ready.unlink(missing_ok=True)
        settings = self.directory / "settings.json"
        settings.write_text(json.dumps(self._settings(ready), indent=1))
        settings.chmod(0o600)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [NODE or "node", str(SCRIPT), str(settings)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=OIDC_DIR,
            )
        deadline = time.monotonic() + START_SECONDS
        while not ready.exists():
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"oidc provider exited with {code}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"oidc provider not ready after {START_SECONDS}s:\n{self._tail()}"
                )
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.port, self.admin_port = info["port"], info["admin_port"]
        self._admin = _http(base_url=f"http://127.0.0.1:{self.admin_port}")

    def _settings(self, ready: Path) -> dict[str, Any]:
        return {
            "port": self.port,
            "admin_port": self.admin_port,
            "ready_file": str(ready),
            "cookie_keys": self.cookie_keys,
            "jwks": {"keys": [key.private_jwk() for key in self.keys]},
            "clients": [client.metadata() for client in self.clients.values()],
            "accounts": {sub: account.settings() for sub, account in self.accounts.items()},
            "switches": self.switches,
        }

    def stop(self) -> None:
        """Stop the provider (SIGTERM, then SIGKILL); its ports refuse connections afterwards."""
        proc, self.proc = self.proc, None
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def close(self) -> None:
        """Stop for good (the directory's files stay, for the log)."""
        self.stop()

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        """The provider's output so far (every start appends to it)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """A call to the admin API while running (none when stopped: the next start has it)."""
        if not self.running or self._admin is None:
            return None
        response = self._admin.request(method, path, json=body)
        if response.status_code != 200:
            raise OidcError(f"admin {method} {path}: {response.status_code} {response.text}")
        return response.json()

    # -- what it holds ---------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        *,
        client_secret: str,
        redirect_uris: Iterable[str],
        token_endpoint_auth_method: str = "client_secret_basic",
        id_token_signed_response_alg: str = "RS256",
        grant_types: Iterable[str] = ("authorization_code", "refresh_token"),
        post_logout_redirect_uris: Iterable[str] = (),
        backchannel_logout_uri: str | None = None,
        backchannel_logout_session_required: bool = True,
        **extra: Any,
    ) -> Client:
        """Register (or replace) a client; at once when running. `extra`: more metadata."""
        client = Client(
            client_id,
            client_secret,
            list(redirect_uris),
            token_endpoint_auth_method=token_endpoint_auth_method,
            id_token_signed_response_alg=id_token_signed_response_alg,
            grant_types=list(grant_types),
            post_logout_redirect_uris=list(post_logout_redirect_uris),
            backchannel_logout_uri=backchannel_logout_uri,
            backchannel_logout_session_required=backchannel_logout_session_required,
            extra=extra,
        )
        self._call("PUT", f"/clients/{_quote(client_id)}", client.metadata())
        self.clients[client_id] = client
        return client

    def remove_client(self, client_id: str) -> None:
        """Unregister a client."""
        self._call("DELETE", f"/clients/{_quote(client_id)}")
        self.clients.pop(client_id, None)

    def add_account(
        self,
        sub: str,
        *,
        password: str | None = None,
        preferred_username: str | None = None,
        email: str | None = None,
        email_verified: bool = True,
        groups: Iterable[str] = (),
        name: str | None = None,
        **extra: Any,
    ) -> Account:
        """Add (or replace: new claims show at the next refresh) an account; `extra`: claims."""
        account = Account(
            sub,
            password if password is not None else f"{sub}-oidc-pw",
            preferred_username=preferred_username,
            email=email,
            email_verified=email_verified,
            groups=list(groups),
            name=name,
            extra=extra,
        )
        self._call("PUT", f"/accounts/{_quote(sub)}", account.settings())
        self.accounts[sub] = account
        return account

    def account(self, login: str) -> Account | None:
        """The account whose sub, or else preferred_username, is `login` (as the form finds it)."""
        if login in self.accounts:
            return self.accounts[login]
        return next((a for a in self.accounts.values() if a.preferred_username == login), None)

    def disable(self, sub: str) -> None:
        """Disable an account: no sign-in, code exchange, refresh or userinfo for it."""
        self._call("POST", f"/accounts/{_quote(sub)}/disable")
        self.accounts[sub].disabled = True

    def enable(self, sub: str) -> None:
        """Enable a disabled account again."""
        self._call("POST", f"/accounts/{_quote(sub)}/enable")
        self.accounts[sub].disabled = False

    def configure(self, **switches: Any) -> None:
        """Change switches (the constructor's keywords): consent, claims_in_id_token,
        refresh_tokens, rotate_refresh_tokens, strict_client_auth, ttl (seconds by artifact:
        AccessToken, AuthorizationCode, IdToken, RefreshToken, Session, ...)."""
        unknown = set(switches) - set(self.switches)
        if unknown:
            raise TypeError(f"no such switch: {', '.join(sorted(unknown))}")
        self._call("POST", "/switches", switches)
        self.switches.update(switches)

    # -- keys ------------------------------------------------------------------------------

    def rotate_keys(self, kty: KeyType = "RSA", *, keep_old: bool = True) -> SigningKey:
        """A new signing key of `kty`, first in the JWKS so it signs from now on; the old keys
        stay published unless `keep_old=False`. Returns the new key (its `kid` is new)."""
        key = SigningKey.generate(kty)
        self._call("POST", "/keys", {"jwk": key.private_jwk(), "keep_old": keep_old})
        kept = self.keys if keep_old else [k for k in self.keys if k.kty != kty]
        self.keys = [key, *kept]
        return key

    def signing_key(self, alg: str = "RS256") -> SigningKey:
        """The key the provider signs `alg` with now."""
        kty = ALGORITHMS[alg]
        return next(key for key in self.keys if key.kty == kty)

    def sign(
        self,
        payload: Mapping[str, Any],
        *,
        alg: str = "RS256",
        key: SigningKey | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT signed as the provider signs (its current key for `alg`, or `key`)."""
        key = key or self.signing_key(alg)
        return jwt.encode(
            dict(payload),
            key.private_key,
            algorithm=alg,
            headers={"kid": key.kid, **(headers or {})},
        )

    def id_token_claims(
        self, client_id: str, sub: str, *, nonce: str | None = None, lifetime: int = 300
    ) -> dict[str, Any]:
        """Claims of a plausible ID token (to change, then `sign`)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": client_id,
            "iat": now,
            "exp": now + lifetime,
            "auth_time": now,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return claims

    def override_next_id_token(
        self,
        *,
        claims: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
        client_id: str | None = None,
    ) -> None:
        """Rewrite the next ID token the token endpoint returns (to `client_id`, or any).

        `claims` and `header` are merged in (None removes one); `header={"alg": "none"}` leaves
        it unsigned; `key` signs with that key (say `SigningKey.generate()`, one the provider
        never published) instead of the provider's. Each call rewrites one token.
        """
        self._call(
            "POST",
            "/id-token-override",
            {
                "claims": dict(claims or {}),
                "header": dict(header or {}),
                "key": key.private_jwk() if key else None,
                "client_id": client_id,
            },
        )

    # -- logout, events, outages -----------------------------------------------------------

    def backchannel_logout(self, client_id: str, sub: str, sid: str | None = None) -> dict:
        """Send a Back-Channel Logout token to the client's backchannel_logout_uri now.

        Returns the event: type `backchannel.success`, or `backchannel.error` with `error`.
        """
        return self._call(
            "POST", "/backchannel-logout", {"client_id": client_id, "sub": sub, "sid": sid}
        )

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """Events numbered `n` after `since`: token.request (client_id, auth_method,
        grant_type), grant.success / .error (client_id, grant_type, error),
        backchannel.success / .error, end_session.success, id_token.override."""
        return self._call("GET", f"/events?since={since}")["events"]

    def state(self) -> dict[str, Any]:
        """What the provider says it has: kids, clients, accounts, switches, down."""
        return self._call("GET", "/state")

    def take_down(self) -> None:
        """Close the issuer's port (connections refused) but keep all state."""
        self._call("POST", "/down")

    def bring_up(self) -> None:
        """Open the issuer's port again after `take_down()`."""
        self._call("POST", "/up")

    # -- the protocol, for tests -------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        """The discovery document."""
        with _http() as http:
            response = http.get(f"{self.issuer}/.well-known/openid-configuration")
            response.raise_for_status()
            return response.json()

    def jwks(self) -> dict[str, Any]:
        """The public JWKS the provider serves."""
        with _http() as http:
            response = http.get(self.discovery()["jwks_uri"])
            response.raise_for_status()
            return response.json()

    def authorization_url(
        self,
        client_id: str,
        *,
        code_challenge: str,
        redirect_uri: str | None = None,
        scope: str = DEFAULT_SCOPE,
        state: str | None = None,
        nonce: str | None = None,
        **params: str,
    ) -> str:
        """An authorization request URL (response_type code, PKCE S256)."""
        query = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri or self.clients[client_id].redirect_uris[0],
            "scope": scope,
            "state": state or secrets.token_urlsafe(16),
            "nonce": nonce or secrets.token_urlsafe(16),
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            **params,
        }
        return f"{self.issuer}/auth?{urllib.parse.urlencode(query)}"

    def authorize_as(
        self,
        sub: str,
        authorization_url: str,
        *,
        http: httpx.Client | None = None,
        password: str | None = None,
    ) -> str:
        """Take `authorization_url` through the provider signed in as `sub`, as a browser.

        Follows the provider's redirects, fills in its login form (`sub`, or a
        preferred_username, and the account's password, or `password`) and its consent form when one is shown, and returns the URL the
        provider finally redirects to off its own origin: the client's redirect_uri with `code`
        and `state` (or `error`). Pass `http` (an httpx.Client that does not follow redirects)
        to keep the provider's session cookie across calls, as a browser does; then a second
        sign-in shows no login form. Raises OidcError when the provider shows an error page
        or refuses the login.
        """
        own = http is None
        client = http or _http()
        if password is None:
            account = self.account(sub)
            password = account.password if account else ""
        origin = urllib.parse.urlsplit(self.issuer).netloc
        url, form = authorization_url, None
        try:
            for _ in range(12):
                response = client.get(url) if form is None else client.post(url, data=form)
                form = None
                if response.is_redirect:
                    url = urllib.parse.urljoin(url, response.headers["location"])
                    if urllib.parse.urlsplit(url).netloc != origin:
                        return url
                    continue
                text = response.text
                if response.status_code == 200 and 'data-prompt="login"' in text:
                    if 'id="error"' in text:
                        raise OidcError(f"login as {sub} refused: {_page_text(text)}")
                    url = urllib.parse.urljoin(url, _form_action(text, "login"))
                    form = {"login": sub, "password": password}
                elif response.status_code == 200 and 'data-prompt="consent"' in text:
                    url = urllib.parse.urljoin(url, _form_action(text, "consent"))
                    form = {}
                else:
                    raise OidcError(
                        f"provider answered {response.status_code} at {url}: {_page_text(text)}"
                    )
            raise OidcError(f"too many steps signing in as {sub}")
        finally:
            if own:
                client.close()

    def end_session(self, url: str, *, http: httpx.Client) -> str:
        """RP-initiated logout: GET the end_session URL (`id_token_hint`,
        `post_logout_redirect_uri`, ...), confirm the provider's "sign me out" form, and
        return where it redirects to (the post_logout_redirect_uri, or its own success page).
        `http` carries the provider's session cookie (the one `authorize_as` used)."""
        response = http.get(url)
        if response.status_code != 200:
            raise OidcError(f"end_session answered {response.status_code}: {response.text}")
        action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', response.text)
        if not action or not xsrf:
            raise OidcError(f"no logout form at {url}: {_page_text(response.text)}")
        confirm = urllib.parse.urljoin(url, action[1])
        done = http.post(confirm, data={"xsrf": xsrf[1], "logout": "yes"})
        if not done.is_redirect:
            raise OidcError(f"logout confirm answered {done.status_code}: {done.text}")
        return urllib.parse.urljoin(confirm, done.headers["location"])


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _form_action(html: str, form_id: str) -> str:
    match = re.search(rf'<form id="{form_id}"[^>]*action="([^"]+)"', html)
    if not match:
        raise OidcError(f"no {form_id} form on the page: {_page_text(html)}")
    return match[1].replace("&#38;", "&")


def _page_text(html: str) -> str:
    """A page's text, short (for error messages)."""
    body = html.split("<body>", 1)[-1]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()[:500]


def start_oidc_provider(directory: Path, **kwargs: Any) -> OidcProvider:
    """A started provider living in `directory`, with the default clients and accounts unless
    `clients` / `accounts` are given (other keywords: see OidcProvider)."""
    kwargs.setdefault("clients", CLIENTS)
    kwargs.setdefault("accounts", ACCOUNTS)
    provider = OidcProvider(directory, **kwargs)
    try:
        provider.start()
    except BaseException:
        provider.close()
        raise
    return provider


def need_oidc() -> None:
    """Skip (or fail, when GATEWAY_TEST_REQUIRE names "oidc") unless the provider can run."""
    ok, why = ensure_installed()
    need("oidc", ok, why)


@pytest.fixture(scope="module", name="oidc_provider")
def oidc_provider_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """`oidc_provider`: a started provider with the default clients and accounts, for the
    module's tests (import `oidc_provider_fixture`; tests take `oidc_provider`)."""
    need_oidc()
    provider = start_oidc_provider(tmp_path_factory.mktemp("oidc"))
    yield provider
    provider.close()
