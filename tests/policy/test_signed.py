import pytest

from asgimesh.identity import MeshCA, load_bundle
from asgimesh.policy._signed import (
    CLOCK_SKEW,
    SignatureError,
    StaleEnvelopeError,
    canonical_bytes,
    check_freshness,
    verify_envelope,
    verify_policy,
)

from .forged import legacy_signed, signed, workload_signed

TD = "mesh.local"
POLICY = {"defaults": {"timeout": "2s", "retries": {"attempts": 1}}}


@pytest.fixture(scope="module")
def ca() -> MeshCA:
    return MeshCA.create("mesh.local")


SIGNED_AT = 1_764_800_000  # 2025-12-03T22:13:20Z
DAY = 86400.0


def _envelope(ca: MeshCA) -> dict:
    return signed(ca, 3, POLICY, at=SIGNED_AT)


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


def test_the_signing_time_is_part_of_what_verifies(ca: MeshCA) -> None:
    verified = verify_envelope(_envelope(ca), load_bundle(ca.bundle_pem()), trust_domain=TD)
    assert (verified.version, verified.policy, verified.signed_at) == (3, POLICY, SIGNED_AT)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("policy", {"defaults": {"timeout": "20s"}}, "does not verify"),
        ("version", 4, "does not verify"),
        # Making an old envelope look recent (or a recent one old) breaks the signature.
        ("signed_at", SIGNED_AT + 3600, "does not verify"),
        ("signed_at", "2025-12-03", "expected signed_at as whole seconds"),
        ("signed_at", None, "expected signed_at as whole seconds"),
        ("signed_at", 10**400, "expected signed_at as whole seconds"),
        ("signature_v2", "AAAA", "does not verify"),
        ("signer", "junk", "not PEM"),
    ],
)
def test_tampering_is_refused(ca: MeshCA, field: str, value: object, reason: str) -> None:
    envelope = _envelope(ca)
    envelope[field] = value
    with pytest.raises(SignatureError, match=reason):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("policy", {"defaults": {"timeout": "20s"}}, "does not verify"),
        ("version", 4, "does not verify"),
        ("signature", "AAAA", "does not verify"),
        ("signature", None, "no signature"),
    ],
)
def test_tampering_with_a_legacy_envelope_is_refused(
    ca: MeshCA, field: str, value: object, reason: str
) -> None:
    envelope = legacy_signed(ca, 3, POLICY)
    envelope[field] = value
    with pytest.raises(SignatureError, match=reason):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


def test_a_legacy_envelope_verifies_without_a_signing_time(ca: MeshCA) -> None:
    """Envelopes of earlier control planes still verify; their freshness is another check."""
    verified = verify_envelope(
        legacy_signed(ca, 3, POLICY), load_bundle(ca.bundle_pem()), trust_domain=TD
    )
    assert (verified.version, verified.signed_at) == (3, None)


def test_stripping_the_timed_signature_leaves_a_legacy_envelope_refused_by_age(
    ca: MeshCA,
) -> None:
    """A man in the middle who removes ``signed_at``/``signature_v2`` gets no further."""
    envelope = _envelope(ca)
    del envelope["signed_at"], envelope["signature_v2"]
    verified = verify_envelope(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)
    assert verified.signed_at is None
    with pytest.raises(StaleEnvelopeError, match="carries no signing time"):
        check_freshness(3, verified.signed_at, now=SIGNED_AT, max_age=DAY)


def test_neither_scheme_s_signature_stands_for_the_other(ca: MeshCA) -> None:
    """The two schemes sign under different prefixes: the untimed signature, moved into
    ``signature_v2`` with any signing time, does not verify."""
    envelope = _envelope(ca)
    envelope["signature_v2"] = envelope["signature"]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_policy(envelope, load_bundle(ca.bundle_pem()), trust_domain=TD)


# -- freshness (sans-I/O: the clock is a number) -------------------------------------------------


@pytest.mark.parametrize(
    "age", [0.0, 3600.0, DAY - 1, DAY, -CLOCK_SKEW, -1.0], ids=lambda a: f"age={a}"
)
def test_a_signing_time_within_the_max_age_and_the_skew_is_fresh(age: float) -> None:
    check_freshness(3, SIGNED_AT, now=SIGNED_AT + age, max_age=DAY)


def test_an_envelope_older_than_the_max_age_is_refused_naming_what_and_why() -> None:
    with pytest.raises(StaleEnvelopeError) as caught:
        check_freshness(3, SIGNED_AT, now=SIGNED_AT + 3 * DAY + 7200 + 5, max_age=DAY)
    message = str(caught.value)
    assert message.startswith("version 3 was signed at 2025-12-03T22:13:20Z, 3d 2h 5s ago")
    assert "older than the policy max age of 1d (MESH_POLICY_MAX_AGE)" in message
    assert "\n" not in message


def test_a_signing_time_past_the_clock_skew_is_refused() -> None:
    with pytest.raises(StaleEnvelopeError, match=r"signed at .*, 1h in the future: more than"):
        check_freshness(3, SIGNED_AT, now=SIGNED_AT - 3600, max_age=DAY)
    check_freshness(3, SIGNED_AT, now=SIGNED_AT - 60, max_age=DAY, skew=60)
    with pytest.raises(StaleEnvelopeError, match="1m 1s in the future"):
        check_freshness(3, SIGNED_AT, now=SIGNED_AT - 61, max_age=DAY, skew=60)


def test_an_untimed_envelope_is_refused_while_a_max_age_is_set() -> None:
    with pytest.raises(StaleEnvelopeError, match=r"version 7 carries no signing time.*1d"):
        check_freshness(7, None, now=SIGNED_AT, max_age=DAY)


def test_without_a_max_age_every_signing_time_passes() -> None:
    for signed_at in (None, 0, SIGNED_AT, SIGNED_AT + 10 * DAY):
        check_freshness(3, signed_at, now=SIGNED_AT, max_age=None)


def test_an_absurd_signing_time_is_described_not_crashed_on() -> None:
    with pytest.raises(StaleEnvelopeError, match=r"signed at 100000000000000000000 \(epoch"):
        check_freshness(3, 10**20, now=SIGNED_AT, max_age=DAY)


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
