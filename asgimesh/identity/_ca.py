"""The mesh certificate authority: its key and certificate, the trust bundle, and what it signs.

The CA key is ECDSA P-256, the one key type every TLS stack accepts for mTLS. The control plane's
policy-signing key is a separate Ed25519 key whose certificate the CA issues (the *signer*
certificate): a service that trusts the CA can check a policy signature without knowing the
signing key in advance, and the CA key never signs anything but certificates.

What the CA signs is strict, because any certificate it issues is trusted by every service:

* workload certificates carry exactly one URI SAN, the ID the *token* names (the CSR's names are
  ignored), ``cA=false``, key usage ``digitalSignature`` only (never ``keyCertSign``), client and
  server auth, at most :data:`WORKLOAD_LIFETIME`; the CSR's signature must verify and its key be
  ECDSA P-256/P-384 or RSA of 2048 bits or more (no Ed25519: the key type of the policy signer);
* the control plane's ID (``spiffe://<td>/ns/mesh-system/sa/control-plane``) is never issued to
  a service token;
* the signer certificate names the control plane's ID and carries ``contentCommitment``, a key
  usage no workload certificate has, so services can tell a policy signer from a workload.
* the control plane's own TLS certificate (``asgimesh control-plane --tls``,
  :meth:`MeshCA.control_plane_tls`) is the only one with names beside its URI SAN: the control
  plane's ID, plus DNS ``localhost`` and IP SANs for loopback and the bind host, serverAuth
  only, at most :data:`CONTROL_PLANE_TLS_LIFETIME`. Services check its URI SAN, not the names.

Private keys leave this module only as PEM for storage (files with mode 0600, or the replicated
store); nothing here logs or prints them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._spiffe import control_plane_id, is_spiffe_id

__all__ = [
    "CONTROL_PLANE_TLS_LIFETIME",
    "SIGNER_USAGE",
    "WORKLOAD_LIFETIME",
    "WORKLOAD_USAGE",
    "CertificateRequestError",
    "MeshCA",
    "is_policy_signer",
    "load_bundle",
    "verify_issued_by",
]

CA_LIFETIME = datetime.timedelta(days=3650)
SIGNER_LIFETIME = datetime.timedelta(days=825)
#: Workload certificates are short-lived: a leaked one is useless within the day. Also the cap:
#: a caller may ask for shorter (tests do), never longer.
WORKLOAD_LIFETIME = datetime.timedelta(hours=24)
#: The control plane's own TLS certificate (``asgimesh control-plane --tls``): made at every
#: start, so a restart within the day renews it.
CONTROL_PLANE_TLS_LIFETIME = datetime.timedelta(hours=24)
#: The shortest certificate the CA issues (a renewal at half its life must still be possible).
MIN_LIFETIME = datetime.timedelta(seconds=2)
_CLOCK_SKEW = datetime.timedelta(minutes=5)

_FILES = {
    "ca_cert": "ca.pem",
    "ca_key": "ca-key.pem",
    "signing_key": "policy-signing-key.pem",
    "signer_cert": "policy-signer.pem",
}
_SECRET_FILES = ("ca_key", "signing_key")
_CURVES = (ec.SECP256R1, ec.SECP384R1)


def _usage(*, digital_signature: bool = True, content_commitment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


#: Key usage of workload (and control-plane TLS) certificates.
WORKLOAD_USAGE = _usage()
#: Key usage of the policy signer only: ``contentCommitment`` marks it.
SIGNER_USAGE = _usage(content_commitment=True)


def is_policy_signer(certificate: x509.Certificate, trust_domain: str) -> bool:
    """Whether ``certificate`` is the control plane's policy signer (its ID and key usage), as
    opposed to any other certificate of the mesh CA, which must never sign policy."""
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    ids = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    return ids == [control_plane_id(trust_domain)] and usage.content_commitment


class CertificateRequestError(ValueError):
    """A CSR the CA will not sign; the message says why."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_bundle(pem: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ``ValueError`` if there is none."""
    data = pem.encode() if isinstance(pem, str) else pem
    certificates = x509.load_pem_x509_certificates(data)
    if not certificates:  # pragma: no cover - cryptography raises first
        raise ValueError("expected at least one PEM certificate")
    return certificates


def verify_issued_by(
    certificate: x509.Certificate,
    bundle: Sequence[x509.Certificate],
    now: datetime.datetime | None = None,
) -> bool:
    """Whether ``certificate`` is valid now and signed directly by a CA in ``bundle``."""
    moment = now or _now()
    if not (
        certificate.not_valid_before_utc - _CLOCK_SKEW
        <= moment
        <= certificate.not_valid_after_utc + _CLOCK_SKEW
    ):
        return False
    for ca in bundle:
        if ca.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


@dataclass(frozen=True)
class MeshCA:
    """The CA and the control plane's policy-signing key, loaded or newly made."""

    trust_domain: str
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    signing_key: ed25519.Ed25519PrivateKey
    signer_cert: x509.Certificate

    # -- making -------------------------------------------------------------------------------

    @classmethod
    def create(cls, trust_domain: str) -> MeshCA:
        """A new CA for ``trust_domain`` and a new signing key with its certificate."""
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asgimesh"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"asgimesh mesh CA ({trust_domain})"),
            ]
        )
        now = _now()
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.NameConstraints(
                    # RFC 5280: a URI name constraint is a host (the trust domain), not a URI
                    permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                    excluded_subtrees=None,
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        signing_key = ed25519.Ed25519PrivateKey.generate()
        signer_cert = cls._signer(ca_key, ca_cert, signing_key, trust_domain)
        return cls(trust_domain, ca_key, ca_cert, signing_key, signer_cert)

    @classmethod
    def _signer(
        cls,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        signing_key: ed25519.Ed25519PrivateKey,
        trust_domain: str,
    ) -> x509.Certificate:
        return cls._issue(
            ca_key,
            ca_cert,
            signing_key.public_key(),
            control_plane_id(trust_domain),
            "asgimesh control plane policy signer",
            SIGNER_LIFETIME,
            server_or_client=False,
            usage=SIGNER_USAGE,
        )

    @staticmethod
    def _issue(
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | object,
        spiffe_id: str,
        common_name: str,
        lifetime: datetime.timedelta,
        *,
        server_or_client: bool,
        usage: x509.KeyUsage = WORKLOAD_USAGE,
        server_names: Sequence[x509.DNSName | x509.IPAddress] = (),
    ) -> x509.Certificate:
        """One certificate: exactly one URI SAN, ``spiffe_id``; ``server_names`` (DNS and IP
        SANs, and serverAuth only) are for the control plane's own TLS certificate alone."""
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id), *server_names]
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if server_names:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        elif server_or_client:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    def sign_csr(
        self,
        csr_pem: bytes,
        spiffe_id: str,
        lifetime: datetime.timedelta = WORKLOAD_LIFETIME,
        *,
        control_plane: bool = False,
    ) -> bytes:
        """Issue a short-lived workload certificate for ``spiffe_id``; return the PEM chain.

        The CSR only proves possession of its key: the identity comes from the caller's token,
        so whatever names the CSR asks for are ignored. ``lifetime`` is capped at
        :data:`WORKLOAD_LIFETIME`. The control plane's own ID is refused unless
        ``control_plane`` says the control plane itself asks (its TLS certificate).
        """
        if not is_spiffe_id(spiffe_id) or not spiffe_id.startswith(
            f"spiffe://{self.trust_domain}/"
        ):
            raise CertificateRequestError(
                f"{spiffe_id!r} is not a SPIFFE ID of the trust domain {self.trust_domain!r}"
            )
        if spiffe_id == control_plane_id(self.trust_domain) and not control_plane:
            raise CertificateRequestError(
                f"{spiffe_id} is the control plane's own ID: never issued to a service"
            )
        lifetime = max(MIN_LIFETIME, min(lifetime, WORKLOAD_LIFETIME))
        if len(csr_pem) > 64 * 1024:
            raise CertificateRequestError("the CSR is larger than 64 KiB")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CertificateRequestError("expected a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR's signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, _CURVES):
                raise CertificateRequestError(
                    f"expected an ECDSA key on P-256 or P-384, got {public_key.curve.name}"
                )
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise CertificateRequestError(
                    f"expected an RSA key of 2048 bits or more, got {public_key.key_size}"
                )
        else:
            raise CertificateRequestError(
                f"expected an ECDSA (P-256, P-384) or RSA key in the CSR, got "
                f"{type(public_key).__name__.removeprefix('_')}"
            )
        certificate = self._issue(
            self.ca_key,
            self.ca_cert,
            public_key,
            spiffe_id,
            spiffe_id.rsplit("/", 1)[-1],
            lifetime,
            server_or_client=True,
        )
        return certificate.public_bytes(serialization.Encoding.PEM) + self.bundle_pem()

    def control_plane_tls(
        self,
        hosts: Sequence[str] = (),
        lifetime: datetime.timedelta = CONTROL_PLANE_TLS_LIFETIME,
    ) -> tuple[bytes, bytes]:
        """The control plane's own TLS server certificate, with a new key: ``(chain PEM, key
        PEM)``. Its one URI SAN is the control plane's ID (what services check); DNS
        ``localhost``, IP ``127.0.0.1`` and ``::1`` and each of ``hosts`` (an IP address or a
        DNS name; unspecified addresses such as ``0.0.0.0`` are skipped) are added for clients
        that check host names. Extended key usage serverAuth only. The key is returned as PEM
        for a private file; it is never logged."""
        names: list[x509.DNSName | x509.IPAddress] = [x509.DNSName("localhost")]
        addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        for host in hosts:
            text = host.strip().strip("[]")
            if not text:
                continue
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                dns = x509.DNSName(text.lower())
                if dns not in names:
                    names.append(dns)
                continue
            if not address.is_unspecified and address not in addresses:
                addresses.append(address)
        names.extend(x509.IPAddress(address) for address in addresses)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._issue(
            self.ca_key,
            self.ca_cert,
            key.public_key(),
            control_plane_id(self.trust_domain),
            "asgimesh control plane",
            max(MIN_LIFETIME, min(lifetime, CONTROL_PLANE_TLS_LIFETIME)),
            server_or_client=True,
            server_names=names,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return certificate.public_bytes(serialization.Encoding.PEM) + self.bundle_pem(), key_pem

    # -- sharing ------------------------------------------------------------------------------

    def bundle_pem(self) -> bytes:
        """The trust bundle: the CA certificate, PEM."""
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def signer_pem(self) -> bytes:
        return self.signer_cert.public_bytes(serialization.Encoding.PEM)

    def to_pem(self) -> dict[str, str]:
        """All four parts as PEM text, for the replicated store. Contains private keys."""
        private = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        pem = serialization.Encoding.PEM
        return {
            "ca_cert": self.ca_cert.public_bytes(pem).decode(),
            "ca_key": self.ca_key.private_bytes(pem, private, none).decode(),
            "signing_key": self.signing_key.private_bytes(pem, private, none).decode(),
            "signer_cert": self.signer_cert.public_bytes(pem).decode(),
        }

    @classmethod
    def from_pem(cls, trust_domain: str, parts: dict[str, str]) -> MeshCA:
        """Rebuild from :meth:`to_pem`; ``ValueError`` naming the part that does not load."""
        try:
            ca_key = serialization.load_pem_private_key(parts["ca_key"].encode(), None)
            signing_key = serialization.load_pem_private_key(parts["signing_key"].encode(), None)
            ca_cert = x509.load_pem_x509_certificate(parts["ca_cert"].encode())
            signer_cert = x509.load_pem_x509_certificate(parts["signer_cert"].encode())
        except KeyError as exc:
            raise ValueError(f"mesh CA material lacks {exc.args[0]}") from None
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("expected an ECDSA CA key")
        if not isinstance(signing_key, ed25519.Ed25519PrivateKey):
            raise ValueError("expected an Ed25519 policy-signing key")
        if not is_policy_signer(signer_cert, trust_domain):
            # Made by an earlier version (another ID, no contentCommitment): re-issued for the
            # same key, so services that check what a signer is accept it.
            signer_cert = cls._signer(ca_key, ca_cert, signing_key, trust_domain)
        return cls(trust_domain, ca_key, ca_cert, signing_key, signer_cert)

    def save(self, directory: Path) -> None:
        """Write the four PEM files into ``directory``; private keys readable by the owner only."""
        directory.mkdir(parents=True, exist_ok=True)
        for part, text in self.to_pem().items():
            path = directory / _FILES[part]
            mode = 0o600 if part in _SECRET_FILES else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)

    @classmethod
    def load(cls, trust_domain: str, directory: Path) -> MeshCA | None:
        """Load from ``directory``, or ``None`` when it holds no CA yet."""
        paths = {part: directory / name for part, name in _FILES.items()}
        if not all(path.exists() for path in paths.values()):
            return None
        return cls.from_pem(trust_domain, {part: p.read_text() for part, p in paths.items()})
