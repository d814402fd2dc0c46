import pytest

from asgimesh.identity import MeshCA, load_bundle
from asgimesh.policy._signed import (
    SignatureError,
    canonical_bytes,
    verify_policy,
)

from .forged import signed, workload_signed

TD = "mesh.local"
POLICY = {"defaults": {"timeout": "2s", "retries": {"attempts": 1}}}


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create("mesh.local")


def _envelope(ca: MeshCA) -> dict:
    return signed(ca, 3, POLICY)


def test_canonical_bytes_ignore_key_order() -> None:
    assert canonical_bytes(1, {"a": 1, "b": {"c": 2, "d": 3}}) == canonical_bytes(
        1, {"b": {"d": 3, "c": 2}, "a": 1}
    )


def test_a_signed_version_verifies(ca: MeshCA) -> None:
    cache: dict = {}
    assert verify_policy(
        _envelope(ca), load_bundle(ca.bundle_pem()), trusted_signers=cache, trust_domain=TD
    ) == (
        3,
        POLICY,
    )
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("policy", {"defaults": {"timeout": "20s"}}, "does not verify"),
        ("version", 4, "does not verify"),
        ("signature", "AAAA", "does not verify"),
        ("signature", None, "no signature"),
        ("signer", "junk", "not PEM"),
    ],
)
def test_tampering_is_refused(ca: MeshCA, field: str, value: object, reason: str) -> None:
    envelope = _envelope(ca)
    envelope[field] = value
    with pytest.raises(SignatureError, match=reason):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


def test_a_signer_from_another_ca_is_refused(ca: MeshCA) -> None:
    stranger = MeshCA.create("mesh.local")
    with pytest.raises(SignatureError, match="not issued by the trust bundle"):
        verify_policy(_envelope(stranger), load_bundle(ca.bundle_pem()), trust_domain=TD)


def test_a_workload_certificate_cannot_sign_policy(ca: MeshCA) -> None:
    """Issue 12.1: chaining to the bundle is not enough; the signer must be the control plane's."""
    envelope = workload_signed(ca, "spiffe://mesh.local/ns/default/sa/payments")
    with pytest.raises(SignatureError, match="not the control plane's policy signer"):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


def test_the_control_plane_id_without_the_signer_usage_cannot_sign_policy(ca: MeshCA) -> None:
    """Even a certificate naming the control plane (its TLS one) lacks the signer's key usage."""
    envelope = workload_signed(ca, "spiffe://mesh.local/ns/mesh-system/sa/control-plane")
    with pytest.raises(SignatureError, match="not the control plane's policy signer"):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


def test_a_signer_of_another_trust_domain_is_refused(ca: MeshCA) -> None:
    with pytest.raises(SignatureError, match=r"policy signer for 'other\.local'"):
        verify_policy(_envelope(ca), load_bundle(ca.bundle_pem()), trust_domain="other.local")
