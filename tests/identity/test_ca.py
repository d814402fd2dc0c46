import datetime
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from asgimesh.identity import CertificateRequestError, MeshCA, load_bundle, verify_issued_by
from asgimesh.identity._ca import WORKLOAD_LIFETIME, is_policy_signer

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


def _csr(
    name: str = "whatever", key=None, *, uris: tuple[str, ...] = (), ca: bool = False
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


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
        "spiffe://mesh.local/ns/mesh-system/sa/control-plane"
    ]
    assert is_policy_signer(ca.signer_cert, "mesh.local")


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


@pytest.fixture(scope="module")
def mesh_ca() -> MeshCA:
    return MeshCA.create("mesh.local")


def test_a_workload_certificate_is_exactly_what_the_mesh_allows(mesh_ca: MeshCA) -> None:
    # The CSR asks for a CA certificate and for other names: all ignored.
    csr = _csr("admin", uris=("spiffe://mesh.local/ns/default/sa/payments",), ca=True)
    leaf = load_bundle(mesh_ca.sign_csr(csr, ORDERS))[0]
    extensions = leaf.extensions
    sans = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS]
    assert len(list(sans)) == 1  # exactly one SAN, the token's ID
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert not usage.value.content_commitment  # the policy signer's mark, never a workload's
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not is_policy_signer(leaf, "mesh.local")


def test_lifetime_is_capped_and_can_be_shortened(mesh_ca: MeshCA) -> None:
    long = load_bundle(mesh_ca.sign_csr(_csr(), ORDERS, datetime.timedelta(days=30)))[0]
    assert (
        long.not_valid_after_utc - long.not_valid_before_utc
        <= WORKLOAD_LIFETIME + datetime.timedelta(minutes=5)
    )
    short = load_bundle(mesh_ca.sign_csr(_csr(), ORDERS, datetime.timedelta(seconds=30)))[0]
    assert short.not_valid_after_utc - short.not_valid_before_utc <= datetime.timedelta(minutes=6)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "expected an ECDSA .* or RSA key"),
        (ec.generate_private_key(ec.SECP521R1()), "P-256 or P-384, got secp521r1"),
        (rsa.generate_private_key(65537, 1024), "2048 bits or more, got 1024"),
    ],
)
def test_unsuitable_keys_are_refused(mesh_ca: MeshCA, key, expected: str) -> None:
    with pytest.raises(CertificateRequestError, match=expected):
        mesh_ca.sign_csr(_csr(key=key), ORDERS)


def test_a_csr_whose_signature_does_not_verify_is_refused(mesh_ca: MeshCA) -> None:
    import base64

    der = bytearray(x509.load_pem_x509_csr(_csr()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature's s: still DER, no longer a signature
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CertificateRequestError, match="the CSR's signature does not verify"):
        mesh_ca.sign_csr(pem, ORDERS)


def test_the_control_plane_id_is_never_issued_to_a_service(mesh_ca: MeshCA) -> None:
    control_plane = "spiffe://mesh.local/ns/mesh-system/sa/control-plane"
    with pytest.raises(CertificateRequestError, match="control plane's own ID"):
        mesh_ca.sign_csr(_csr(), control_plane)
    leaf = load_bundle(mesh_ca.sign_csr(_csr(), control_plane, control_plane=True))[0]
    assert not is_policy_signer(leaf, "mesh.local")  # its TLS certificate cannot sign policy


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://other.domain/ns/default/sa/x",
        "spiffe://mesh.local/ns/a b/sa/x",
        "spiffe://mesh.local/ns/a/sa/x/../cp",
        "spiffe://mesh.local/ns//sa/x",
        "spiffe://mesh.local",
    ],
)
def test_ids_outside_the_trust_domain_or_malformed_are_refused(
    mesh_ca: MeshCA, spiffe_id: str
) -> None:
    with pytest.raises(CertificateRequestError, match="is not a SPIFFE ID of the trust domain"):
        mesh_ca.sign_csr(_csr(), spiffe_id)


def test_an_old_signer_certificate_is_reissued_on_load(tmp_path) -> None:
    ca = MeshCA.create("mesh.local")
    old = MeshCA._issue(
        ca.ca_key,
        ca.ca_cert,
        ca.signing_key.public_key(),
        "spiffe://mesh.local/controlplane",
        "old signer",
        datetime.timedelta(days=1),
        server_or_client=False,
    )
    parts = {**ca.to_pem(), "signer_cert": old.public_bytes(serialization.Encoding.PEM).decode()}
    loaded = MeshCA.from_pem("mesh.local", parts)
    assert is_policy_signer(loaded.signer_cert, "mesh.local")
    assert loaded.signer_cert.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == ca.signing_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def _credential(mesh_ca: MeshCA, name: str, directory) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    chain = mesh_ca.sign_csr(
        csr.public_bytes(serialization.Encoding.PEM), f"spiffe://mesh.local/ns/default/sa/{name}"
    )
    path = directory / f"{name}.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key_pem + chain)
    return str(path)


def test_openssl_accepts_what_the_ca_issues_in_a_mutual_handshake(
    mesh_ca: MeshCA, tmp_path
) -> None:
    """The CA's name constraint permits its trust domain as RFC 5280 spells a URI constraint
    (the host, ``mesh.local``): with ``spiffe://mesh.local`` OpenSSL refused every certificate
    the control plane issued ("permitted subtree violation")."""
    [constraint] = mesh_ca.ca_cert.extensions.get_extension_for_class(
        x509.NameConstraints
    ).value.permitted_subtrees
    assert constraint.value == "mesh.local"
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(mesh_ca.bundle_pem())
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(_credential(mesh_ca, "payments", tmp_path))
    server.load_verify_locations(bundle)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_cert_chain(_credential(mesh_ca, "orders", tmp_path))
    client.load_verify_locations(bundle)
    left, right = socket.socketpair()
    seen: list[object] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as conn:
                seen.append(conn.getpeercert())
        except (ssl.SSLError, OSError) as exc:
            seen.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(right) as conn:
            presented = conn.getpeercert()
    finally:
        thread.join(5)
    assert ("URI", "spiffe://mesh.local/ns/default/sa/payments") in presented["subjectAltName"]
    [caller] = seen
    assert isinstance(caller, dict), caller
    assert ("URI", "spiffe://mesh.local/ns/default/sa/orders") in caller["subjectAltName"]


def test_the_control_planes_tls_certificate_names_its_id_and_its_hosts(mesh_ca: MeshCA) -> None:
    import ipaddress

    chain_pem, key_pem = mesh_ca.control_plane_tls(["0.0.0.0", "10.1.2.3", "CP.example", "::"])
    chain = load_bundle(chain_pem)
    leaf = chain[0]
    assert verify_issued_by(leaf, chain[1:])
    assert chain[1:] == load_bundle(mesh_ca.bundle_pem())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/ns/mesh-system/sa/control-plane"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "cp.example"]
    # Loopback and the bind host; unspecified addresses (0.0.0.0, ::) are no name to check.
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not is_policy_signer(leaf, "mesh.local")  # never a policy signer
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(hours=24, minutes=5)
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()


def test_workload_certificates_never_get_the_control_planes_extra_names(mesh_ca: MeshCA) -> None:
    mesh_ca.control_plane_tls(["10.1.2.3"])
    csr = _csr(uris=("spiffe://mesh.local/ns/default/sa/orders",))
    leaf = load_bundle(mesh_ca.sign_csr(csr, ORDERS))[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [x509.UniformResourceIdentifier(ORDERS)]
