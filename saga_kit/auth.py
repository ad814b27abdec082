"""Who may call what: bearer tokens (authentication) and one table (authorization).

**Authentication.** Every HTTP endpoint but the public ones (``/health/*``, which give a
readiness check's reason to an operator's token only: ``saga_kit.http.health_router``; the
API docs, the dashboard's page, and ``/metrics`` when ``AUTH_METRICS_PUBLIC`` allows it) needs
``Authorization: Bearer <JWT>`` (RFC 6750). The token is verified with PyJWT against the
configured public keys — a JWKS file (``AUTH_JWKS_FILE``, re-read when it changes) or URL
(``AUTH_JWKS_URL``) that may hold several keys, picked by the token's ``kid`` (rotation:
publish the new key, sign with it, remove the old one once its tokens have expired). Only
asymmetric algorithms are accepted (``ALGORITHMS``); the signature, ``exp``, ``nbf``,
``iat``, ``iss`` (``AUTH_ISSUER``) and ``aud`` (``AUTH_AUDIENCE``) are checked, and ``sub``
and ``roles`` are required. Missing or bad token: 401 with ``reason`` ``missing_token`` or
``invalid_token``, the why in ``detail`` and a ``WWW-Authenticate`` header. Keys that
cannot be had just now (the key server does not answer) are ``KeysUnavailable``: 503 with
``Retry-After``, never a 401 for a token that may be valid.

A token verified once is taken again without its signature being checked (the EdDSA
verification and the claims cost ~0.4 ms of CPU per request here, most of a POST's
authentication): it is kept, by its exact text, until its ``exp`` (with the leeway) and
only while the very key object that verified it is still the one published under its
``kid`` — re-reading the JWKS file, or refetching the JWKS URL, makes new key objects, so
a rotation or a removal takes effect at once, as without the cache. At most
``VERIFIED_TOKENS`` are kept (least recently used go first; ``cachetools``).

**Authorization.** The token's ``roles`` claim (RFC 9068 §7.2) names ``customer`` or
``operator``; its ``sub`` is the customer's id. ``POLICY`` says, for every route of every
service, which ``Access`` it needs; ``create_app`` refuses to start with a route the table
does not list (fail closed). ``OWN`` routes are a customer's for its own resources only:
the route asks ``Principal.may_act_for(customer_id)`` and answers another customer's
resource as 404 (ids do not leak) — an operator may act for everyone.

**Development.** ``write_dev_issuer`` makes a signing key and its JWKS under the run
directory (``make run``, ``make demo`` and the tests), and ``mint`` makes tokens with it
(``sagactl token``). Without any JWKS a development service lets every request in as an
unauthenticated operator and says so in its log; ``SAGA_ENV=production`` refuses to start
without keys, on the development ones, or without an explicit issuer and audience.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import httpx
import jwt
from cachetools import TLRUCache
from jwt.algorithms import OKPAlgorithm

from events.values import printable
from saga_kit.errors import ConfigurationError, TransientError, setting_file
from saga_kit.signing import load_private_key, write_private_key

#: Asymmetric signatures only: a shared secret (HS256) or ``none`` is never accepted.
ALGORITHMS = frozenset({"EdDSA", "RS256", "PS256", "ES256"})
#: The issuer and audience of development tokens (``AUTH_ISSUER`` / ``AUTH_AUDIENCE``
#: unset); production must name its own.
DEV_ISSUER = "saga-dev-issuer"
DEV_AUDIENCE = "saga-shop"
#: Clock skew tolerated on ``exp``/``nbf``/``iat``, in seconds.
LEEWAY_SECONDS = 30
#: The longest ``sub`` taken, in characters (RFC 7519 §4.1.2 sets none; OpenID Connect
#: Core §2 caps its subject identifiers at 255 ASCII characters).
MAX_SUBJECT_LENGTH = 255
#: The latest NumericDate a token's ``exp``, ``iat`` or ``nbf`` may be: 9999-12-31T23:59:59Z.
#: A signed token with ``exp`` 10**309 was a 500 and a traceback in every service, and a
#: command carrying it a dead letter, not a refusal (an attack trial): no float holds it.
MAX_NUMERIC_DATE = 253_402_300_799
#: Verified tokens kept per process (module doc).
VERIFIED_TOKENS = 10_000
#: What a token's ``sub`` must be, in words.
SUBJECT_RULE = f"printable text of 1-{MAX_SUBJECT_LENGTH} characters"


def is_subject(subject: object) -> bool:
    """Is ``subject`` a ``sub`` this project's verifier takes (``SUBJECT_RULE``)?"""
    return isinstance(subject, str) and 0 < len(subject) <= MAX_SUBJECT_LENGTH and subject.isprintable()


def _in_pyjwt_words(exc: Exception) -> Unauthorized:
    """A token PyJWT refused, in PyJWT's own words (e.g. "Subject must be a string",
    "Unsupported critical extension: x"): they name what is wrong, never echo the token."""
    said = printable(str(exc), 200) or type(exc).__name__
    return Unauthorized("invalid_token", f"the token is not valid: {said}")


class Role(StrEnum):
    CUSTOMER = "customer"
    OPERATOR = "operator"


def roles_named(names: Iterable[str]) -> frozenset[Role]:
    """The roles a token's ``roles`` claim names; names of no role are left out."""
    return frozenset(Role(r) for r in names if r in Role.__members__.values())


class Access(Enum):
    """What a route needs."""

    #: no token (health probes, the API docs, the dashboard's page and its assets)
    PUBLIC = "public"
    #: any valid token (the product catalogue)
    ANY_ROLE = "any role"
    #: a customer for its own resources (the route checks which), an operator for all
    OWN = "own"
    #: the operator role
    OPERATOR = "operator"


#: Every route of every service: (method, path template) → what it needs. A route missing
#: here stops its service at start-up (``check_policy``). Tested for every role against
#: its own and another customer's resources (tests/e2e/test_authorization.py).
POLICY: Mapping[tuple[str, str], Access] = {
    # every service
    ("GET", "/health/live"): Access.PUBLIC,
    ("GET", "/health/ready"): Access.PUBLIC,
    ("GET", "/metrics"): Access.OPERATOR,  # PUBLIC with AUTH_METRICS_PUBLIC=true
    ("GET", "/dead-letters"): Access.OPERATOR,
    ("GET", "/dead-letters/{letter_id}"): Access.OPERATOR,
    ("GET", "/dead-letters/{letter_id}/value"): Access.OPERATOR,
    ("POST", "/dead-letters/{letter_id}/replay"): Access.OPERATOR,
    ("POST", "/dead-letters/{letter_id}/discard"): Access.OPERATOR,
    ("GET", "/consumer"): Access.OPERATOR,
    ("POST", "/consumer/resume"): Access.OPERATOR,
    ("GET", "/audit"): Access.OPERATOR,
    # order service
    ("POST", "/orders"): Access.OWN,
    ("GET", "/orders"): Access.OWN,
    ("GET", "/orders/{order_id}"): Access.OWN,
    ("GET", "/orders/{order_id}/saga"): Access.OWN,
    ("POST", "/orders/{order_id}/cancel"): Access.OWN,
    ("POST", "/customers/{customer_id}/forget"): Access.OPERATOR,
    ("GET", "/commands/{command_id}"): Access.OWN,
    ("GET", "/saga-events"): Access.OPERATOR,
    ("GET", "/saga-events/stream"): Access.OPERATOR,
    ("GET", "/dashboard"): Access.PUBLIC,
    ("GET", "/dashboard/static/{name}"): Access.PUBLIC,
    ("GET", "/dashboard/api/summary"): Access.OPERATOR,
    ("GET", "/dashboard/api/stock"): Access.OPERATOR,
    ("GET", "/dashboard/api/balances"): Access.OPERATOR,
    ("GET", "/dashboard/api/health"): Access.OPERATOR,
    ("GET", "/dashboard/api/throughput"): Access.OPERATOR,
    ("GET", "/dashboard/api/dead-letters/{service}"): Access.OPERATOR,
    ("GET", "/dashboard/api/dead-letters/{service}/{letter_id}"): Access.OPERATOR,
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/replay"): Access.OPERATOR,
    ("POST", "/dashboard/api/dead-letters/{service}/{letter_id}/discard"): Access.OPERATOR,
    # inventory service
    ("GET", "/products"): Access.ANY_ROLE,
    ("GET", "/products/{product_id}"): Access.ANY_ROLE,
    ("PUT", "/products/{product_id}"): Access.OPERATOR,
    # payment service
    ("GET", "/accounts"): Access.OPERATOR,
    ("GET", "/accounts/{customer_id}"): Access.OWN,
    ("PUT", "/accounts/{customer_id}"): Access.OPERATOR,
    ("GET", "/payments/{order_id}"): Access.OWN,
}

#: Documentation routes FastAPI adds itself: public, like the docs' assets.
DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


#: Public routes that read a token when one is sent (the readiness reasons are an
#: operator's): one that is not valid is a 401 there too.
TOKEN_OPTIONAL = frozenset({("GET", "/health/ready")})

#: What a failing or degraded readiness check says in place of its reason to a caller who
#: is not an operator (``saga_kit.http.health_router``): the reason may name internals (a
#: socket path, a host, a library's words).
WITHHELD = "reason shown to an operator only (Authorization: Bearer <operator token>)"


class PolicyError(Exception):
    """A route the authorization table does not list (the service does not start)."""


def access_of(method: str, path: str, *, metrics_public: bool = False) -> Access:
    """What the route ``method path`` (its template, e.g. ``/orders/{order_id}``) needs;
    ``PolicyError`` if ``POLICY`` does not list it."""
    if path in DOCS_PATHS:
        return Access.PUBLIC
    if path == "/metrics" and metrics_public:
        return Access.PUBLIC
    try:
        return POLICY[(method, path)]
    except KeyError:
        raise PolicyError(f"no access rule for {method} {path} in saga_kit.auth.POLICY") from None


def check_policy(routes: Iterable[tuple[str, str]]) -> None:
    """Raise ``PolicyError`` naming every (method, path) the table does not list."""
    missing = [f"{m} {p}" for m, p in routes if p not in DOCS_PATHS and (m, p) not in POLICY]
    if missing:
        raise PolicyError("no access rule in saga_kit.auth.POLICY for " + ", ".join(sorted(set(missing))))


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and roles."""

    subject: str
    roles: frozenset[Role]
    #: False when no JWKS is configured (development only): everyone is let in.
    authenticated: bool = True

    @property
    def operator(self) -> bool:
        return Role.OPERATOR in self.roles

    def may_act_for(self, customer_id: str) -> bool:
        """An operator acts for every customer; a customer for itself only."""
        return self.operator or (Role.CUSTOMER in self.roles and self.subject == customer_id)

    def allowed(self, access: Access) -> bool:
        if access is Access.PUBLIC:
            return True
        if access is Access.OPERATOR:
            return self.operator
        return self.operator or Role.CUSTOMER in self.roles


#: Everyone, when authentication is off (development without keys).
UNAUTHENTICATED = Principal("anonymous", frozenset({Role.OPERATOR}), authenticated=False)
#: A caller without a token on a public route, when authentication is on: no role.
ANONYMOUS = Principal("anonymous", frozenset(), authenticated=False)


class Unauthorized(Exception):
    """The request's token is missing or not valid: a 401 (``reason``, ``detail``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class AuthConfigurationError(ConfigurationError):
    """The authentication settings are missing or unfit for where the service runs."""


class _JwksFile:
    """A JWKS file, re-read when its modification time changes (rotation without a
    restart)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: float | None = None
        self._keys: dict[str, jwt.PyJWK] = {}

    def key(self, kid: str) -> jwt.PyJWK | None:
        stamp = os.stat(self.path).st_mtime
        if stamp != self._stamp:
            self._keys = _keys_of(json.loads(Path(self.path).read_text()))
            self._stamp = stamp
        return self._keys.get(kid)


def _jwks_document(path: str) -> dict[str, Any]:
    """The JSON object of the JWKS file ``AUTH_JWKS_FILE`` names; ``AuthConfigurationError``
    naming it when it cannot be read or is not JSON."""
    with setting_file("AUTH_JWKS_FILE", path, AuthConfigurationError):
        document = json.loads(Path(path).read_text())
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
    return document


def _keys_of(document: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document, by ``kid`` (PyJWT parses them); raises
    ``PyJWKSetError`` (or ``TypeError``/``ValueError`` for what is not a key set)."""
    keys = jwt.PyJWKSet.from_dict(dict(document)).keys
    return {k.key_id: k for k in keys if k.key_id and k.public_key_use in (None, "sig")}


#: The whole fetch of the key set from ``AUTH_JWKS_URL``, connection to last byte (seconds).
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
#: The key server's set is fetched again after this long (seconds) ...
JWKS_LIFESPAN_SECONDS = 300.0
#: ... and, for a token naming a key it does not have, at most this often: a token needs no
#: valid signature to name a key, so anyone could otherwise make each check fetch.
JWKS_REFRESH_COOLDOWN_SECONDS = 30.0
#: After a fetch that failed, none for this long; meanwhile the last set fetched answers.
JWKS_RETRY_SECONDS = 5.0
#: The last set fetched is used while the key server does not answer, for at most this long
#: after it was fetched; then ``KeysUnavailable``.
JWKS_STALE_MAX_SECONDS = 3600.0
#: A key set larger than this (bytes) is not read.
JWKS_MAX_BYTES = 1_000_000


class KeysUnavailable(TransientError):
    """The keys tokens are verified with cannot be had just now: the key server
    (``AUTH_JWKS_URL``) did not answer within ``JWKS_FETCH_TIMEOUT_SECONDS``, or answered
    something that is not a key set with a usable key, and no key set fetched before can
    answer; or the key file (``AUTH_JWKS_FILE``) cannot be read. Nothing is known of the
    token, so it is neither taken nor refused: HTTP answers 503 with ``Retry-After``; a
    command consumed from Kafka is dead-lettered after a short wait, to be replayed
    (``order_svc.handlers.authenticate``). It was a 401 ``invalid_token``, and a command
    refused for good, whenever the key server blinked (a review found it)."""


class _JwksUrl:
    """The key set a key server publishes (``AUTH_JWKS_URL``), fetched with httpx and
    parsed by PyJWT. Unlike PyJWT's own ``PyJWKClient`` (urllib, in a thread): the whole
    fetch is bounded in time (a server sending a byte every 3 s held a check 60 s) and in
    size; one fetch at a time, and none for ``JWKS_RETRY_SECONDS`` after one failed (a
    flood of tokens naming unknown keys queued every check behind 5 s fetches); a token
    naming an unknown key refetches at most every ``JWKS_REFRESH_COOLDOWN_SECONDS``; and
    while the server does not answer, the keys fetched last still verify (an attack
    trial's findings). A rotation takes effect at the next fetch."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._failed_at = -float("inf")
        self._failure = ""
        self._fetching = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid`` (None: the key set has none of that id); ``KeysUnavailable``."""
        now = time.monotonic()
        age = now - self._fetched_at
        if kid in self._keys and age < JWKS_LIFESPAN_SECONDS:
            return self._keys[kid]
        if age < JWKS_REFRESH_COOLDOWN_SECONDS:
            return None  # fetched a moment ago, and it has no such key
        if now - self._failed_at < JWKS_RETRY_SECONDS:
            return self._stale(kid, now)
        async with self._fetching:
            if self._fetched_at <= now and self._failed_at <= now:  # not done while this one waited
                try:
                    self._keys = await self._fetch()
                    self._fetched_at = time.monotonic()
                except KeysUnavailable as exc:
                    self._failed_at, self._failure = time.monotonic(), str(exc)
        if self._failed_at > self._fetched_at:  # the last try failed
            return self._stale(kid, now)
        return self._keys.get(kid)

    def _stale(self, kid: str, now: float) -> jwt.PyJWK:
        if kid in self._keys and now - self._fetched_at < JWKS_STALE_MAX_SECONDS:
            return self._keys[kid]
        raise KeysUnavailable(self._failure)

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        body = bytearray()
        try:
            async with (
                asyncio.timeout(JWKS_FETCH_TIMEOUT_SECONDS),
                httpx.AsyncClient() as client,
                client.stream("GET", self.url) as response,
            ):
                if response.status_code != 200:
                    raise KeysUnavailable(f"the key server answered {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise KeysUnavailable(f"the key server's answer is over {JWKS_MAX_BYTES} bytes")
            keys = _keys_of(json.loads(body))
        except TimeoutError:
            raise KeysUnavailable(
                f"the key server did not answer within {JWKS_FETCH_TIMEOUT_SECONDS:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"the key server did not answer ({type(exc).__name__})") from None
        except (ValueError, TypeError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
            raise KeysUnavailable(
                f"the key server's answer is not a key set ({type(exc).__name__})"
            ) from None
        if not keys:
            raise KeysUnavailable("the key server published no signing key with a kid")
        return keys


#: HTTP's optional whitespace (RFC 9110 §5.6.3): space and horizontal tab, nothing else
#: (``str.strip()`` would take a no-break space too, which HTTP does not).
OWS = " \t"


def credentials(given: Sequence[str]) -> list[str]:
    """The values of ``Authorization`` headers ``given`` that say something: an empty one, or
    one of optional whitespace only, carries no credentials and is dropped (two empty headers
    are no token, not two tokens; one empty beside a token is that token)."""
    return [value for value in given if value.strip(OWS)]


@dataclass(frozen=True)
class _Verified:
    """A token that passed: who it names, the key object that verified it, its ``exp``."""

    principal: Principal
    kid: str
    key: jwt.PyJWK
    expires: float


class TokenVerifier:
    """Verifies bearer tokens against a JWKS file or URL (module doc)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_file: str | None = None,
        jwks_url: str | None = None,
    ) -> None:
        if bool(jwks_file) == bool(jwks_url):
            raise AuthConfigurationError("set one of AUTH_JWKS_FILE and AUTH_JWKS_URL")
        self.issuer, self.audience = issuer, audience
        self._file = _JwksFile(jwks_file) if jwks_file else None
        self._url = _JwksUrl(jwks_url) if jwks_url else None
        self._verified: TLRUCache[str, _Verified] = TLRUCache(
            VERIFIED_TOKENS,
            ttu=lambda _token, verified, _now: verified.expires + LEEWAY_SECONDS,
            timer=time.time,
        )

    async def principal_of(self, given: Sequence[str]) -> Principal:
        """The caller named by every value ``given`` of an ``Authorization`` header (an HTTP
        request's, or a command record's ``authorization``): one set of credentials (RFC
        9110 §11.6.2), so two or more are an invalid token whichever comes first; an empty
        value is none (``credentials``); then as ``principal``."""
        given = credentials(given)
        if len(given) > 1:
            raise Unauthorized("invalid_token", f"{len(given)} Authorization headers: send one")
        return await self.principal(given[0] if given else None)

    async def principal(self, authorization: str | None) -> Principal:
        """The caller named by an ``Authorization`` header value; ``Unauthorized`` if it is
        missing, not a bearer token, or not valid; ``KeysUnavailable`` if the keys to tell
        cannot be had just now."""
        if not authorization or not authorization.strip(OWS):
            raise Unauthorized("missing_token", "this endpoint needs an Authorization: Bearer token")
        scheme, _, token = authorization.strip(OWS).partition(" ")
        token = token.strip(OWS)
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("invalid_token", "the Authorization header is not 'Bearer <token>'")
        known = self._verified.get(token)
        if known is not None and await self._key(known.kid) is known.key:
            return known.principal
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise Unauthorized("invalid_token", "the token is not a JWT") from None
        except jwt.PyJWTError as exc:  # a JWT, refused for its header (a critical extension)
            raise _in_pyjwt_words(exc) from None
        if not isinstance(kid, str):
            raise Unauthorized("invalid_token", "the token names no key (kid)")
        key = await self._key(kid)
        if key is None:
            raise Unauthorized("invalid_token", "the token is signed with a key this service does not trust")
        if key.algorithm_name not in ALGORITHMS:
            raise Unauthorized("invalid_token", f"the key's algorithm {key.algorithm_name} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("invalid_token", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("invalid_token", "the token is not valid yet (nbf/iat)") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("invalid_token", "the token's issuer is not trusted here") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("invalid_token", "the token is not meant for this audience") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "invalid_token", "the token's signature does not match (forged or tampered)"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized("invalid_token", f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise _in_pyjwt_words(exc) from None
        for claim in ("exp", "iat", "nbf"):  # PyJWT reads "exp": "1999999999" as a number
            value = claims.get(claim)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise Unauthorized(
                    "invalid_token", f"the token's {claim} claim is not a number (RFC 7519 §2: NumericDate)"
                )
            if value is not None and abs(value) > MAX_NUMERIC_DATE:  # no float holds 10**309
                raise Unauthorized(
                    "invalid_token", f"the token's {claim} claim is out of range (beyond the year 9999)"
                )
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("invalid_token", "the token's roles claim is not a list of role names")
        named = roles_named(roles)
        if not named:
            raise Unauthorized("invalid_token", "the token names no known role (customer or operator)")
        subject = claims["sub"]
        if not is_subject(subject):
            raise Unauthorized("invalid_token", f"the token's sub claim is not {SUBJECT_RULE}")
        principal = Principal(subject, named)
        self._verified[token] = _Verified(principal, kid, key, float(claims["exp"]))
        return principal

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        """The published key ``kid``, or None if the key set, read, has none of that id;
        ``KeysUnavailable`` if the key set cannot be had."""
        if self._file is not None:
            try:
                return self._file.key(kid)
            except (OSError, ValueError, TypeError, jwt.PyJWKError, jwt.PyJWKSetError) as exc:
                raise KeysUnavailable(f"the key file cannot be read ({type(exc).__name__})") from None
        assert self._url is not None
        return await self._url.key(kid)


def load_verifier(
    jwks_file: str | None,
    jwks_url: str | None,
    issuer: str | None,
    audience: str | None,
    *,
    production: bool,
) -> TokenVerifier | None:
    """The service's token verifier from its settings; None (authentication off) in
    development without keys. In production (``SAGA_ENV=production``) keys, issuer and
    audience are required and the development JWKS is refused: ``AuthConfigurationError``
    names what is wrong, and the service does not start."""
    if production:
        missing = [
            name
            for name, value in (
                ("AUTH_JWKS_FILE or AUTH_JWKS_URL", jwks_file or jwks_url),
                ("AUTH_ISSUER", issuer),
                ("AUTH_AUDIENCE", audience),
            )
            if not value
        ]
        if missing:
            raise AuthConfigurationError(f"SAGA_ENV=production needs {', '.join(missing)}")
    if not (jwks_file or jwks_url):
        return None
    if jwks_file:
        document = _jwks_document(jwks_file)  # read once, for both checks
        if production and document.get("development"):
            raise AuthConfigurationError(
                f"SAGA_ENV=production refuses the development JWKS {jwks_file}"
                " (made by make run / make demo / the tests)"
            )
        with setting_file("AUTH_JWKS_FILE", jwks_file, AuthConfigurationError, also=(jwt.PyJWTError,)):
            _keys_of(document)  # unreadable keys stop the start, not a request
    return TokenVerifier(
        issuer or DEV_ISSUER, audience or DEV_AUDIENCE, jwks_file=jwks_file, jwks_url=jwks_url
    )


# -- development issuer -----------------------------------------------------------------


@dataclass(frozen=True)
class DevIssuer:
    """The development token issuer ``write_dev_issuer`` made: its files."""

    directory: Path

    @property
    def jwks_file(self) -> Path:
        return self.directory / "jwks.json"

    def mint(
        self,
        subject: str,
        roles: Iterable[Role | str],
        *,
        ttl_seconds: float = 12 * 3600,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        not_before: float | None = None,
    ) -> str:
        """A signed JWT (EdDSA) for ``subject`` with ``roles``, valid ``ttl_seconds`` from
        now (``exp``), and from ``not_before`` (a Unix time) when given."""
        key = load_private_key(self.directory / "issuer.pem")
        kid = (self.directory / "issuer.kid").read_text().strip()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "roles": [str(r) for r in roles],
            "iat": now,
            "exp": now + int(ttl_seconds),
            "jti": secrets.token_hex(8),
        }
        if not_before is not None:
            claims["nbf"] = int(not_before)
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def write_dev_issuer(directory: Path) -> DevIssuer:
    """A development token issuer under ``directory``: an Ed25519 key (``issuer.pem``,
    readable by the owner only), its key id (``issuer.kid``) and the JWKS listing its
    public key (``jwks.json``, marked ``development``: production refuses it). Existing
    keys are kept; keys listed in ``extra.jwks.json`` there are published too (rotation)."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "issuer.pem"
    write_private_key(pem)
    kid_file = directory / "issuer.kid"
    if not kid_file.exists():
        kid_file.write_text(f"dev-{secrets.token_hex(4)}")
    issuer = DevIssuer(directory)
    keys = [public_jwk(pem, kid_file.read_text().strip())]
    extra = directory / "extra.jwks.json"
    if extra.exists():
        keys += json.loads(extra.read_text())["keys"]
    jwks = {"development": True, "keys": keys}
    # written aside, then moved into place: a service re-reading it never sees half a file
    staged = issuer.jwks_file.with_suffix(".json.tmp")
    staged.write_text(json.dumps(jwks, indent=2) + "\n")
    staged.replace(issuer.jwks_file)
    return issuer


def public_jwk(private_pem: Path, kid: str) -> dict[str, Any]:
    """The public JWK (RFC 8037: ``kty`` OKP, ``crv`` Ed25519) of an Ed25519 private key
    file, with its ``kid``."""
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(load_private_key(private_pem).public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}
