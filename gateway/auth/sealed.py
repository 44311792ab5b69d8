"""Secrets the gateway keeps in its store, encrypted at rest (a provider's refresh token, second
factors), and what it hands out to be given back unaltered (a passkey sign-in's challenge).

AES-256-GCM (the `cryptography` package) with a key of its own in `keys.dir`, the file
`sealing.key` (32 random bytes, mode 0600, made on first use; replicas share the key
directory, so they share it too). Each value is sealed for one purpose and one owner (the
associated data, e.g. "oidc-grant" and the session id), so a sealed value copied to another
record or session does not open there. Text form: `v1.` + base64url(nonce + ciphertext).
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "sealing.key"
_VERSION = "v1."


class SealError(Exception):
    """A sealed value that does not open: another key, another owner, or damaged."""


class Sealer:
    """Seal and open short texts with the key in `directory` (made there when missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                self._aead = AESGCM(self._load_or_make())
            return self._aead

    def _load_or_make(self) -> bytes:
        path = self.directory / KEY_FILE
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            try:
                # O_EXCL: of workers starting together one writes it, the others read it
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                key = path.read_bytes()
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
        if len(key) != 32:
            raise SealError(f"{path} is not a 32-byte key")
        return key

    def seal(self, text: str, purpose: str, owner: str) -> str:
        sealed = self.seal_bytes(text.encode("utf-8"), purpose, owner)
        return _VERSION + base64.urlsafe_b64encode(sealed).decode("ascii")

    def open(self, value: str, purpose: str, owner: str) -> str:
        if not value.startswith(_VERSION):
            raise SealError("unknown format")
        try:
            raw = base64.urlsafe_b64decode(value[len(_VERSION) :])
        except ValueError:
            raise SealError("does not open") from None
        return self.open_bytes(raw, purpose, owner).decode("utf-8")

    def seal_bytes(self, data: bytes, purpose: str, owner: str) -> bytes:
        """`data` sealed as bytes: a random 12-byte nonce, the ciphertext and a 16-byte tag
        (28 bytes more than `data`; without the key, indistinguishable from random)."""
        nonce = secrets.token_bytes(12)
        return nonce + self._cipher().encrypt(nonce, data, _aad(purpose, owner))

    def open_bytes(self, raw: bytes, purpose: str, owner: str) -> bytes:
        try:
            return self._cipher().decrypt(raw[:12], raw[12:], _aad(purpose, owner))
        except (ValueError, InvalidTag):
            raise SealError("does not open") from None


def _aad(purpose: str, owner: str) -> bytes:
    return f"{purpose}\x00{owner}".encode()
