"""The session cookie: read it from a request, write and clear it on a response.

With `[session] domain` the cookie carries `Domain=` (every host under it receives it); on a
host outside that domain (a hand-off) it is written host-only, with the same name.
"""

from __future__ import annotations

from gateway.auth.redirects import bare_host, under_domain
from gateway.config import Config

SAME_SITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


class CookieJar:
    """Reads and writes the one cookie the gateway owns, with the configured attributes."""

    def __init__(self, config: Config) -> None:
        self.name = config.cookie_name
        self._name_bytes = self.name.encode("latin-1")
        secure = config.cookie_secure
        same_site = SAME_SITE[config.session.same_site]
        # SameSite=None is only honoured on Secure cookies; fall back to Lax rather than drop it
        if same_site == "None" and not secure:
            same_site = "Lax"
        attrs = ["Path=/", "HttpOnly", f"SameSite={same_site}"]
        if secure:
            attrs.append("Secure")
        self.domain = config.session.domain
        self._host_attrs = "; ".join(attrs)
        self._attrs = self._host_attrs + (f"; Domain={self.domain}" if self.domain else "")
        self.max_age = int(config.session.max_age)

    def _scope(self, host: str | None) -> str:
        """The attributes for a response on `host` (None: the portal's, the Domain cookie)."""
        if host is None or under_domain(bare_host(host), self.domain):
            return self._attrs
        return self._host_attrs

    def read(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Our cookie's value; None when absent or sent more than once (a tossed duplicate)."""
        found: list[bytes] = []
        for key, value in headers:
            if key != b"cookie":
                continue
            for pair in value.split(b";"):
                name, sep, val = pair.strip().partition(b"=")
                if sep and name == self._name_bytes:
                    found.append(val.strip())
        if len(found) != 1 or not found[0]:
            return None
        try:
            return found[0].decode("ascii")
        except UnicodeDecodeError:
            return None

    def set(self, token: str, host: str | None = None) -> str:
        """A Set-Cookie value carrying a fresh token; the cookie lives as long as a session may.

        `host` (the request's Host) outside `[session] domain` gets a host-only cookie, which
        is the only kind a browser keeps there; None means the Domain cookie, when configured.
        """
        return f"{self.name}={token}; Max-Age={self.max_age}; {self._scope(host)}"

    def clear(self, host: str | None = None) -> str:
        """A Set-Cookie value that removes the cookie (on `host`, as `set` scopes it)."""
        expired = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        return f"{self.name}=; {expired}; {self._scope(host)}"
