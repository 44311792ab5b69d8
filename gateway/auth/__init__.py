"""Sessions and their credentials: tokens and keys, the cookie, login limits, redirects."""
