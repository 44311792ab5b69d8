"""RFC 6238 one-time codes (pyotp): the enrollment secret and QR code, and the check.

A code is taken for the current 30-second step or one step either side, once: the step it
matched is claimed in the store (one winner across workers and replicas), and a step no later
than the last one accepted is refused, so a code seen over a shoulder is worth nothing once
used, and an older code is worth nothing once a newer one was.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import pyotp
import segno

from gateway.mfa.factors import Factor, Factors

STEP = 30
WINDOW = 1  # steps either side of now
DIGITS = 6


def new_secret() -> str:
    """160 random bits in base32, as RFC 4226 recommends and every authenticator app reads."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app scans."""
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """The URI as an inline SVG QR code (drawn here by segno: no request leaves the page)."""
    return segno.make(uri, error="m").svg_inline(scale=5, border=2, title="QR code")


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (now ±WINDOW) whose code this is, or None."""
    code = code.strip().replace(" ", "")
    # ASCII only: str.isdigit() takes Arabic-Indic, fullwidth and other digits too, which make
    # no code (and hmac.compare_digest raises on a non-ASCII str): a wrong code like any other
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP)
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        # every step is compared, so the time taken says nothing about which one matched
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


async def check_code(
    factors: Factors, user_id: str, code: str, clock: Callable[[], float]
) -> Factor | None:
    """The user's TOTP factor this code belongs to, used up by this call; None otherwise."""
    now = clock()
    for factor in await factors.list(user_id):
        if factor.kind != "totp":
            continue
        step = matching_step(factor.data.get("secret", ""), code, now)
        if step is None or step <= factor.data.get("last_step", -1):
            continue
        if not await factors.used_once(user_id, f"{factor.id}:{step}", (2 * WINDOW + 2) * STEP):
            continue  # the same code, a moment ago, on another request
        factor.data["last_step"] = step
        factor.last_used = now
        await factors.save(user_id, factor)
        return factor
    return None
