"""Mint and verify JWTs: key lookup by kid, pinned algorithm, every claim required, JWKS."""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.keys import SigningKey, active_key, load_keys, secret_key
from gateway.config import KeysConfig

LEEWAY = 30.0
SESSION_CLAIMS = ("iss", "aud", "sub", "roles", "sid", "jti", "iat", "nbf", "exp")
ASSERTION_TTL = 60
MAX_TOKEN_BYTES = 4096
# the optional `rref` claim: 1-64 base64url characters (gateway.auth.roles writes 22)
_ROLES_REF = re.compile(r"[A-Za-z0-9_-]{1,64}")
# header parameters that name key material or change how the token is read: we honour none
_FORBIDDEN_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})
# seconds: how stale the keyring may get; a key retired on disk stops verifying (and a rotated
# one starts) in every worker within this long, checked on every lookup (one clock comparison)
_RELOAD_EVERY = 5.0

Clock = Callable[[], float]


class TokenError(Exception):
    """A token was refused; `reason` is a short code safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenExpired(TokenError):
    """Signature and claims are good but `exp` has passed: the session may still re-issue."""

    def __init__(self, claims: Claims) -> None:
        super().__init__("expired")
        self.claims = claims


@dataclass(frozen=True)
class Claims:
    """The verified claims of a session token."""

    sub: str
    roles: tuple[str, ...]
    sid: str
    jti: str
    iat: float
    exp: float
    kid: str
    # how the user signed in (RFC 8176 method names): ("pwd",) for a password
    amr: tuple[str, ...] = ()
    # the name the users source finds `sub` by at refresh, when that is not `sub` itself
    username: str = ""
    # roles too many for the cookie are in the store under this reference (gateway.auth.roles);
    # `roles` is then () until authn puts the stored set in
    roles_ref: str = ""


class Keyring:
    """The keys that sign and verify, re-read from disk at most _RELOAD_EVERY seconds apart.

    Each lookup, signing_key call and JWKS request first re-reads the directory once the last
    read is _RELOAD_EVERY old: a retired key (`gateway keys retire`, e.g. after a leak) stops
    verifying within that interval in every worker, whether or not it mints anything.
    """

    def __init__(self, config: KeysConfig, clock: Clock = time.time) -> None:
        self.config = config
        self.algorithm = config.algorithm
        self._clock = clock
        self._lock = threading.Lock()
        self._last_load = 0.0
        self._keys: dict[str, SigningKey] = {}
        self._ordered: list[SigningKey] = []
        self.reload()

    def reload(self) -> None:
        """Read the key directory (or the HS256 secret) again."""
        if self.algorithm == "HS256":
            keys = [secret_key(self.config.secret)]
        else:
            keys = [k for k in load_keys(self.config.dir) if k.algorithm == self.algorithm]
        if not keys:
            raise TokenError(f"no {self.algorithm} key in {self.config.dir}")
        # a key read again is the object read before (same kid, same material): the verified-token
        # cache and the assertion signer keep what they hold for it across reloads
        known = self._keys
        keys = [_same_key(known.get(k.kid), k) for k in keys]
        with self._lock:
            self._keys = {k.kid: k for k in keys}
            self._ordered = keys
            self._last_load = self._clock()

    def signing_key(self) -> SigningKey:
        """The active key, after picking up a rotation made elsewhere (checked every few s)."""
        self.maybe_refresh()
        return self.active

    @property
    def active(self) -> SigningKey:
        """The key that signs now (a fresh rotation signs only once every replica has it)."""
        return active_key(self._ordered, self._clock())

    def lookup(self, kid: str) -> SigningKey | None:
        """The key with this id, as the directory held it at most _RELOAD_EVERY seconds ago.

        A known id is re-checked too, not only an unknown one: a retired key must stop
        verifying without waiting for this worker to mint something.
        """
        self.maybe_refresh()
        return self._keys.get(kid)

    def maybe_refresh(self) -> None:
        """Re-read the directory when the last read is _RELOAD_EVERY old (a rotation made by
        another replica, a retired key); otherwise one clock comparison."""
        if self.algorithm == "HS256":
            return
        elapsed = self._clock() - self._last_load
        # a clock stepped back (elapsed < 0) must not hold the last read for that long
        if not 0.0 <= elapsed < _RELOAD_EVERY:
            self.reload()

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set (empty for HS256: a shared secret is never published)."""
        if self.algorithm == "HS256":
            return {"keys": []}
        out = []
        for key in self._keys.values():
            jwk = _public_jwk(key)
            jwk.update({"kid": key.kid, "alg": key.algorithm, "use": "sig"})
            out.append(jwk)
        return {"keys": out}


def _same_key(known: SigningKey | None, loaded: SigningKey) -> SigningKey:
    """`known` when it is the key just loaded (same kid, algorithm, public key), else `loaded`."""
    if known is None or known.algorithm != loaded.algorithm:
        return loaded
    return known if _public_bytes(known) == _public_bytes(loaded) else loaded


def _public_bytes(key: SigningKey) -> bytes:
    public: Any = key.public
    if isinstance(public, bytes):  # an HS256 secret
        return public
    return public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _public_jwk(key: SigningKey) -> dict[str, Any]:
    if key.algorithm == "EdDSA":
        return dict(OKPAlgorithm.to_jwk(key.public, as_dict=True))
    if key.algorithm == "ES256":
        return dict(ECAlgorithm.to_jwk(key.public, as_dict=True))
    return dict(RSAAlgorithm.to_jwk(key.public, as_dict=True))


class Tokens:
    """Session tokens and upstream assertions for one gateway (issuer = public_url)."""

    def __init__(self, keyring: Keyring, issuer: str, access_ttl: float, clock: Clock) -> None:
        self.keyring = keyring
        self.issuer = issuer
        # the session audience is the gateway itself; route names (assertion audiences)
        # cannot contain ':' so an assertion is never accepted as a session token
        self.audience = issuer
        self.access_ttl = access_ttl
        self.clock = clock
        self._last_signer: _CompactSigner | None = None

    def mint_session(
        self,
        sub: str,
        roles: tuple[str, ...],
        sid: str,
        amr: tuple[str, ...] = ("pwd",),
        username: str = "",
        roles_ref: str = "",
    ) -> tuple[str, Claims]:
        """A signed session token for this user and session, saying how they signed in.

        With `roles_ref` (SessionRoles.pack) the roles are in the store: the token says `rref`
        and carries no roles of its own.
        """
        if roles_ref:
            roles = ()
        now = int(self.clock())
        exp = now + int(self.access_ttl)
        jti = secrets.token_urlsafe(16)
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "roles": list(roles),
            "sid": sid,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "amr": list(amr),
        }
        username = "" if username == sub else username
        if username:
            payload["username"] = username
        if roles_ref:
            payload["rref"] = roles_ref
        key = self.keyring.signing_key()
        token = jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
        claims = Claims(
            sub, tuple(roles), sid, jti, now, exp, key.kid, tuple(amr), username, roles_ref
        )
        return token, claims

    def mint_assertion(
        self,
        sub: str,
        roles: tuple[str, ...],
        route: str,
        method: str | None,
        path: str | None,
        amr: tuple[str, ...] = (),
    ) -> str:
        """A 60-second token telling one upstream (aud = route name) who is calling.

        With `method` and `path` it is bound to one request; with None for both it holds for
        every request of the session on the route (gateway.auth.assertions reuses it).
        """
        key = self.keyring.signing_key()
        return self.sign_assertion(key, sub, roles, route, method, path, amr)[0]

    def sign_assertion(
        self,
        key: SigningKey,
        sub: str,
        roles: tuple[str, ...],
        route: str,
        method: str | None,
        path: str | None,
        amr: tuple[str, ...],
    ) -> tuple[str, int]:
        """mint_assertion with this key; also returns its `iat` (exp = iat + ASSERTION_TTL)."""
        now = int(self.clock())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": route,
            "sub": sub,
            "roles": list(roles),
        }
        if method is not None and path is not None:
            payload["method"] = method
            payload["path"] = path
        payload["amr"] = list(amr)
        payload["jti"] = secrets.token_urlsafe(12)
        payload["iat"] = now
        payload["nbf"] = now
        payload["exp"] = now + ASSERTION_TTL
        return self._signer(key).sign(payload), now

    def _signer(self, key: SigningKey) -> _CompactSigner:
        # one per signing key: the header segment and the prepared key are built once
        signer = self._last_signer
        if signer is None or signer.key is not key:
            signer = self._last_signer = _CompactSigner(key)
        return signer

    def verify_session(self, token: str) -> Claims:
        """Verify a session token; raise TokenExpired (with claims) or TokenError."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("too large")
        header = _header(token)
        # before PyJWT reads it: PyJWT refuses an unknown `crit` itself, as "malformed"
        if _FORBIDDEN_HEADERS & set(header):
            raise TokenError("forbidden header")
        try:
            jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed") from None
        if header.get("alg") != self.keyring.algorithm:
            raise TokenError("algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("no kid")
        key = self.keyring.lookup(kid)
        if key is None:
            raise TokenError("unknown kid")
        try:
            # times are checked below against our own clock so tests can drive it
            payload = jwt.decode(
                token,
                key.public,
                algorithms=[self.keyring.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": list(SESSION_CLAIMS),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenError("audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("issuer") from None
        except jwt.MissingRequiredClaimError:
            raise TokenError("missing claim") from None
        except jwt.exceptions.InvalidSubjectError:
            # PyJWT checks `sub` is a string before our own claim checks run
            raise TokenError("claim type") from None
        except jwt.InvalidSignatureError:
            raise TokenError("signature") from None
        except jwt.PyJWTError:
            raise TokenError("invalid") from None
        claims = _session_claims(payload, kid)
        now = self.clock()
        if claim_number(payload["nbf"]) > now + LEEWAY or claims.iat > now + LEEWAY:
            raise TokenError("not yet valid")
        if claims.exp - claims.iat > self.access_ttl + LEEWAY:
            raise TokenError("lifetime")
        if claims.exp <= now - LEEWAY:
            raise TokenExpired(claims)
        return claims


def _header(token: str) -> dict[str, Any]:
    """The JOSE header as a dict, or TokenError("malformed")."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed") from None
    if not isinstance(header, dict):
        raise TokenError("malformed")
    return header


def claim_number(value: object) -> float:
    """A numeric claim (a time) as a finite float, or TokenError("claim type").

    PyJWT's JSON parser takes NaN and Infinity, and a NaN compares false with everything: it
    would pass every time check. An integer too large for a float is refused as well.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenError("claim type")
    try:
        number = float(value)
    except OverflowError:
        raise TokenError("claim type") from None
    if not math.isfinite(number):
        raise TokenError("claim type")
    return number


def claim_text(value: object, nonempty: bool = True) -> str:
    """A string claim with no control character (CR, LF, NUL, tab, ...), or TokenError.

    These strings become header values and log fields (X-User-Id is `sub`): a line break in
    one would start a header line of the signer's choosing.
    """
    if not isinstance(value, str) or (nonempty and not value) or not value.isprintable():
        raise TokenError("claim type")
    return value


def claim_texts(value: object) -> tuple[str, ...]:
    """A list-of-strings claim (roles, amr), each as claim_text allows (empty ones too)."""
    if not isinstance(value, list):
        raise TokenError("claim type")
    for item in value:
        claim_text(item, nonempty=False)
    return tuple(value)


def _session_claims(payload: dict[str, Any], kid: str) -> Claims:
    roles = claim_texts(payload["roles"])
    # tokens minted before `amr` existed carry none: they count as no factor at all
    amr = claim_texts(payload.get("amr", []))
    username = claim_text(payload.get("username", ""), nonempty=False)
    roles_ref = payload.get("rref", "")
    # a reference names one store record: short base64url text, never beside inline roles
    if "rref" in payload and (
        not isinstance(roles_ref, str) or not _ROLES_REF.fullmatch(roles_ref) or roles
    ):
        raise TokenError("claim type")
    return Claims(
        sub=claim_text(payload["sub"]),
        roles=roles,
        sid=claim_text(payload["sid"]),
        jti=claim_text(payload["jti"]),
        iat=claim_number(payload["iat"]),
        exp=claim_number(payload["exp"]),
        kid=kid,
        amr=amr,
        username=username,
        roles_ref=roles_ref,
    )


class _CompactSigner:
    """jwt.encode for one key without re-encoding its constant header on every call.

    An assertion was minted per proxied request (now per session and route, see
    gateway.auth.assertions); PyJWT's general path (header dict, JSON, key preparation)
    cost as much as the signature itself.
    """

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.algorithm = jwt.get_algorithm_by_name(key.algorithm)
        self.prepared = self.algorithm.prepare_key(key.private)
        header = {"alg": key.algorithm, "kid": key.kid, "typ": "JWT"}
        self.header = b64url(json.dumps(header, separators=(",", ":")).encode()).encode()

    def sign(self, payload: dict[str, Any]) -> str:
        """The compact JWS of this payload."""
        body = b64url(json.dumps(payload, separators=(",", ":")).encode())
        signing_input = self.header + b"." + body.encode("ascii")
        signature = self.algorithm.sign(signing_input, self.prepared)
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
