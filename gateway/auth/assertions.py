"""The upstream assertion, signed once per session and route and reused while it is fresh.

Signing a new assertion for every proxied request was a quarter of a worker's time (the
Ed25519 signature, issue 17). What it promises (this user, these roles and sign-in methods,
this route, recently) holds for every request of the session on that route, so, as Pomerium
does with X-Pomerium-Jwt-Assertion, one signed assertion serves them all while it is fresh.

The rule: an assertion is handed out again only

- for exactly the same claims: the key is everything that goes into them apart from the
  times and the jti (session id, user, route, roles, amr, and method and path when the route
  binds the assertion to the request), so two users, two sessions, two routes or two role
  sets never share one, and a role change at refresh or a step-up (new amr) mints a new one;
- while more than half its life remains: minted at `iat` (whole seconds, as ever) with
  `exp = iat + ASSERTION_TTL` (60 s), it is reused while `now < (iat + exp) / 2`, that is
  while `exp - now > 30`: every assertion an upstream receives has `exp - now` in (30, 60];
- while the key that signed it is still the keyring's signing key: after a rotation (once the
  new key signs) or a retirement nothing signed by the old key is handed out again.

A session that ends is refused by authn (strict: at once; lazy: at its next re-issue) and its
identity never reaches the next hop again, so its entry is never used again; it is dropped by
the stale sweep below, or by `forget_session` if a logout wants it gone at once.

Memory is bounded: least recently used first out, at most `max_entries` entries and at most
`max_bytes` of token and key text; entries past their reuse point are dropped when looked up
and from the LRU end on every insert. One instance per runtime, used from its event loop only.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.auth.tokens import ASSERTION_TTL, Tokens

# Whether an assertion names its request's method and path is the route's
# `assertion_binds_request` ([identity], default false: one per session and route). Bound, the
# method and path are in the claims and so in the key: reuse then needs the same method and
# path again within 30 s, and a route of many distinct paths signs nearly every request
# (README "Verifying the assertion in an upstream" says what that costs).
MAX_ENTRIES = 4096
MAX_BYTES = 4 * 1024 * 1024
# an entry's bookkeeping beyond its text (tuples, str headers, the OrderedDict link), about
_OVERHEAD = 300

# (sid, sub, route, roles, amr, method, path); method and path are "" when not bound
Key = tuple[str, str, str, tuple[str, ...], tuple[str, ...], str, str]


class AssertionCache:
    """`Tokens.mint_assertion` for the next hop, reusing a fresh one for identical claims."""

    def __init__(
        self, tokens: Tokens, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
    ) -> None:
        self.tokens = tokens
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # key -> (header value, kid that signed it, reused until, size counted in _bytes)
        self._entries: OrderedDict[Key, tuple[bytes, str, float, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def assertion(
        self,
        sid: str,
        sub: str,
        roles: tuple[str, ...],
        route: str,
        amr: tuple[str, ...],
        method: str | None = None,
        path: str | None = None,
    ) -> bytes:
        """The assertion header value; `method` and `path` given: bound to this request."""
        bound = method is not None and path is not None
        # tuples already (Claims, User): tuple() returns them as they are; a list would not hash
        roles, amr = tuple(roles), tuple(amr)
        if bound:
            key: Key = (sid, sub, route, roles, amr, method or "", path or "")
        else:
            key = (sid, sub, route, roles, amr, "", "")
        signing = self.tokens.keyring.signing_key()
        now = self.tokens.clock()
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            if entry[1] == signing.kid and now < entry[2]:
                entries.move_to_end(key)
                return entry[0]
            self._drop(key)
        # signed with the key just checked against: the entry records the kid that signed it
        token, iat = self.tokens.sign_assertion(
            signing, sub, roles, route, method if bound else None, path if bound else None, amr
        )
        value = token.encode("ascii")
        # the key's text (sub, roles, amr, route, method, path) is all in the token too, and
        # base64 makes it longer there: twice the token bounds the entry's text
        size = 2 * len(value) + _OVERHEAD
        # one oversized entry (hundreds of roles, a huge bound path) is signed, not kept
        if size <= self.max_bytes // 64:
            # exp = iat + ASSERTION_TTL: reused while more than half of that remains
            entries[key] = (value, signing.kid, iat + ASSERTION_TTL / 2, size)
            self._bytes += size
            self._trim(now)
        return value

    def forget_session(self, sid: str) -> int:
        """Drop every entry of one session (a logout); returns how many."""
        gone = [key for key in self._entries if key[0] == sid]
        for key in gone:
            self._drop(key)
        return len(gone)

    def forget_user(self, sub: str) -> int:
        """Drop every entry of one user (a logout everywhere, a removed user)."""
        gone = [key for key in self._entries if key[1] == sub]
        for key in gone:
            self._drop(key)
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[3]

    def _trim(self, now: float) -> None:
        entries = self._entries
        # over a bound: least recently used out first
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            _, entry = entries.popitem(last=False)
            self._bytes -= entry[3]
        # and whatever at the LRU end can no longer be handed out (two per insert at most:
        # amortized, and an idle cache empties itself as new entries come in)
        for _ in range(2):
            oldest = next(iter(entries), None)
            if oldest is None or entries[oldest][2] > now:
                break
            self._drop(oldest)
