"""Checking a delivered identity without sockets: every way it can be wrong is named."""

from __future__ import annotations

import datetime

import pytest

from asgimesh.identity import IdentityError, parse_svid, verify_chain
from asgimesh.identity._svid import load_pem_bundle
from asgimesh.testing import ThrowawayCA

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


def parse(issued, *, bundle: bytes | None = None, key: bytes | None = None, domain="mesh.local"):
    return parse_svid(
        issued.cert_pem,
        key if key is not None else issued.key_pem,
        bundle if bundle is not None else issued.bundle_pem,
        trust_domain=domain,
        source="test",
    )


def test_a_good_svid_is_accepted_with_its_id_and_dates(ca: ThrowawayCA) -> None:
    issued = ca.issue(ORDERS, lifetime=datetime.timedelta(hours=2))
    svid = parse(issued)
    assert svid.spiffe_id == ORDERS
    assert svid.serial == issued.certificate.serial_number
    assert svid.expires_at - svid.not_before == datetime.timedelta(hours=2)
    assert svid.renew_at() == svid.not_before + datetime.timedelta(hours=1)
    assert svid.chain_pem() == issued.cert_pem and svid.bundle_pem() == ca.bundle_pem
    assert b"PRIVATE KEY" in svid.key_pem()
    assert "key=" not in repr(svid)  # the key never shows in a repr


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda ca: ca.issue(None), "exactly one URI SAN, this certificate has 0"),
        (lambda ca: ca.issue(ORDERS, extra_uris=("spiffe://mesh.local/x",)), "has 2"),
        (lambda ca: ca.issue("https://orders.example/"), "not a valid SPIFFE ID"),
        (lambda ca: ca.issue("spiffe://other.domain/ns/a/sa/b"), "not in the trust domain"),
        (lambda ca: ca.issue(ORDERS, ca=True), "is a CA certificate"),
        (
            lambda ca: ca.issue(
                ORDERS,
                not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2),
                lifetime=datetime.timedelta(hours=1),
            ),
            "is not valid now",
        ),
    ],
)
def test_bad_certificates_are_refused_with_the_reason(ca: ThrowawayCA, make, expected) -> None:
    with pytest.raises(IdentityError, match=expected):
        parse(make(ca))


def test_a_key_of_another_certificate_is_refused(ca: ThrowawayCA) -> None:
    one, other = ca.issue(ORDERS), ca.issue(ORDERS)
    with pytest.raises(IdentityError, match="private key does not belong"):
        parse(one, key=other.key_pem)


def test_a_certificate_of_a_foreign_ca_is_refused(ca: ThrowawayCA) -> None:
    foreign = ThrowawayCA("mesh.local").issue(ORDERS)
    with pytest.raises(IdentityError, match="does not verify against the trust bundle"):
        parse(foreign, bundle=ca.bundle_pem)


@pytest.mark.parametrize(
    ("key", "expected"),
    [(b"not a key", "expected an unencrypted PEM private key"), (b"", "PEM private key")],
)
def test_garbage_keys_are_refused(ca: ThrowawayCA, key: bytes, expected: str) -> None:
    with pytest.raises(IdentityError, match=expected):
        parse(ca.issue(ORDERS), key=key)


def test_garbage_and_oversized_bundles_are_refused(ca: ThrowawayCA) -> None:
    with pytest.raises(IdentityError, match="trust bundle: expected PEM certificates"):
        parse(ca.issue(ORDERS), bundle=b"garbage")
    with pytest.raises(IdentityError, match="at most 32"):
        load_pem_bundle(ca.bundle_pem * 33, "bundle")


def test_verify_chain_reports_what_is_wrong(ca: ThrowawayCA) -> None:
    leaf = ca.issue(ORDERS).certificate
    assert verify_chain([leaf], [ca.certificate]) is None
    assert verify_chain([], [ca.certificate]) == "the chain is empty"
    # The leaf itself is no CA: a chain that uses it as an intermediate is refused.
    other = ca.issue(ORDERS).certificate
    assert verify_chain([other, leaf], [ca.certificate]) == "intermediate 1 is not a CA certificate"
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    assert "not valid now" in str(verify_chain([leaf], [ca.certificate], later))
