"""Security keys and passkeys (WebAuthn Level 2, py_webauthn): the two ceremonies, no HTTP.

Registration makes a credential for a user: the options name the user by their WebAuthn user
handle (gateway.mfa.factors, random, never the id), ask for a discoverable credential where
the authenticator can make one (a passkey) and user verification where it can; the verified
public key and signature counter become a factor of kind "webauthn".

Authentication proves a credential: for a known user (a second factor, or a step-up) the
options list that user's credentials; for a passkey sign-in they list none, the browser
offers the passkeys it holds for this site, and the user handle in the answer says whose it
is. Then the signature, the relying party, the origin, user presence (and, for a passkey
alone, user verification) and the counter are checked: a counter that does not move past the
last one seen is a cloned authenticator, refused.

Every challenge is used up by one answer and bound to its ceremony and user: an answer
replayed, made for another ceremony or another user's challenge, is refused. A challenge for a
user (registration, a second factor) is a store record. A passkey sign-in's, asked for by
anybody before any sign-in, is no record until it is answered: it is its own expiry sealed
under the gateway's sealing key (32 bytes, as random to whoever lacks the key), and the answer
that uses it leaves a record until that expiry, so that it is used once. Asking for options
again and again fills no store.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.auth.sealed import Sealer, SealError
from gateway.mfa.factors import Factor, Factors
from gateway.store.base import Store

CHALLENGE_TTL = 300.0  # the browser's own timeout (below) plus time to read the prompt
TIMEOUT_MS = 120_000
MAX_CREDENTIAL_ID = 1023  # WebAuthn's own bound on a credential id, in bytes
_TRANSPORTS = {t.value for t in AuthenticatorTransport}
# what py_webauthn raises for an answer it cannot parse or verify (its own tree, and what its
# parsers let through for a malformed field: bad base64, a wrong type, a missing key)
_REFUSED = (WebAuthnException, ValueError, KeyError, TypeError)
# a passkey sign-in's challenge: its expiry (4 bytes) sealed for this purpose = 32 bytes
_SEALED_PURPOSE = "webauthn-challenge"
_PASSKEY = "passkey"


class CeremonyFailed(Exception):
    """The browser's answer does not hold: `reason`, a code for the audit event, and what the
    library said (`detail`) for the log."""

    def __init__(self, reason: str, detail: object = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class WebAuthn:
    """The relying party `rp_id`, for pages at `origin`; challenges and factors in the store."""

    def __init__(
        self,
        *,
        rp_id: str,
        rp_name: str,
        origin: str,
        store: Store,
        factors: Factors,
        sealer: Sealer,
        clock: Callable[[], float],
    ) -> None:
        self.rp_id = rp_id
        self.rp_name = rp_name
        self.origin = origin
        self.store = store
        self.factors = factors
        self.sealer = sealer
        self.clock = clock

    # -- challenges ------------------------------------------------------------------------

    async def _issue(self, purpose: str, user_id: str) -> bytes:
        challenge = secrets.token_bytes(32)
        now = self.clock()
        doc = json.dumps({"purpose": purpose, "user": user_id}, separators=(",", ":"))
        await self.store.put_record(_challenge_key(challenge), doc, now, now + CHALLENGE_TTL)
        return challenge

    def _sealed_passkey_challenge(self) -> bytes:
        expires = int(self.clock() + CHALLENGE_TTL)
        return self.sealer.seal_bytes(expires.to_bytes(4, "big"), _SEALED_PURPOSE, _PASSKEY)

    def _sealed_expiry(self, challenge: bytes) -> int | None:
        """The expiry a sealed passkey challenge holds; None for any other challenge."""
        try:
            return int.from_bytes(
                self.sealer.open_bytes(challenge, _SEALED_PURPOSE, _PASSKEY), "big"
            )
        except SealError:
            return None

    async def _claim(self, credential: dict[str, Any], purpose: str, user_id: str) -> bytes:
        """The challenge this answer signs, used up now; refused unless it was issued for this
        ceremony and user and not used before (one winner among concurrent answers)."""
        challenge = _signed_challenge(credential)
        key = _challenge_key(challenge)
        expires = self._sealed_expiry(challenge)
        if expires is not None:
            if purpose != _PASSKEY:
                raise CeremonyFailed("challenge_of_another_ceremony")
            now = self.clock()
            # expired, or a record of its use already there: refused
            if expires <= now or not await self.store.put_record(
                key, "used", now, float(expires), only_new=True
            ):
                raise CeremonyFailed("unknown_or_used_challenge")
            return challenge
        value = await self.store.get_record(key, self.clock())
        if value is None or not await self.store.delete_record(key):
            raise CeremonyFailed("unknown_or_used_challenge")
        doc = json.loads(value)
        if doc.get("purpose") != purpose or doc.get("user") != user_id:
            raise CeremonyFailed("challenge_of_another_ceremony")
        return challenge

    # -- registration ----------------------------------------------------------------------

    async def registration_options(self, user_id: str, username: str) -> str:
        """navigator.credentials.create()'s options as JSON, for a new credential of this user."""
        handle = await self.factors.user_handle(user_id, username)
        existing = [
            PublicKeyCredentialDescriptor(id=_decode(f.data["credential_id"]))
            for f in await self.factors.list(user_id)
            if f.kind == "webauthn"
        ]
        options = generate_registration_options(
            rp_id=self.rp_id,
            rp_name=self.rp_name,
            user_id=handle.encode("ascii"),
            user_name=username or user_id,
            user_display_name=username or user_id,
            challenge=await self._issue("register", user_id),
            timeout=TIMEOUT_MS,
            # a passkey where the authenticator can keep one; a plain security key otherwise
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=existing,
        )
        return options_to_json(options)

    async def register(self, user_id: str, credential: dict[str, Any], name: str) -> Factor:
        """Verify the browser's new credential and keep it as a factor of this user."""
        challenge = await self._claim(credential, "register", user_id)
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
            )
        except _REFUSED as exc:
            raise CeremonyFailed("registration_not_verified", exc) from None
        if len(verified.credential_id) > MAX_CREDENTIAL_ID:
            raise CeremonyFailed("credential_id_too_long")
        credential_id = _encode(verified.credential_id)
        for factor in await self.factors.list(user_id):
            if factor.kind == "webauthn" and factor.data.get("credential_id") == credential_id:
                raise CeremonyFailed("credential_registered_already")
        transports = credential.get("response", {}).get("transports", [])
        data = {
            "credential_id": credential_id,
            "public_key": _encode(verified.credential_public_key),
            "sign_count": verified.sign_count,
            "transports": [t for t in transports if t in _TRANSPORTS]
            if isinstance(transports, list)
            else [],
            "backed_up": bool(verified.credential_backed_up),
            "user_verified": bool(verified.user_verified),
        }
        try:
            return await self.factors.add(user_id, "webauthn", name, data)
        except ValueError as exc:
            raise CeremonyFailed("too_many_factors", exc) from None

    # -- authentication --------------------------------------------------------------------

    async def authentication_options(self, user_id: str | None) -> str:
        """navigator.credentials.get()'s options as JSON: this user's credentials, or (None)
        any passkey of this site, which must verify the user as well."""
        if user_id is None:
            options = generate_authentication_options(
                rp_id=self.rp_id,
                challenge=self._sealed_passkey_challenge(),
                timeout=TIMEOUT_MS,
                user_verification=UserVerificationRequirement.REQUIRED,
            )
            return options_to_json(options)
        allowed = [
            PublicKeyCredentialDescriptor(
                id=_decode(f.data["credential_id"]),
                transports=[AuthenticatorTransport(t) for t in f.data.get("transports", [])],
            )
            for f in await self.factors.list(user_id)
            if f.kind == "webauthn"
        ]
        options = generate_authentication_options(
            rp_id=self.rp_id,
            challenge=await self._issue("authenticate", user_id),
            timeout=TIMEOUT_MS,
            allow_credentials=allowed,
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        return options_to_json(options)

    async def passkey_owner(self, credential: dict[str, Any]) -> tuple[str, str]:
        """(user id, username) of the passkey that answered, by the user handle it returned;
        an unknown handle uses the challenge up, so it is no free retry."""
        found = await self.factors.user_of_handle(_user_handle(credential))
        if found is None:
            await self._claim(credential, _PASSKEY, "")
            raise CeremonyFailed("unknown_user_handle")
        return found

    async def authenticate(
        self, user_id: str, credential: dict[str, Any], *, passkey: bool = False
    ) -> Factor:
        """Verify the browser's answer with one of this user's credentials (`passkey`: to a
        passkey sign-in's challenge, the user verified); the factor, its counter moved on."""
        challenge = await self._claim(
            credential, _PASSKEY if passkey else "authenticate", "" if passkey else user_id
        )
        factor = await self._factor_of(user_id, credential)
        stored = int(factor.data.get("sign_count", 0))
        try:
            verified = verify_authentication_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=_decode(factor.data["public_key"]),
                credential_current_sign_count=stored,
                require_user_verification=passkey,
            )
        except _REFUSED as exc:
            # a counter that did not move past the last one seen: a copy of the key answered
            reason = "counter_went_back" if "sign count" in str(exc) else "assertion_not_verified"
            raise CeremonyFailed(reason, exc) from None
        factor.data["sign_count"] = verified.new_sign_count
        factor.last_used = self.clock()
        await self.factors.save(user_id, factor)
        return factor

    async def _factor_of(self, user_id: str, credential: dict[str, Any]) -> Factor:
        raw_id = credential.get("rawId") or credential.get("id")
        if not isinstance(raw_id, str) or len(raw_id) > 2 * MAX_CREDENTIAL_ID:
            raise CeremonyFailed("no_credential_id")
        wanted = raw_id.rstrip("=").encode("utf-8", "replace")
        for factor in await self.factors.list(user_id):
            held = factor.data.get("credential_id", "").encode("ascii")
            if factor.kind == "webauthn" and hmac.compare_digest(held, wanted):
                return factor
        raise CeremonyFailed("credential_not_registered")


def web_origin(url: str) -> str:
    """The origin a browser puts in clientDataJSON for pages under `url`: scheme, lower-case
    host, and the port only when it is not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def _challenge_key(challenge: bytes) -> str:
    return f"webauthn-challenge:{_encode(challenge)}"


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CeremonyFailed("bad_base64url") from None


def _signed_challenge(credential: dict[str, Any]) -> bytes:
    """The challenge in the answer's clientDataJSON (the signature is checked afterwards)."""
    response = credential.get("response")
    raw = response.get("clientDataJSON") if isinstance(response, dict) else None
    if not isinstance(raw, str) or len(raw) > 8192:
        raise CeremonyFailed("no_client_data")
    try:
        client_data = json.loads(_decode(raw))
        challenge = _decode(client_data["challenge"])
    except (ValueError, KeyError, TypeError):
        raise CeremonyFailed("bad_client_data") from None
    if len(challenge) != 32:
        raise CeremonyFailed("unknown_or_used_challenge")
    return challenge


def _user_handle(credential: dict[str, Any]) -> str:
    response = credential.get("response")
    raw = response.get("userHandle") if isinstance(response, dict) else None
    if not isinstance(raw, str) or not raw or len(raw) > 200:
        raise CeremonyFailed("no_user_handle")
    try:
        return _decode(raw).decode("ascii")
    except UnicodeDecodeError:
        raise CeremonyFailed("bad_user_handle") from None


def parse_credential(value: object) -> dict[str, Any]:
    """A credential as the browser sent it (a JSON object, or its text in a form field)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise CeremonyFailed("credential_not_json") from None
    if not isinstance(value, dict):
        raise CeremonyFailed("credential_not_an_object")
    return value
