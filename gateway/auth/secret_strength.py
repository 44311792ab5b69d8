"""How guessable an HS256 secret is: a conservative estimate of its entropy in bits.

Anyone who guesses the secret can sign a token as any user, offline and without limit, so
the estimate gives no credit for what a cracking wordlist tries first: runs like `1111`,
`1234` or `aceg`, and text that already occurred earlier in the secret.
"""

from __future__ import annotations

import math
import string

MIN_SECRET_BITS = 128

_HEX = frozenset(string.hexdigits.lower())
_CLASSES = (
    (frozenset(string.ascii_lowercase), 26),
    (frozenset(string.ascii_uppercase), 26),
    (frozenset(string.digits), 10),
    (frozenset(string.punctuation + " "), 33),
)
# keyboard walks (`qwerty`, `asdf`, `poiu`): a window of _REPEAT along a row
_ROWS = ("`1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", "zxcvbnm,./")
_WALKS = frozenset(
    row[j : j + 3] for r in _ROWS for row in (r, r[::-1]) for j in range(len(row) - 2)
)
# a run already seen this long, or longer, adds nothing: `correcthorsecorrecthorse`
_REPEAT = 3


def alphabet_size(secret: str) -> int:
    """The size of the smallest usual alphabet the secret is drawn from."""
    chars = set(secret)
    if chars <= _HEX or chars <= set(string.hexdigits.upper()):
        return 16
    size = sum(count for members, count in _CLASSES if chars & members)
    if any(ord(ch) > 0x7E or ord(ch) < 0x20 for ch in chars):
        size += 128
    return max(size, 2)


def estimate_bits(secret: str) -> int:
    """Bits the secret is credited with: its unpredictable characters x log2(alphabet)."""
    free = sum(1 for i in range(len(secret)) if i == 0 or not _predictable(secret, i))
    return int(free * math.log2(alphabet_size(secret))) if secret else 0


def _predictable(secret: str, i: int) -> bool:
    # the third character of a run with one step: `aaa`, `123`, `cba`, `aceg`, `2468`
    if i >= 2 and ord(secret[i]) - ord(secret[i - 1]) == ord(secret[i - 1]) - ord(secret[i - 2]):
        return True
    if i >= 2 and secret[i - 2 : i + 1].lower() in _WALKS:
        return True
    # the last few characters, ending here, already stood earlier in the secret
    window = secret[i - _REPEAT + 1 : i + 1]
    return i >= _REPEAT and secret.find(window, 0, i) != -1


def weakness(secret: str) -> str | None:
    """Why the secret is too weak to sign tokens with, or None when it is strong enough."""
    size = len(secret.encode())
    if size < 32:
        return f"HS256 needs a secret of at least 32 bytes (got {size})"
    bits = estimate_bits(secret)
    if bits < MIN_SECRET_BITS:
        return (
            f"too guessable: about {bits} bits of entropy, at least {MIN_SECRET_BITS} needed "
            "(runs like 1111, 1234 or aceg and repeated text count for nothing)"
        )
    return None
