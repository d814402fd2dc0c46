import pytest

from asgimesh.controlplane._signing import (
    SignatureError,
    canonical_bytes,
    sign_policy,
    verify_policy,
)
from asgimesh.identity import MeshCA, load_bundle

POLICY = {"defaults": {"timeout": "2s", "retries": {"attempts": 1}}}


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create("mesh.local")


def _envelope(ca: MeshCA, version: int = 3, policy: dict = POLICY) -> dict:
    return {
        "version": version,
        "policy": policy,
        "signature": sign_policy(ca.signing_key, version, policy),
        "signer": ca.signer_pem().decode(),
    }


def test_canonical_bytes_ignore_key_order() -> None:
    assert canonical_bytes(1, {"a": 1, "b": {"c": 2, "d": 3}}) == canonical_bytes(
        1, {"b": {"d": 3, "c": 2}, "a": 1}
    )


def test_a_signed_version_verifies(ca: MeshCA) -> None:
    cache: dict = {}
    assert verify_policy(_envelope(ca), load_bundle(ca.bundle_pem()), trusted_signers=cache) == (
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
        verify_policy(envelope, load_bundle(ca.bundle_pem()))


def test_a_signer_from_another_ca_is_refused(ca: MeshCA) -> None:
    stranger = MeshCA.create("mesh.local")
    with pytest.raises(SignatureError, match="not issued by the trust bundle"):
        verify_policy(_envelope(stranger), load_bundle(ca.bundle_pem()))
