"""Signed policy versions: the record the control plane stores, what is signed, how, and how a
service checks it (sans-I/O). Shared by the control plane (which signs) and services (which
verify), so it lives with the policy rather than in either.

Each version carries two signatures by the control plane's key, over a fixed prefix and the
canonical JSON (sorted keys, no spaces, UTF-8) of:

- ``signature_v2``: ``{"policy": ..., "signed_at": T, "version": N}``, ``T`` the signing time
  (whole seconds since the epoch). This is the one services of this release check: binding the
  version stops a replay of an old document as a newer version, and binding the signing time
  lets a service refuse an old envelope replayed as if it were current (:func:`check_freshness`).
- ``signature``: ``{"policy": ..., "version": N}``, the first scheme, kept so that services of
  earlier releases keep verifying during a rolling upgrade. It says nothing about when.

The two prefixes differ, so neither signature can stand for the other. The control plane
re-signs its current version periodically (same version and document, a new ``signed_at``),
so a current envelope is always recent even when no one has changed the policy for months.
The signatures travel with the signer's certificate, which the mesh CA issued: a service checks
the certificate against its trust bundle, then the signature against the certificate's key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..identity import is_policy_signer, verify_issued_by

__all__ = [
    "CLOCK_SKEW",
    "PolicyRecord",
    "SignatureError",
    "StaleEnvelopeError",
    "VerifiedPolicy",
    "canonical_bytes",
    "check_freshness",
    "sign_policy",
    "sign_record",
    "timed_bytes",
    "verify_envelope",
    "verify_policy",
]

_DOMAIN = b"asgimesh-policy-v1\n"
_DOMAIN_V2 = b"asgimesh-policy-v2\n"
#: Signing times past this (year 287,000 or so) are refused unread: a float holds them exactly.
_MAX_SIGNED_AT = 2**53
#: How far in the future a signing time may be (the control plane's clock ahead of ours).
CLOCK_SKEW = 300.0


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
    #: When the control plane last signed this version (whole epoch seconds), and that
    #: signature; ``None`` in records stored by control planes of earlier releases.
    signed_at: int | None = None
    signature_v2: str | None = None

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
            signed_at=None if data.get("signed_at") is None else int(data["signed_at"]),
            signature_v2=data.get("signature_v2"),
        )

    def envelope(self) -> dict[str, Any]:
        """What ``GET /v1/policy`` answers and what a service verifies."""
        envelope: dict[str, Any] = {
            "version": self.version,
            "policy": self.policy,
            "signature": self.signature,
            "signer": self.signer,
        }
        if self.signature_v2 is not None:
            envelope["signed_at"] = self.signed_at
            envelope["signature_v2"] = self.signature_v2
        return envelope


@dataclass(frozen=True, slots=True)
class VerifiedPolicy:
    """What a verified envelope says: its version, document and signing time (``None``: an
    envelope of an earlier control plane, which carries none)."""

    version: int
    policy: dict[str, Any]
    signed_at: int | None


class SignatureError(Exception):
    """A policy version that does not verify; the message says why (never a key)."""


class StaleEnvelopeError(SignatureError):
    """A genuine envelope refused for its signing time: too old (a replay, or a control plane
    that stopped re-signing), too far in the future, or missing where one is required."""


def _canonical(domain: bytes, fields: Mapping[str, Any]) -> bytes:
    body = json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return domain + body.encode("utf-8")


def canonical_bytes(version: int, policy: Mapping[str, Any]) -> bytes:
    """The bytes of the first scheme (``signature``): version and document, no time."""
    return _canonical(_DOMAIN, {"policy": policy, "version": version})


def timed_bytes(version: int, policy: Mapping[str, Any], signed_at: int) -> bytes:
    """The bytes of ``signature_v2``: version, document and signing time."""
    return _canonical(_DOMAIN_V2, {"policy": policy, "signed_at": signed_at, "version": version})


def _b64(signature: bytes) -> str:
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def sign_policy(key: ed25519.Ed25519PrivateKey, version: int, policy: Mapping[str, Any]) -> str:
    """The base64url signature of one version in the first scheme (no signing time)."""
    return _b64(key.sign(canonical_bytes(version, policy)))


def sign_record(
    key: ed25519.Ed25519PrivateKey, record: PolicyRecord, signed_at: float
) -> PolicyRecord:
    """``record`` signed (again) at ``signed_at``: same version and document, both signatures
    fresh. What the control plane stores for a new version and serves when it re-signs."""
    at = int(signed_at)
    return replace(
        record,
        signature=sign_policy(key, record.version, record.policy),
        signed_at=at,
        signature_v2=_b64(key.sign(timed_bytes(record.version, record.policy, at))),
    )


def verify_policy(
    envelope: Mapping[str, Any],
    bundle: Sequence[x509.Certificate],
    *,
    trust_domain: str,
    trusted_signers: dict[bytes, ed25519.Ed25519PublicKey] | None = None,
) -> tuple[int, dict[str, Any]]:
    """:func:`verify_envelope`, as ``(version, policy)``: the signature only, not its age."""
    verified = verify_envelope(
        envelope, bundle, trust_domain=trust_domain, trusted_signers=trusted_signers
    )
    return verified.version, verified.policy


def verify_envelope(
    envelope: Mapping[str, Any],
    bundle: Sequence[x509.Certificate],
    *,
    trust_domain: str,
    trusted_signers: dict[bytes, ed25519.Ed25519PublicKey] | None = None,
) -> VerifiedPolicy:
    """Check one envelope (``version``, ``policy``, ``signer`` and ``signed_at`` with
    ``signature_v2``, or only ``signature`` from an earlier control plane) against ``bundle``.

    The signer must be *the control plane's* signer (its SPIFFE ID and the ``contentCommitment``
    key usage only the CA's signer carries), not merely a certificate of the mesh CA: any
    workload can get one of those, and must not be able to sign policy for everyone.

    With ``signature_v2`` present only it is checked (it covers everything the first one does,
    and the time); without it the first scheme is, and ``signed_at`` is ``None``: whether such
    an envelope may be used is :func:`check_freshness`'s call. Raises :class:`SignatureError`.
    ``trusted_signers`` caches signer certificates already checked against the bundle, keyed
    by their PEM.
    """
    version = envelope.get("version")
    policy = envelope.get("policy")
    signer = envelope.get("signer")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SignatureError(f"expected a positive integer version, got {_show(version)}")
    if not isinstance(policy, dict):
        raise SignatureError("expected the policy as a JSON object")
    signed_at: int | None = None
    if envelope.get("signature_v2") is not None:
        signature = envelope.get("signature_v2")
        signed_at = envelope.get("signed_at")
        if (
            not isinstance(signed_at, int)
            or isinstance(signed_at, bool)
            or not 0 <= signed_at < _MAX_SIGNED_AT
        ):
            raise SignatureError(
                f"version {version}: expected signed_at as whole seconds since the epoch, "
                f"got {_show(signed_at)}"
            )
    else:
        signature = envelope.get("signature")
    if not isinstance(signature, str) or not isinstance(signer, str):
        raise SignatureError(f"version {version} carries no signature or signer certificate")
    key = _signer_key(version, signer, bundle, trust_domain, trusted_signers)
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        if signed_at is None:
            key.verify(raw, canonical_bytes(version, policy))
        else:
            key.verify(raw, timed_bytes(version, policy, signed_at))
    except (InvalidSignature, binascii.Error, ValueError, TypeError, RecursionError):
        raise SignatureError(f"version {version}: the signature does not verify") from None
    return VerifiedPolicy(version, policy, signed_at)


def _signer_key(
    version: int,
    signer: str,
    bundle: Sequence[x509.Certificate],
    trust_domain: str,
    trusted_signers: dict[bytes, ed25519.Ed25519PublicKey] | None,
) -> ed25519.Ed25519PublicKey:
    key = None if trusted_signers is None else trusted_signers.get(signer.encode())
    if key is not None:
        return key
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
    if trusted_signers is not None:
        trusted_signers[signer.encode()] = public
    return public


def check_freshness(
    version: int,
    signed_at: int | None,
    *,
    now: float,
    max_age: float | None,
    skew: float = CLOCK_SKEW,
) -> None:
    """Refuse a verified envelope whose signing time makes it unusable now.

    ``max_age`` (seconds; ``None``: no limit, every envelope passes) bounds how old a signing
    time may be: the control plane re-signs its current version far more often, so an older
    one is a replay of a superseded version (or comes from a control plane that stopped
    re-signing). A signing time more than ``skew`` seconds ahead of ``now`` is refused too: it
    would stay "fresh" long past the limit. An envelope without a signing time (an earlier
    control plane) is refused while a limit is set: accepting it would let any envelope captured
    before the upgrade be replayed forever. Raises :class:`StaleEnvelopeError`, whose message
    names the version, the signing time, its age and the limit.
    """
    if max_age is None:
        return
    limit = _span(max_age)
    if signed_at is None:
        raise StaleEnvelopeError(
            f"version {version} carries no signing time (a control plane of an earlier "
            f"release); with a policy max age of {limit} only signed-at envelopes are used: "
            "upgrade the control plane, or set MESH_POLICY_MAX_AGE=0 to accept it"
        )
    age = now - signed_at
    when = _timestamp(signed_at)
    if age < -skew:
        raise StaleEnvelopeError(
            f"version {version} was signed at {when}, {_span(-age)} in the future: more than "
            f"the {_span(skew)} of clock skew allowed (limit {limit}); check the clocks"
        )
    if age > max_age:
        raise StaleEnvelopeError(
            f"version {version} was signed at {when}, {_span(age)} ago: older than the policy "
            f"max age of {limit} (MESH_POLICY_MAX_AGE); a replayed or no longer re-signed "
            "envelope"
        )


def _timestamp(epoch: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{epoch} (epoch seconds)"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(seconds: float) -> str:
    """``90061`` as ``1d 1h 1m 1s``: ages an operator reads at a glance."""
    if seconds < 1:
        return f"{seconds:g}s"
    whole = int(seconds)
    if whole >= 10**9:
        return f"{whole}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    if whole or not parts:
        parts.append(f"{whole}s")
    return " ".join(parts)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
