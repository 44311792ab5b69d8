"""Where the gateway may send a browser after login: same-origin relative paths only."""

from __future__ import annotations

from urllib.parse import urlsplit

MAX_NEXT = 2048


def is_safe_next(value: str) -> bool:
    """True for a path like `/a/b?c` that every browser reads as same-origin."""
    if not value or len(value) > MAX_NEXT or not value.startswith("/"):
        return False
    # browsers drop tabs and newlines and read `\` as `/`: `/\evil` and `/\t/evil` are `//evil`
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value) or "\\" in value:
        return False
    if value.startswith("//"):
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def safe_next(value: str | None, fallback: str = "/") -> str:
    """The value if it is a safe `next`, else the fallback."""
    return value if value is not None and is_safe_next(value) else fallback
