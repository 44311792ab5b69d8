"""One OpenID Connect provider, as the gateway talks to it: discovery, keys and tokens.

The OAuth 2.0 protocol work (the authorization URL with PKCE S256, the code exchange and the
refresh with `client_secret_basic` or `client_secret_post`) is Authlib's `AsyncOAuth2Client`
over httpx. Tokens the provider signs (ID tokens, back-channel logout tokens) are verified here
with PyJWT, as the gateway's own are: the algorithm from the discovery document's list and
asymmetric only (never `none`, never an HMAC one a public key could be taken for a secret in),
the key by `kid` from the provider's JWKS (fetched again on an unknown `kid`, at most every
JWKS_REFETCH seconds: a token under an unknown `kid` waits for the next fetch that rate allows,
so made-up kids neither make us hammer the provider nor keep us from a rotated key), and every
claim OpenID Connect Core 1.0 section 3.1.3.7 (and Back-Channel Logout 1.0 section 2.6) asks to
be checked.

Errors: ProviderUnavailable when the provider cannot be reached, answers with something that
is not the protocol, or does not finish answering within `timeout` (a person sees "the provider
is down", 502); TokenRefused when a token or an answer is wrong (never trusted, never retried
as if it were an outage).

`timeout` is a deadline for each whole call (discovery, token, userinfo, JWKS, refresh), not
httpx's per-read limit: a provider that drips its answer a byte at a time never trips that,
and would stall the sign-in (and, at a JWKS fetch, hold the key lock every other sign-in at
that provider waits for) for as long as it liked.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import authlib.deprecate
import httpx
import jwt

from gateway.config import OidcConfig

with warnings.catch_warnings():
    # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx itself, which
    # the gateway uses everywhere else; the fallback is Authlib's documented httpx client
    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = logging.getLogger("gateway.oidc")

# the signature algorithms we take from a provider: asymmetric only
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
LEEWAY = 60  # seconds of clock difference forgiven on exp, iat and nbf
MAX_AGE = 600  # an ID token or logout token issued longer ago than this is refused
JWKS_REFETCH = 5.0  # an unknown kid fetches the JWKS again at most this often (waiting for it)
DISCOVERY_RETRY = 5.0  # after a failed discovery, the next request tries again after this
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_TOKEN = 16384

Clock = Callable[[], float]
T = TypeVar("T")


def same_secret(given: str, expected: str) -> bool:
    """A constant-time comparison of two strings of any characters (hmac.compare_digest takes
    ASCII-only str, and raises TypeError on any other: a 500 for a state or nonce like "é")."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class ProviderUnavailable(Exception):
    """The provider could not be reached, or answered with something that is no protocol."""


class TokenRefused(Exception):
    """A token or an answer from the provider is not one to trust; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Metadata:
    """What the discovery document says (only what the gateway uses)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str
    end_session_endpoint: str
    algorithms: frozenset[str]


@dataclass(frozen=True)
class Grant:
    """The provider's answer at the token endpoint, ID token verified."""

    claims: dict[str, Any]  # the ID token's claims (userinfo's added when needed)
    id_token: str
    access_token: str
    access_expires: float  # unix seconds; 0 when the provider gave no expires_in
    refresh_token: str  # "" when the provider gave none


class Provider:
    """Discovery, the authorization URL, code exchange, refresh, userinfo and token checks."""

    def __init__(self, config: OidcConfig, redirect_uri: str, clock: Clock = time.time) -> None:
        self.config = config
        self.name = config.name
        self.redirect_uri = redirect_uri
        self.clock = clock
        self._metadata: Metadata | None = None
        self._discovery_failed_at = -DISCOVERY_RETRY
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_fetched_at = -JWKS_REFETCH
        self._jwks_lock = asyncio.Lock()
        self._http: AsyncOAuth2Client | None = None

    @property
    def http(self) -> AsyncOAuth2Client:
        if self._http is None:
            self._http = AsyncOAuth2Client(
                client_id=self.config.client_id,
                client_secret=self.config.client_secret,
                token_endpoint_auth_method=self.config.token_endpoint_auth_method,
                code_challenge_method="S256",
                scope=" ".join(self.config.scopes),
                redirect_uri=self.redirect_uri,
                timeout=self.config.timeout,
                # the provider is named in the config: no proxy from the environment
                trust_env=False,
                follow_redirects=False,
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _within(self, what: str, call: Awaitable[T]) -> T:
        """`call` finished within `timeout` seconds, or ProviderUnavailable: a whole-call
        deadline, where httpx's own timeout bounds each read (a dripped answer never trips it)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                return await call
        except TimeoutError:
            raise ProviderUnavailable(
                f"oidc {self.name}: {what}: no answer within {self.config.timeout:g}s"
            ) from None

    # -- discovery and keys ---------------------------------------------------------------

    async def metadata(self) -> Metadata:
        """The discovery document, fetched once (again after a failure, every few seconds)."""
        if self._metadata is not None:
            return self._metadata
        now = time.monotonic()
        if now - self._discovery_failed_at < DISCOVERY_RETRY:
            raise ProviderUnavailable(f"oidc {self.name}: discovery failed just now")
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            data = await self._get_json(url)
            self._metadata = self._parse_metadata(data)
        except ProviderUnavailable:
            self._discovery_failed_at = now
            raise
        return self._metadata

    def _parse_metadata(self, data: dict[str, Any]) -> Metadata:
        where = f"oidc {self.name}: discovery"
        if data.get("issuer") != self.config.issuer:
            # OpenID Connect Discovery 4.3: the issuer must be exactly the one asked
            raise ProviderUnavailable(
                f"{where} names the issuer {str(data.get('issuer'))[:200]!r}, "
                f"not {self.config.issuer!r}"
            )
        urls = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = data.get(key)
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise ProviderUnavailable(f"{where} has no usable {key}")
            urls[key] = value
        offered = data.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = frozenset(a for a in offered if isinstance(a, str)) & ASYMMETRIC
        if not algorithms:
            raise ProviderUnavailable(f"{where} offers no asymmetric ID token algorithm")
        userinfo = data.get("userinfo_endpoint")
        end_session = data.get("end_session_endpoint")
        return Metadata(
            issuer=self.config.issuer,
            authorization_endpoint=urls["authorization_endpoint"],
            token_endpoint=urls["token_endpoint"],
            jwks_uri=urls["jwks_uri"],
            userinfo_endpoint=userinfo if isinstance(userinfo, str) else "",
            end_session_endpoint=end_session if isinstance(end_session, str) else "",
            algorithms=algorithms,
        )

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._within(
                url, self.http.request("GET", url, withhold_token=True, **kwargs)
            )
        except httpx.HTTPError as exc:
            problem = exc.__class__.__name__
            raise ProviderUnavailable(f"oidc {self.name}: {url}: {problem}") from None
        if response.status_code != 200:
            raise ProviderUnavailable(f"oidc {self.name}: {url} answered {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise ProviderUnavailable(f"oidc {self.name}: {url} answered no JSON") from None
        if not isinstance(data, dict):
            raise ProviderUnavailable(f"oidc {self.name}: {url} answered no JSON object")
        return data

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        key = self._find_key(kid, alg)
        if key is None:
            # a rotation at the provider: its new key is in the JWKS by now
            asked = time.monotonic()
            async with self._jwks_lock:
                key = self._find_key(kid, alg)
                if key is None and self._jwks_fetched_at < asked:
                    # no fetch since this token came: one as soon as the rate allows. Anyone
                    # may POST a logout token under a made-up kid; refusing within the window
                    # instead would let them keep us from a real new key (failed sign-ins,
                    # refused refreshes ending sessions)
                    wait = self._jwks_fetched_at + JWKS_REFETCH - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self._fetch_jwks()
                    key = self._find_key(kid, alg)
        if key is None:
            raise TokenRefused("unknown_key")
        return key

    def _find_key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            key = self._jwks.get(kid)
            return key if key is not None and key.algorithm_name == alg else None
        matching = [k for k in self._jwks.values() if k.algorithm_name == alg]
        return matching[0] if len(matching) == 1 else None

    async def _fetch_jwks(self) -> None:
        metadata = await self.metadata()
        self._jwks_fetched_at = time.monotonic()
        data = await self._get_json(metadata.jwks_uri)
        keys: dict[str, jwt.PyJWK] = {}
        for index, item in enumerate(data.get("keys") or []):
            if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                continue
            alg = item.get("alg")
            if alg is None:
                # no alg on the key: the one its type implies, where that is unambiguous
                alg = {"OKP": "EdDSA"}.get(item.get("kty", ""))
                if alg is None and item.get("kty") == "EC":
                    alg = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(
                        item.get("crv", "")
                    )
                if alg is None and item.get("kty") == "RSA":
                    alg = "RS256"
            if alg not in ASYMMETRIC:
                continue
            try:
                key = jwt.PyJWK(item, algorithm=alg)
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
            keys[str(item.get("kid", f"#{index}"))] = key
        self._jwks = keys

    async def _verify(self, token: str, audience: str) -> dict[str, Any]:
        """Signature, algorithm, iss, aud, exp, iat of a token the provider signed."""
        if not token or len(token) > MAX_TOKEN:
            raise TokenRefused("malformed")
        metadata = await self.metadata()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("malformed") from None
        alg = header.get("alg")
        if alg not in metadata.algorithms:
            # `none`, an HMAC algorithm, or one the provider does not announce
            raise TokenRefused("algorithm")
        if {"jku", "jwk", "x5u", "x5c", "crit"} & set(header):
            raise TokenRefused("forbidden_header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("malformed")
        key = await self._key(kid, alg)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=self.config.issuer,
                leeway=LEEWAY,
                options={"require": ["iss", "aud", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("signature") from None
        except jwt.PyJWTError:
            raise TokenRefused("invalid") from None
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or iat < self.clock() - MAX_AGE - LEEWAY:
            raise TokenRefused("too_old")
        return claims

    # -- the code flow --------------------------------------------------------------------

    async def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        """Where the browser goes to sign in: code flow, PKCE S256, state and nonce."""
        metadata = await self.metadata()
        url, _ = self.http.create_authorization_url(
            metadata.authorization_endpoint, state=state, code_verifier=verifier, nonce=nonce
        )
        return url

    async def exchange(self, code: str, verifier: str, nonce: str) -> Grant:
        """The code (with its PKCE verifier) for tokens; the ID token verified, nonce included."""
        metadata = await self.metadata()
        token = await self._token_call(
            self.http.fetch_token(
                metadata.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
                redirect_uri=self.redirect_uri,
            )
        )
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise TokenRefused("no_id_token")
        claims = await self.verify_id_token(id_token, nonce)
        return await self._grant(token, id_token, claims)

    async def refresh(self, refresh_token: str, sub: str) -> Grant:
        """New tokens for a refresh token; TokenRefused("refused") when the provider says no
        (the user disabled there, the grant revoked)."""
        metadata = await self.metadata()
        token = await self._token_call(
            # scope=None sends none, so the grant keeps the scopes it has (RFC 6749 section 6);
            # Authlib would ask for every configured one, and a provider that granted fewer
            # (offline_access without prompt=consent) refuses that: invalid_scope
            self.http.refresh_token(
                metadata.token_endpoint, refresh_token=refresh_token, scope=None
            )
        )
        id_token = token.get("id_token")
        claims: dict[str, Any] = {"sub": sub}
        if isinstance(id_token, str):
            claims = await self.verify_id_token(id_token, None)
            if claims.get("sub") != sub:
                raise TokenRefused("sub_changed")
        else:
            id_token = ""
        grant = await self._grant(token, id_token, claims)
        if not grant.refresh_token:
            # a provider that does not rotate keeps the one it gave
            grant = Grant(
                grant.claims, grant.id_token, grant.access_token, grant.access_expires,
                refresh_token,
            )  # fmt: skip
        return grant

    async def _token_call(self, call: Any) -> dict[str, Any]:
        try:
            token = await self._within("token endpoint", call)
        except OAuthError as exc:
            # the provider's own refusal (invalid_grant: a used code, a disabled user)
            log.info("oidc %s: token endpoint refused: %s", self.name, exc.error)
            raise TokenRefused("refused") from None
        except httpx.HTTPStatusError as exc:
            raise ProviderUnavailable(
                f"oidc {self.name}: token endpoint answered {exc.response.status_code}"
            ) from None
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"oidc {self.name}: token endpoint: {exc.__class__.__name__}"
            ) from None
        except ValueError:
            raise ProviderUnavailable(
                f"oidc {self.name}: token endpoint answered no JSON"
            ) from None
        if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
            raise ProviderUnavailable(f"oidc {self.name}: token endpoint gave no access token")
        return dict(token)

    async def _grant(self, token: dict[str, Any], id_token: str, claims: dict[str, Any]) -> Grant:
        access = token["access_token"]
        expires_in = token.get("expires_in")
        expires = self.clock() + float(expires_in) if isinstance(expires_in, int | float) else 0.0
        refresh = token.get("refresh_token")
        wanted = [self.config.user_claim, self.config.roles_claim]
        if self.config.allowed_domains:
            wanted += ["email", "email_verified"]
        if any(c and c not in claims for c in wanted):
            # the claims are not (all) in the ID token: ask userinfo (Core 5.3)
            claims = {**claims, **await self.userinfo(access, claims["sub"])}
        return Grant(claims, id_token, access, expires, refresh if isinstance(refresh, str) else "")

    async def verify_id_token(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        """OpenID Connect Core 3.1.3.7: signature, iss, aud (azp with several), exp, iat, nonce."""
        claims = await self._verify(id_token, self.config.client_id)
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise TokenRefused("no_sub")
        if "exp" not in claims:
            raise TokenRefused("no_exp")
        audience = claims.get("aud")
        azp = claims.get("azp")
        if isinstance(audience, list) and len(audience) > 1 and azp is None:
            raise TokenRefused("azp")
        if azp is not None and azp != self.config.client_id:
            raise TokenRefused("azp")
        if nonce is not None:
            sent = claims.get("nonce")
            if not isinstance(sent, str) or not same_secret(sent, nonce):
                raise TokenRefused("nonce")
        return claims

    async def userinfo(self, access_token: str, sub: str) -> dict[str, Any]:
        """The userinfo endpoint's claims; its `sub` must be the ID token's (Core 5.3.4)."""
        metadata = await self.metadata()
        if not metadata.userinfo_endpoint:
            return {}
        try:
            response = await self._within(
                "userinfo",
                self.http.request(
                    "GET",
                    metadata.userinfo_endpoint,
                    headers={"authorization": f"Bearer {access_token}"},
                    withhold_token=True,
                ),
            )
        except httpx.HTTPError as exc:
            problem = exc.__class__.__name__
            raise ProviderUnavailable(f"oidc {self.name}: userinfo: {problem}") from None
        if response.status_code in (401, 403):
            raise TokenRefused("refused")
        if response.status_code != 200:
            raise ProviderUnavailable(f"oidc {self.name}: userinfo answered {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise ProviderUnavailable(f"oidc {self.name}: userinfo answered no JSON") from None
        if not isinstance(data, dict) or data.get("sub") != sub:
            raise TokenRefused("userinfo_sub")
        return data

    # -- logout ---------------------------------------------------------------------------

    async def end_session_url(self, id_token_hint: str, post_logout_redirect_uri: str) -> str:
        """RP-Initiated Logout: the provider's end_session_endpoint, or "" when it has none."""
        metadata = await self.metadata()
        if not metadata.end_session_endpoint:
            return ""
        query = {"client_id": self.config.client_id}
        if id_token_hint:
            query["id_token_hint"] = id_token_hint
        query["post_logout_redirect_uri"] = post_logout_redirect_uri
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return metadata.end_session_endpoint + separator + urlencode(query)

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """Back-Channel Logout 1.0 section 2.6: signature, iss, aud, iat, jti, events, no nonce,
        and a sub or a sid."""
        claims = await self._verify(token, self.config.client_id)
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise TokenRefused("events")
        if "nonce" in claims:
            raise TokenRefused("nonce")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise TokenRefused("jti")
        sub, sid = claims.get("sub"), claims.get("sid")
        if not (isinstance(sub, str) and sub) and not (isinstance(sid, str) and sid):
            raise TokenRefused("no_sub_or_sid")
        return claims
