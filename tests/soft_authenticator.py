"""A software FIDO2 authenticator and the browser's part of WebAuthn, for tests that speak
JSON to the gateway: it answers the options the gateway sends with what a browser would
post (`PublicKeyCredential.toJSON()`), and can be told to lie: another origin, another
relying party, no user verification, an old counter, a wrong signature.

It is a peer, as a browser is, not a stand-in for any part of the gateway: every answer
goes through the real endpoints and py_webauthn's checks there. Chromium with a CDP virtual
authenticator (tests/test_webauthn_browser.py) shows the same against a real browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """One ES256 credential, made by `create` and used by `get`."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.counter = 0
        self.user_handle = ""
        self.rp_id = ""

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin},
            separators=(",", ":"),
        ).encode()

    def create(self, options: dict, *, origin: str | None = None, rp_id: str | None = None) -> dict:
        """navigator.credentials.create() with these options, as the browser posts it."""
        self.rp_id = options["rp"]["id"]
        self.user_handle = options["user"]["id"]
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        attested = (
            bytes(16)  # aaguid
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._cose_key()
        )
        auth_data = (
            hashlib.sha256((rp_id or self.rp_id).encode()).digest()
            + bytes([UP | UV | AT])
            + struct.pack(">I", self.counter)
            + attested
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return self._answer(
            {
                "clientDataJSON": b64(client_data),
                "attestationObject": b64(attestation),
                "transports": ["usb"],
            }
        )

    def get(
        self,
        options: dict,
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        verified: bool = True,
        counter: int | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
        user_handle: str | None = None,
    ) -> dict:
        """navigator.credentials.get() with these options, as the browser posts it."""
        self.counter = counter if counter is not None else self.counter + 1
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        auth_data = (
            hashlib.sha256((rp_id or options.get("rpId") or self.rp_id).encode()).digest()
            + bytes([UP | (UV if verified else 0)])
            + struct.pack(">I", self.counter)
        )
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = (signer or self.key).sign(signed, ec.ECDSA(hashes.SHA256()))
        return self._answer(
            {
                "clientDataJSON": b64(client_data),
                "authenticatorData": b64(auth_data),
                "signature": b64(signature),
                "userHandle": self.user_handle if user_handle is None else user_handle,
            }
        )

    def _answer(self, response: dict) -> dict:
        """The PublicKeyCredential around an authenticator `response`, as toJSON() gives it."""
        return {
            "id": b64(self.credential_id),
            "rawId": b64(self.credential_id),
            "type": "public-key",
            "clientExtensionResults": {},
            "response": response,
        }
