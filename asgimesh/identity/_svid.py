"""X.509-SVIDs, sans-I/O: a service's certificate chain, its key and the trust bundle, checked.

Whatever delivers an identity (files an Istio agent or cert-manager writes, a SPIFFE credential
folder, the control plane), it arrives as PEM and is checked here the same way before the mesh
uses it: the leaf has exactly one URI SAN, a SPIFFE ID of this trust domain; it is not a CA; the
key is the leaf's; the chain verifies up to the bundle; it is valid now. A delivery that fails
any of these is refused with an :class:`IdentityError` that says which file and which check, and
the identity in use stays as it was.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._errors import ConfigError
from ._spiffe import is_spiffe_id, trust_domain_of, uri_sans

__all__ = ["X509SVID", "IdentityError", "load_pem_bundle", "parse_svid", "verify_chain"]

#: Certificates and clocks disagree by a little: accept this much either side of validity.
CLOCK_SKEW = datetime.timedelta(minutes=5)
#: At most this many certificates in a chain or a bundle: an outsider's input is bounded.
MAX_CERTIFICATES = 32

SupportedKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class IdentityError(ConfigError):
    """An identity (certificate, key, bundle, token) the mesh will not use; the message names
    where it came from and what is wrong with it."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_pem_bundle(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in PEM ``data``; :class:`IdentityError` naming ``what`` if none or bad."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise IdentityError(f"{what}: expected PEM certificates, found none that parse") from None
    if len(certificates) > MAX_CERTIFICATES:
        raise IdentityError(f"{what}: {len(certificates)} certificates, at most {MAX_CERTIFICATES}")
    return certificates


def _valid_at(certificate: x509.Certificate, moment: datetime.datetime) -> bool:
    return (
        certificate.not_valid_before_utc - CLOCK_SKEW
        <= moment
        <= certificate.not_valid_after_utc + CLOCK_SKEW
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundle: Sequence[x509.Certificate],
    now: datetime.datetime | None = None,
) -> str | None:
    """``None`` if ``chain`` (leaf first, then intermediates) verifies up to a CA of ``bundle``
    and every certificate in it is valid at ``now``; else what is wrong."""
    if not chain:
        return "the chain is empty"
    if len(chain) > MAX_CERTIFICATES:
        return f"the chain has {len(chain)} certificates, at most {MAX_CERTIFICATES}"
    moment = now or _now()
    for index, certificate in enumerate(chain):
        if not _valid_at(certificate, moment):
            which = "the certificate" if index == 0 else f"intermediate {index}"
            since = f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}"
            until = f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}"
            return f"{which} is not valid now (valid {since} to {until} UTC)"
        if index > 0 and not _is_ca(certificate):
            return f"intermediate {index} is not a CA certificate"
    for child, parent in itertools.pairwise(chain):
        if not _issued_by(child, parent):
            return "the chain is out of order or broken: a certificate is not signed by the next"
    top = chain[-1]
    for anchor in bundle:
        if _valid_at(anchor, moment) and (top == anchor or _issued_by(top, anchor)):
            return None
    return "the chain does not verify against the trust bundle (signed by another CA?)"


@dataclass(frozen=True, eq=False)
class X509SVID:
    """One verified identity of this process: its SPIFFE ID, chain, key and trust bundle."""

    spiffe_id: str
    #: Leaf first, then any intermediates.
    chain: tuple[x509.Certificate, ...]
    key: SupportedKey = field(repr=False)
    #: The trust bundle: the CA certificates that callers and callees must chain to.
    bundle: tuple[x509.Certificate, ...]
    #: Where it came from, for messages and ``/_mesh/config``: ``MESH_CERT``, a folder, ...
    source: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def expires_at(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    def renew_at(self, received: datetime.datetime | None = None) -> datetime.datetime:
        """Half-way through its life: when an issuer asks for the next one (as Istio does).

        The life counts from ``received`` (when the certificate arrived) where that is later
        than ``not_before``: CAs backdate ``not_before`` for clock skew (ours by 5 minutes),
        which would make a certificate shorter-lived than that due the moment it arrives."""
        start = self.not_before if received is None else max(self.not_before, received)
        return start + (self.expires_at - start) / 2

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def bundle_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.bundle)

    def key_pem(self) -> bytes:
        """The private key as PKCS#8 PEM: only ever written to the process's private files."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def parse_svid(
    chain_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    *,
    trust_domain: str,
    source: str,
    now: datetime.datetime | None = None,
) -> X509SVID:
    """Check a delivered identity and return it; :class:`IdentityError` naming ``source`` and
    the first problem otherwise."""
    chain = load_pem_bundle(chain_pem, f"{source}: certificate")
    bundle = load_pem_bundle(bundle_pem, f"{source}: trust bundle")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise IdentityError(
            f"{source}: expected an unencrypted PEM private key (PKCS#8, EC or RSA)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        kind = type(key).__name__
        raise IdentityError(f"{source}: expected an EC or RSA private key, got {kind}")
    leaf = chain[0]
    ids = uri_sans(leaf)
    if len(ids) != 1:
        raise IdentityError(
            f"{source}: an X.509-SVID has exactly one URI SAN, this certificate has {len(ids)}"
        )
    spiffe_id = ids[0]
    if not is_spiffe_id(spiffe_id):
        raise IdentityError(f"{source}: the URI SAN {spiffe_id!r} is not a valid SPIFFE ID")
    if trust_domain_of(spiffe_id) != trust_domain:
        raise IdentityError(
            f"{source}: {spiffe_id} is not in the trust domain {trust_domain!r} (MESH_TRUST_DOMAIN)"
        )
    if _is_ca(leaf):
        raise IdentityError(f"{source}: the certificate is a CA certificate, not a workload's")
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise IdentityError(f"{source}: the private key does not belong to the certificate")
    problem = verify_chain(chain, bundle, now)
    if problem is not None:
        raise IdentityError(f"{source}: {problem}")
    return X509SVID(spiffe_id, tuple(chain), key, tuple(bundle), source)


def _public_bytes(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

