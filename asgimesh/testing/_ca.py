"""A throwaway certificate authority for tests: SVIDs for any ID, good or deliberately bad.

```python
from asgimesh.testing import ThrowawayCA

ca = ThrowawayCA("mesh.local")
svid = ca.issue("spiffe://mesh.local/ns/default/sa/orders")
paths = svid.write(tmp_path)            # cert.pem, key.pem, ca.pem: MESH_CERT/KEY/CA
foreign = ThrowawayCA("mesh.local")     # another CA of the same trust domain: not trusted
```

Everything stays in memory until :meth:`IssuedSVID.write` puts it in files (the key at mode
0600). The knobs (``lifetime``, ``not_before``, ``extra_uris``, ``ca``) make the bad
certificates that tests of the mesh's checks need.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["IssuedSVID", "SVIDFiles", "ThrowawayCA"]


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SVIDFiles:
    """Where :meth:`IssuedSVID.write` put an identity: for ``MESH_CERT``, ``MESH_KEY``,
    ``MESH_CA``."""

    cert: Path
    key: Path
    ca: Path

    def env(self) -> dict[str, str]:
        return {"MESH_CERT": str(self.cert), "MESH_KEY": str(self.key), "MESH_CA": str(self.ca)}


@dataclass(frozen=True)
class IssuedSVID:
    """A certificate issued by a :class:`ThrowawayCA`, its key, and that CA's bundle (PEM)."""

    spiffe_id: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    key_pem: bytes
    bundle_pem: bytes

    def write(self, directory: Path, prefix: str = "") -> SVIDFiles:
        """Write ``cert.pem``, ``key.pem`` (0600) and ``ca.pem`` into ``directory``, replacing
        them atomically (so a watcher never reads half a rotation)."""
        directory.mkdir(parents=True, exist_ok=True)
        files = SVIDFiles(
            directory / f"{prefix}cert.pem", directory / f"{prefix}key.pem",
            directory / f"{prefix}ca.pem",
        )
        for path, data, mode in (
            (files.key, self.key_pem, 0o600),
            (files.cert, self.cert_pem, 0o644),
            (files.ca, self.bundle_pem, 0o644),
        ):
            partial = path.with_name(path.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(partial, path)
        return files

    def credential_bundle(self) -> bytes:
        """The key then the chain in one PEM, as Kubernetes pod certificates write it."""
        return self.key_pem + self.cert_pem


class ThrowawayCA:
    """A CA that lives as long as the test: ECDSA P-256, like the mesh's own."""

    def __init__(self, trust_domain: str = "mesh.local", name: str = "throwaway test CA") -> None:
        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def bundle_pem(self) -> bytes:
        return _pem(self.certificate)

    def issue(
        self,
        spiffe_id: str | None,
        *,
        lifetime: datetime.timedelta = datetime.timedelta(hours=1),
        not_before: datetime.datetime | None = None,
        extra_uris: tuple[str, ...] = (),
        ca: bool = False,
    ) -> IssuedSVID:
        """A certificate for ``spiffe_id`` (``None``: no URI SAN at all) with a new key."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)
        uris = [*([spiffe_id] if spiffe_id else []), *extra_uris]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                critical=True,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return IssuedSVID(
            spiffe_id or "", certificate, key, _pem(certificate), key_pem, self.bundle_pem
        )
