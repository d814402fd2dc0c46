"""``mesh-identity`` tokens: JWT-SVIDs, where TLS ends before the app (contract, section 8).

A JWT-SVID (JWS compact) names the caller in ``sub`` and the one callee it is for in ``aud``,
and lives at most five minutes. Two signers:

* the control plane's JWT key (``POST /v1/jwt-svids`` with the service token; its keys are a
  JWKS at ``GET /v1/jwt-bundle``), where there is a control plane;
* the caller's own X.509-SVID key, with its chain in the ``x5c`` header, verified against the
  X.509 trust bundle and required to name ``sub`` in its URI SAN (file identities).

Neither side pays per request: a caller keeps one token per audience and makes the next at half
its life (:class:`TokenMinter`); a callee remembers each token it verified until it expires
(:class:`JWTVerifier`). PyJWT does the JOSE work; the rules of the contract are checked around
it: algorithms ES256/ES384/RS256/PS256 only (never ``none`` or HS*), exactly one audience equal
to this service's ID, ``exp`` at most five minutes ahead, 30 s of clock skew.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._backoff import full_jitter
from .._log import describe_error, get_logger
from ._spiffe import is_spiffe_id, trust_domain_of, uri_sans
from ._store import IdentityStore
from ._svid import verify_chain

__all__ = [
    "ALGORITHMS",
    "MAX_LIFETIME",
    "JWKSCache",
    "JWTVerifier",
    "TokenMinter",
    "parse_jwks",
    "sign_with_svid",
]

ALGORITHMS = ("ES256", "ES384", "RS256", "PS256")
#: The longest life a token may claim (seconds from now to ``exp``).
MAX_LIFETIME = 300.0
SKEW = 30.0
#: The largest token read; anything longer is refused unread.
MAX_TOKEN = 8 * 1024
#: At most this many verified tokens are remembered (then the memory starts afresh).
MAX_CACHED = 4096
#: The most keys a JWKS may hold (the control plane publishes one; a rotation, two).
MAX_JWKS_KEYS = 16
#: A token signed with a ``kid`` not in the bundle makes the bundle be fetched again, at most
#: this often (seconds): a flood of forged ``kid`` values costs the control plane nothing.
JWKS_REFRESH = 5.0

log = get_logger("asgimesh.identity")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_with_svid(store: IdentityStore, audience: str, now: float, lifetime: float) -> str:
    """A token for ``audience`` signed by this process's own X.509-SVID key, chain in ``x5c``."""
    svid = store.current
    if svid is None:
        raise LookupError("no identity yet")
    key = svid.key
    algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "PS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        algorithm = "ES384"
    from cryptography.hazmat.primitives import serialization

    chain = [_b64(c.public_bytes(serialization.Encoding.DER)) for c in svid.chain]
    expires = min(now + lifetime, svid.expires_at.timestamp())
    return jwt.encode(
        {"sub": svid.spiffe_id, "aud": audience, "exp": int(expires), "iat": int(now)},
        key,
        algorithm=algorithm,
        headers={"x5c": chain, "typ": "JWT"},
    )


def parse_jwks(data: bytes) -> dict[str, Any]:
    """``{kid: public key}`` of a JWKS (RFC 7517): EC and RSA signature keys with a ``kid`` and
    an allowed algorithm; others are skipped. ``ValueError`` when it is no JWKS at all."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError("expected a JSON JWKS") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"expected a JWKS: an object whose 'keys' lists 0 to {MAX_JWKS_KEYS} keys")
    keys: dict[str, Any] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "ES256") not in ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            keys[entry["kid"]] = key
    return keys


class JWKSCache:
    """The control plane's JWT keys, as a verifier needs them: read without waiting, fetched
    again (in a thread, never on the event loop) when a token names a key not yet known."""

    def __init__(
        self,
        fetch: Callable[[], bytes],
        *,
        source: str = "the control plane",
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = JWKS_REFRESH,
    ) -> None:
        self._fetch = fetch
        self._source = source
        self._clock = clock
        self._min_interval = min_interval
        self._keys: dict[str, Any] = {}
        self._fetched_at = -math.inf
        self._busy = threading.Lock()

    def keys(self) -> Mapping[str, Any]:
        return self._keys

    def refresh(self) -> bool:
        """Fetch the bundle now (blocking); on failure keep the keys there are and say why."""
        self._fetched_at = self._clock()
        try:
            keys = parse_jwks(self._fetch())
        except Exception as exc:  # any failure keeps the last good keys
            kind, message = describe_error(exc)
            log.warning(
                "jwt_bundle_fetch_failed", source=self._source, error_type=kind, message=message
            )
            return False
        self._keys = keys
        return True

    def stale(self) -> None:
        """A token named an unknown ``kid``: start one refresh unless one ran lately."""
        if self._clock() - self._fetched_at < self._min_interval:
            return
        if not self._busy.acquire(blocking=False):
            return
        self._fetched_at = self._clock()

        def run() -> None:
            try:
                self.refresh()
            finally:
                self._busy.release()

        threading.Thread(target=run, name="asgimesh-jwt-bundle", daemon=True).start()


class TokenMinter:
    """The caller's side: one token per audience, made again at half its life.

    ``fetch(audience)`` gets a token from the control plane (blocking I/O: the transports call
    it off the event loop, and only when the cache has none; one fetch at a time, so a burst
    of first calls makes one request); without it tokens are signed with the process's own
    X.509-SVID key. A fetch that fails (``LookupError``) is not tried again for that audience
    before a full-jitter backoff (1 s doubling up to a minute): a control plane that is down
    is not asked once per call.
    """

    def __init__(
        self,
        store: IdentityStore,
        *,
        fetch: Callable[[str], str] | None = None,
        lifetime: float = MAX_LIFETIME,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._fetch = fetch
        self.lifetime = lifetime
        self._clock = clock
        self._rand = rand
        #: audience -> (token, the header value, when to make the next one)
        self._tokens: dict[str, tuple[str, bytes, float]] = {}
        #: audience -> (failures in a row, not before)
        self._failures: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._making = threading.Lock()

    @property
    def needs_io(self) -> bool:
        """Whether making a token may block (it comes from the control plane)."""
        return self._fetch is not None

    def cached(self, audience: str) -> bytes | None:
        """The ``mesh-identity`` header value for ``audience`` if fresh enough, without work."""
        entry = self._tokens.get(audience)
        if entry is not None and self._clock() < entry[2]:
            return entry[1]
        return None

    def token_for(self, audience: str) -> bytes | None:
        """The header value for ``audience``: cached, or made now (``None`` without an identity
        yet, or while a failed fetch backs off). May block on the control plane where
        :attr:`needs_io`."""
        token = self.cached(audience)
        if token is not None:
            return token
        with self._making:
            token = self.cached(audience)  # made by another thread while this one waited
            if token is not None:
                return token
            return self._make(audience)

    def _make(self, audience: str) -> bytes | None:
        now = self._clock()
        failures, not_before = self._failures.get(audience, (0, 0.0))
        if now < not_before:
            return None
        try:
            if self._fetch is not None:
                token = self._fetch(audience)
            else:
                token = sign_with_svid(self._store, audience, now, self.lifetime)
        except LookupError as exc:
            if self._fetch is not None:
                failures += 1
                delay = full_jitter(failures, 1.0, 60.0, self._rand)
                self._failures[audience] = (failures, now + delay)
                log.warning(
                    "mesh_identity_token_failed", message=str(exc), retry_in_s=round(delay, 3)
                )
            return None
        self._failures.pop(audience, None)
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
            expires = float(claims["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            expires = now + self.lifetime
        header = token.encode("ascii", "replace")
        with self._lock:
            if len(self._tokens) >= MAX_CACHED:
                self._tokens = {}
            self._tokens[audience] = (token, header, now + (expires - now) / 2)
        return header


class JWTVerifier:
    """The callee's side: checks ``mesh-identity`` tokens for this service's ID, remembering
    each verified token until it expires (so a caller's next requests cost a lookup).

    ``bundle`` gives the X.509 trust bundle (for ``x5c`` tokens); ``jwks`` the control plane's
    JWT keys by ``kid`` (``None`` where there is no control plane).
    """

    def __init__(
        self,
        audience: str,
        bundle: Callable[[], tuple[x509.Certificate, ...] | None],
        *,
        jwks: Callable[[], Mapping[str, Any]] | None = None,
        on_unknown_key: Callable[[], None] | None = None,
    ) -> None:
        self.audience = audience
        self.trust_domain = trust_domain_of(audience)
        self._bundle = bundle
        self._jwks = jwks
        self._on_unknown_key = on_unknown_key
        self._cache: dict[str, tuple[str, float]] = {}

    def verify(self, token: str, now: float) -> tuple[str | None, str | None]:
        """``(caller's SPIFFE ID, None)`` for a valid token, else ``(None, "invalid_token")``."""
        entry = self._cache.get(token)
        if entry is not None:
            if now < entry[1] + SKEW:
                return entry[0], None
            del self._cache[token]
        caller, expires = self._verify(token, now)
        if caller is None:
            return None, "invalid_token"
        if len(self._cache) >= MAX_CACHED:
            self._cache = {}
        self._cache[token] = (caller, expires)
        return caller, None

    def _verify(self, token: str, now: float) -> tuple[str | None, float]:
        if len(token) > MAX_TOKEN or token.count(".") != 2:
            return None, 0.0
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None, 0.0
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            return None, 0.0  # never "none", never HMAC: a public key is no shared secret
        key, x5c_id = self._key(header)
        if key is None:
            return None, 0.0
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                # Times are checked below against ``now``, the caller's clock, not PyJWT's.
                options={
                    "require": ["exp", "sub", "aud"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None, 0.0
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) != 1:
            return None, 0.0  # exactly one audience: a token for several callees is refused
        subject, expires = claims["sub"], claims["exp"]
        if not isinstance(subject, str) or not is_spiffe_id(subject):
            return None, 0.0
        if trust_domain_of(subject) != self.trust_domain:
            return None, 0.0
        if not isinstance(expires, int | float) or expires + SKEW <= now:
            return None, 0.0  # expired
        if expires > now + MAX_LIFETIME + SKEW:
            return None, 0.0  # a long-lived token is refused, whoever signed it
        not_before = claims.get("nbf", claims.get("iat"))
        if isinstance(not_before, int | float) and not_before > now + SKEW:
            return None, 0.0  # not valid yet
        if x5c_id is not None and x5c_id != subject:
            return None, 0.0  # an x5c token speaks only for the certificate's own ID
        return subject, float(expires)

    def _key(self, header: Mapping[str, Any]) -> tuple[Any, str | None]:
        chain = header.get("x5c")
        if chain is not None:
            return self._x5c_key(chain)
        kid = header.get("kid")
        if not isinstance(kid, str) or self._jwks is None:
            return None, None
        key = self._jwks().get(kid)
        if key is None and self._on_unknown_key is not None:
            self._on_unknown_key()  # the control plane may have a new key: look again soon
        return key, None

    def _x5c_key(self, chain: Any) -> tuple[Any, str | None]:
        if not isinstance(chain, list) or not 1 <= len(chain) <= 8:
            return None, None
        try:
            certificates = [
                x509.load_der_x509_certificate(base64.b64decode(item, validate=True))
                for item in chain
            ]
        except (ValueError, TypeError, binascii.Error):
            return None, None
        bundle = self._bundle()
        if not bundle:
            return None, None
        moment = datetime.datetime.now(datetime.UTC)
        if verify_chain(certificates, bundle, moment) is not None:
            return None, None
        ids = uri_sans(certificates[0])
        if len(ids) != 1:
            return None, None
        key = certificates[0].public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            return None, None
        return key, ids[0]
