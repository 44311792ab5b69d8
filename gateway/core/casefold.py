"""ASCII-only case folding for paths and hosts: the one rule route matching and config share."""

from __future__ import annotations

_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def ascii_lower(text: str) -> str:
    """`text` with A-Z lowered and every other character as it is.

    str.lower() applies Unicode rules: `İ` becomes two code points and the Kelvin sign a `k`,
    so a folded path would no longer line up with the one matched and forwarded.
    """
    if text.isascii():
        return text.lower()
    return text.translate(_ASCII_LOWER)
