import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asgimesh.identity import CertificateRequestError, MeshCA, load_bundle, verify_issued_by


def _csr(name: str = "whatever") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_save_and_load_keep_the_same_keys_and_private_keys_owner_only(tmp_path) -> None:
    ca = MeshCA.create("example.org")
    assert MeshCA.load("example.org", tmp_path) is None
    ca.save(tmp_path)
    for name in ("ca-key.pem", "policy-signing-key.pem"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    again = MeshCA.load("example.org", tmp_path)
    assert again is not None
    assert again.bundle_pem() == ca.bundle_pem()
    assert again.to_pem()["signing_key"] == ca.to_pem()["signing_key"]


def test_signer_certificate_chains_to_its_own_ca_only() -> None:
    ca, other = MeshCA.create("mesh.local"), MeshCA.create("mesh.local")
    assert verify_issued_by(ca.signer_cert, load_bundle(ca.bundle_pem()))
    assert not verify_issued_by(ca.signer_cert, load_bundle(other.bundle_pem()))
    san = ca.signer_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/controlplane"
    ]


def test_sign_csr_issues_a_short_lived_spiffe_certificate_ignoring_requested_names() -> None:
    ca = MeshCA.create("mesh.local")
    chain = load_bundle(ca.sign_csr(_csr("admin"), "spiffe://mesh.local/ns/default/sa/orders"))
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/ns/default/sa/orders"
    ]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() <= 25 * 3600
    assert verify_issued_by(leaf, chain[1:])


def test_sign_csr_refuses_garbage() -> None:
    with pytest.raises(CertificateRequestError, match="PEM certificate signing request"):
        MeshCA.create("mesh.local").sign_csr(b"not a csr", "spiffe://mesh.local/ns/default/sa/x")
