"""Signed policy versions: the record the control plane stores, what is signed, how, and how a
service checks it (sans-I/O). Shared by the control plane (which signs) and services (which
verify), so it lives with the policy rather than in either.

The signed bytes are a fixed prefix and the canonical JSON (sorted keys, no spaces, UTF-8) of
``{"policy": ..., "version": N}``: binding the version stops a replay of an old document as a
newer version, and the prefix keeps the signature from meaning anything outside this protocol.
The signature travels with the signer's certificate, which the mesh CA issued: a service checks
the certificate against its trust bundle, then the signature against the certificate's key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..identity import is_policy_signer, verify_issued_by

__all__ = [
    "PolicyRecord",
    "SignatureError",
    "canonical_bytes",
    "sign_policy",
    "verify_policy",
]

_DOMAIN = b"asgimesh-policy-v1\n"


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One stored, signed policy version."""

    version: int
    policy: dict[str, Any]
    signature: str
    signer: str
    created: float
    #: Why this version exists when not a plain PUT, e.g. ``"rollback to 3"``.
    note: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicyRecord:
        data = json.loads(text)
        return cls(
            version=int(data["version"]),
            policy=dict(data["policy"]),
            signature=str(data["signature"]),
            signer=str(data["signer"]),
            created=float(data["created"]),
            note=data.get("note"),
        )

    def envelope(self) -> dict[str, Any]:
        """What ``GET /v1/policy`` answers and what a service verifies."""
        return {
            "version": self.version,
            "policy": self.policy,
            "signature": self.signature,
            "signer": self.signer,
        }


class SignatureError(Exception):
    """A policy version that does not verify; the message says why (never a key)."""


def canonical_bytes(version: int, policy: Mapping[str, Any]) -> bytes:
    body = json.dumps(
        {"policy": policy, "version": version},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return _DOMAIN + body.encode("utf-8")


def sign_policy(key: ed25519.Ed25519PrivateKey, version: int, policy: Mapping[str, Any]) -> str:
    """The base64url signature of one version."""
    signature = key.sign(canonical_bytes(version, policy))
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def verify_policy(
    envelope: Mapping[str, Any],
    bundle: Sequence[x509.Certificate],
    *,
    trust_domain: str,
    trusted_signers: dict[bytes, ed25519.Ed25519PublicKey] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Check one ``{"version", "policy", "signature", "signer"}`` envelope against ``bundle``.

    The signer must be *the control plane's* signer (its SPIFFE ID and the ``contentCommitment``
    key usage only the CA's signer carries), not merely a certificate of the mesh CA: any
    workload can get one of those, and must not be able to sign policy for everyone.

    Returns ``(version, policy)``; raises :class:`SignatureError`. ``trusted_signers`` caches
    signer certificates already checked against the bundle, keyed by their PEM.
    """
    version = envelope.get("version")
    policy = envelope.get("policy")
    signature = envelope.get("signature")
    signer = envelope.get("signer")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SignatureError(f"expected a positive integer version, got {version!r}")
    if not isinstance(policy, dict):
        raise SignatureError("expected the policy as a JSON object")
    if not isinstance(signature, str) or not isinstance(signer, str):
        raise SignatureError(f"version {version} carries no signature or signer certificate")
    key = None if trusted_signers is None else trusted_signers.get(signer.encode())
    if key is None:
        try:
            certificate = x509.load_pem_x509_certificate(signer.encode())
        except ValueError:
            raise SignatureError(f"version {version}: the signer certificate is not PEM") from None
        if not verify_issued_by(certificate, bundle):
            raise SignatureError(
                f"version {version}: the signer certificate is not issued by the trust bundle"
            )
        if not is_policy_signer(certificate, trust_domain):
            raise SignatureError(
                f"version {version}: the signer certificate is not the control plane's policy "
                f"signer for {trust_domain!r} (a workload certificate cannot sign policy)"
            )
        public = certificate.public_key()
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise SignatureError(f"version {version}: the signer key is not Ed25519")
        key = public
        if trusted_signers is not None:
            trusted_signers[signer.encode()] = key
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        key.verify(raw, canonical_bytes(version, policy))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError(f"version {version}: the signature does not verify") from None
    return version, policy
