"""Verified session tokens remembered until they expire, so a signature is checked once per token.

A browser sends the same cookie on every request: verifying its signature again each time
was the largest single cost of a proxied request (EdDSA verify + PyJWT parsing, ~19% of
CPU in the profile in bench/RESULTS.md). Only successful verifications are remembered,
keyed by the exact token string; an entry ends when the token expires (`exp` plus the
leeway verification allows) or when the key that signed it is no longer in the keyring. Every
hit asks the keyring, which re-reads the key directory once its last read is the reload
interval old (gateway.auth.tokens._RELOAD_EVERY): a cached token of a retired key is refused
within that interval, as an uncached one is.
Revocation is not decided here: authn still asks the session store exactly as before.
"""

from __future__ import annotations

from gateway.auth.keys import SigningKey
from gateway.auth.tokens import LEEWAY, MAX_TOKEN_BYTES, Claims, Tokens

MAX_ENTRIES = 10_000


class VerifiedTokens:
    """`Tokens.verify_session` with a bounded cache of the tokens it accepted."""

    def __init__(self, tokens: Tokens, max_entries: int = MAX_ENTRIES) -> None:
        self.tokens = tokens
        self.max_entries = max_entries
        self._cache: dict[str, tuple[Claims, SigningKey]] = {}

    def verify_session(self, token: str) -> Claims:
        """Claims of a valid session token; raises as Tokens.verify_session does."""
        entry = self._cache.get(token)
        if entry is not None:
            claims, key = entry
            # expired, or signed by a key since retired (lookup re-reads the directory when
            # due, and keeps the same object for a key still there): verify in full again
            if claims.exp > self.tokens.clock() - LEEWAY and (
                self.tokens.keyring.lookup(claims.kid) is key
            ):
                return claims
            del self._cache[token]
        claims = self.tokens.verify_session(token)
        key = self.tokens.keyring.lookup(claims.kid)
        if key is not None and len(token) <= MAX_TOKEN_BYTES:
            if len(self._cache) >= self.max_entries:
                # oldest first: dicts keep insertion order
                del self._cache[next(iter(self._cache))]
            self._cache[token] = (claims, key)
        return claims
