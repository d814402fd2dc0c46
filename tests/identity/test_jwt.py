"""``mesh-identity`` JWT-SVIDs without sockets: what is accepted, every forgery refused, and the
caches on both sides."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asgimesh.identity import IdentityStore, parse_svid
from asgimesh.identity._jwt import JWTVerifier, TokenMinter, sign_with_svid
from asgimesh.testing import ThrowawayCA

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


def store_of(ca: ThrowawayCA, spiffe_id: str = ORDERS) -> IdentityStore:
    issued = ca.issue(spiffe_id)
    store = IdentityStore()
    store.set(parse_svid(issued.cert_pem, issued.key_pem, issued.bundle_pem,
                         trust_domain="mesh.local", source="t"))
    return store


def verifier(ca: ThrowawayCA, **kwargs) -> JWTVerifier:
    bundle = (ca.certificate,)
    return JWTVerifier(PAYMENTS, lambda: bundle, **kwargs)


def test_an_x5c_token_names_its_caller_and_is_cached(ca) -> None:
    store = store_of(ca)
    token = sign_with_svid(store, PAYMENTS, time.time(), 300)
    check = verifier(ca)
    assert check.verify(token, time.time()) == (ORDERS, None)
    assert len(check._cache) == 1
    assert check.verify(token, time.time()) == (ORDERS, None)  # from the cache
    # Past its expiry (and the skew) the cached entry is no longer believed.
    assert check.verify(token, time.time() + 400) == (None, "invalid_token")
    store.close()


def forge(claims: dict, key, algorithm: str, headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def claims(**overrides) -> dict:
    now = int(time.time())
    return {"sub": ORDERS, "aud": PAYMENTS, "exp": now + 120, "iat": now, **overrides}


def x5c_of(store: IdentityStore) -> list[str]:
    return [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
        for c in store.current.chain
    ]


@pytest.mark.parametrize(
    "case",
    [
        "alg-none",
        "hs256-with-the-public-key",
        "expired",
        "too-long-lived",
        "issued-in-the-future",
        "wrong-audience",
        "two-audiences",
        "no-exp",
        "sub-not-the-certificate",
        "sub-not-spiffe",
        "foreign-ca",
        "garbage",
        "oversized",
    ],
)
def test_forged_and_broken_tokens_are_refused(ca, case) -> None:
    store = store_of(ca)
    key, x5c = store.current.key, {"x5c": x5c_of(store)}
    now = int(time.time())
    if case == "alg-none":
        token = forge(claims(), None, "none", x5c)
    elif case == "hs256-with-the-public-key":
        public = store.current.leaf.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        token = _hs256(claims(), public, x5c)
    elif case == "expired":
        token = forge(claims(exp=now - 120), key, "ES256", x5c)
    elif case == "too-long-lived":
        token = forge(claims(exp=now + 3600), key, "ES256", x5c)
    elif case == "issued-in-the-future":
        token = forge(claims(iat=now + 200, exp=now + 250), key, "ES256", x5c)
    elif case == "wrong-audience":
        token = forge(claims(aud="spiffe://mesh.local/ns/default/sa/other"), key, "ES256", x5c)
    elif case == "two-audiences":
        token = forge(claims(aud=[PAYMENTS, "spiffe://mesh.local/ns/x/sa/y"]), key, "ES256", x5c)
    elif case == "no-exp":
        body = claims()
        del body["exp"]
        token = forge(body, key, "ES256", x5c)
    elif case == "sub-not-the-certificate":
        token = forge(claims(sub="spiffe://mesh.local/ns/default/sa/admin"), key, "ES256", x5c)
    elif case == "sub-not-spiffe":
        token = forge(claims(sub="orders"), key, "ES256", x5c)
    elif case == "foreign-ca":
        other = store_of(ThrowawayCA("mesh.local"))
        token = forge(claims(), other.current.key, "ES256", {"x5c": x5c_of(other)})
        other.close()
    elif case == "garbage":
        token = "not.a.token"
    else:
        token = forge(claims(pad="x" * 10_000), key, "ES256", x5c)
    assert verifier(ca).verify(token, time.time()) == (None, "invalid_token")
    store.close()


def _hs256(body: dict, secret: bytes, headers: dict) -> str:
    """An HS256 token keyed with the caller's public key: the classic algorithm confusion."""
    import hashlib
    import hmac
    import json

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT', **headers})}.{part(body)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def test_control_plane_tokens_verify_by_kid(ca) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.algorithms.ECAlgorithm.from_jwk(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    unknown: list[int] = []
    check = verifier(ca, jwks=lambda: {"k1": public}, on_unknown_key=lambda: unknown.append(1))
    good = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "k1"})
    assert check.verify(good, time.time()) == (ORDERS, None)
    other = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "k2"})
    assert check.verify(other, time.time()) == (None, "invalid_token")
    assert unknown == [1]  # an unknown kid makes the service look for new keys
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims(), stranger, algorithm="ES256", headers={"kid": "k1"})
    assert check.verify(forged, time.time()) == (None, "invalid_token")


def test_minter_keeps_one_token_per_audience_until_half_its_life(ca) -> None:
    store = store_of(ca)
    now = [time.time()]
    minter = TokenMinter(store, lifetime=300, clock=lambda: now[0])
    first = minter.token_for(PAYMENTS)
    assert first is not None and minter.token_for(PAYMENTS) == first
    assert minter.token_for("spiffe://mesh.local/ns/default/sa/other") != first
    now[0] += 149
    assert minter.cached(PAYMENTS) == first
    now[0] += 2
    assert minter.cached(PAYMENTS) is None  # past half its life: make the next one
    second = minter.token_for(PAYMENTS)
    assert second is not None and second != first
    assert verifier(ca).verify(second.decode(), now[0]) == (ORDERS, None)
    store.close()


def test_minter_without_an_identity_has_no_token() -> None:
    assert TokenMinter(IdentityStore()).token_for(PAYMENTS) is None
