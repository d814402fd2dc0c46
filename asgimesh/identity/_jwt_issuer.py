"""The control plane's JWT key: it signs ``mesh-identity`` tokens (JWT-SVIDs) for services.

One ECDSA P-256 key (ES256, the algorithm every JOSE library verifies), separate from the CA's
key: the CA key signs only certificates, and a JWT key can be rotated without re-issuing them.
Its public half is published as a JWKS (RFC 7517) with a ``kid`` that is the key's RFC 7638
thumbprint, so replicas sharing the key publish the same ``kid`` and a verifier that meets a
``kid`` it does not know knows to fetch the bundle again.

Sans-I/O: the clock is passed in; where the key is kept is the control plane's business.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._jwt import MAX_LIFETIME
from ._spiffe import is_spiffe_id, trust_domain_of

__all__ = ["JWTIssuer"]

#: The shortest token the control plane makes (seconds): shorter ones would expire in transit.
MIN_TOKEN_LIFETIME = 10.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class JWTIssuer:
    """Signs JWT-SVIDs for the IDs of one trust domain with one ES256 key."""

    algorithm = "ES256"

    def __init__(self, trust_domain: str, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("expected an ECDSA P-256 JWT signing key")
        self.trust_domain = trust_domain
        self._key = key
        numbers = key.public_key().public_numbers()
        self._public = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
        #: RFC 7638 thumbprint: SHA-256 of the required members, sorted, without whitespace.
        canonical = json.dumps(self._public, sort_keys=True, separators=(",", ":"))
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())

    @classmethod
    def create(cls, trust_domain: str) -> JWTIssuer:
        return cls(trust_domain, ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes | str) -> JWTIssuer:
        """The issuer of a PKCS#8 PEM key; ``ValueError`` naming what is wrong otherwise."""
        data = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(data, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("expected an ECDSA P-256 JWT signing key")
        return cls(trust_domain, key)

    def key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS, what ``GET /v1/jwt-bundle`` answers."""
        return {"keys": [{**self._public, "kid": self.kid, "use": "sig", "alg": self.algorithm}]}

    def sign(
        self, subject: str, audience: str, now: float, lifetime: float = MAX_LIFETIME
    ) -> tuple[str, int]:
        """``(token, exp)`` naming ``subject`` for the one ``audience``. ``ValueError`` if
        either is not a SPIFFE ID of this trust domain (the audience is the caller's input)."""
        for what, value in (("subject", subject), ("audience", audience)):
            if not is_spiffe_id(value) or trust_domain_of(value) != self.trust_domain:
                raise ValueError(
                    f"{what}: expected a SPIFFE ID in trust domain {self.trust_domain!r}"
                )
        lifetime = max(MIN_TOKEN_LIFETIME, min(lifetime, MAX_LIFETIME))
        expires = int(now + lifetime)
        token = jwt.encode(
            {"sub": subject, "aud": audience, "exp": expires, "iat": int(now)},
            self._key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": "JWT"},
        )
        return token, expires
