"""Second factors (README "Second factors"): where they live, how each is checked, and the
state between the first factor and the second.

    factors.py   a user's factors in the store, sealed (TOTP secrets, WebAuthn keys, recovery)
    totp.py      RFC 6238 codes: enrollment secret, QR code, the ±1-step check, used once
    pending.py   a first factor done, a second due: a short-lived record that opens no route
    webauthn.py  security keys and passkeys (py_webauthn): registration and authentication

Factors are kept in the gateway's own store for users of every source: nothing is written to
an LDAP directory or an SQL database.
"""

from __future__ import annotations

from gateway.config import Config

# the amr method each factor adds to the session (RFC 8176)
AMR = {"totp": "otp", "recovery": "otp", "webauthn": "hwk"}


def mfa_methods(config: Config) -> tuple[str, ...]:
    """The second factors this gateway takes, as `mfa_required` answers name them."""
    methods = []
    if config.mfa.totp:
        methods.append("totp")
    if config.webauthn_on:
        methods.append("webauthn")
    methods.append("recovery")
    return tuple(methods)
