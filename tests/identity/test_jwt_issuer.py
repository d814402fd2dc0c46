"""The control plane's JWT key and the data plane's side of it, sans-I/O: tokens it signs
verify by ``kid`` through the JWKS it publishes; the JWKS parser keeps only signature keys;
the key cache refreshes at most so often, in a thread; the minter asks the control plane once
per audience and backs off when it fails."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time

import jwt
import pytest

from asgimesh.identity import IdentityStore, JWTIssuer
from asgimesh.identity._jwt import JWKSCache, JWTVerifier, TokenMinter, parse_jwks

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"


def verifier_for(issuer: JWTIssuer, audience: str = PAYMENTS) -> JWTVerifier:
    keys = parse_jwks(json.dumps(issuer.jwks()).encode())
    return JWTVerifier(audience, lambda: None, jwks=lambda: keys)


def test_tokens_it_signs_verify_through_its_jwks() -> None:
    issuer = JWTIssuer.create("mesh.local")
    now = time.time()
    token, expires = issuer.sign(ORDERS, PAYMENTS, now)
    assert expires == int(now + 300)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": issuer.kid, "typ": "JWT"}
    assert verifier_for(issuer).verify(token, now) == (ORDERS, None)
    # For payments only: another callee refuses it.
    other = "spiffe://mesh.local/ns/default/sa/billing"
    assert verifier_for(issuer, other).verify(token, now) == (None, "invalid_token")
    # Another control plane's key never verifies it.
    assert verifier_for(JWTIssuer.create("mesh.local")).verify(token, now)[0] is None


def test_the_kid_is_the_rfc7638_thumbprint_and_survives_a_reload() -> None:
    issuer = JWTIssuer.create("mesh.local")
    (key,) = issuer.jwks()["keys"]
    members = {name: key[name] for name in ("crv", "kty", "x", "y")}
    digest = hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode())
    assert issuer.kid == base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    assert key["alg"] == "ES256" and key["use"] == "sig" and "d" not in key  # public only
    again = JWTIssuer.from_pem("mesh.local", issuer.key_pem())
    assert again.kid == issuer.kid
    assert JWTIssuer.create("mesh.local").kid != issuer.kid


def test_lifetimes_are_capped_at_five_minutes_and_floored() -> None:
    issuer = JWTIssuer.create("mesh.local")
    assert issuer.sign(ORDERS, PAYMENTS, 1000.0, lifetime=86400)[1] == 1300
    assert issuer.sign(ORDERS, PAYMENTS, 1000.0, lifetime=-5)[1] == 1010


@pytest.mark.parametrize(
    ("subject", "audience", "what"),
    [
        (ORDERS, "spiffe://other.domain/ns/default/sa/payments", "audience"),
        (ORDERS, "https://payments", "audience"),
        ("spiffe://other.domain/ns/default/sa/orders", PAYMENTS, "subject"),
    ],
)
def test_only_ids_of_its_trust_domain_are_signed(subject: str, audience: str, what: str) -> None:
    with pytest.raises(ValueError, match=rf"^{what}: expected a SPIFFE ID in trust domain"):
        JWTIssuer.create("mesh.local").sign(subject, audience, time.time())


def test_a_key_that_is_not_p256_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="expected an ECDSA P-256 JWT signing key"):
        JWTIssuer.from_pem("mesh.local", pem)


def test_the_jwks_parser_keeps_only_signature_keys() -> None:
    good = JWTIssuer.create("mesh.local").jwks()["keys"][0]
    secret = {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}  # a shared secret: never a JWT key
    encryption = {**good, "kid": "enc", "use": "enc"}
    hmac_alg = {**good, "kid": "hmac", "alg": "HS256"}
    no_kid = {k: v for k, v in good.items() if k != "kid"}
    broken = {**good, "kid": "broken", "x": "AAAA"}
    document = {"keys": [good, secret, encryption, hmac_alg, no_kid, broken, "junk"]}
    assert list(parse_jwks(json.dumps(document).encode())) == [good["kid"]]


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"keys": {}}', json.dumps({"keys": [{}] * 17}).encode()]
)
def test_what_is_no_jwks_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="expected a"):
        parse_jwks(body)


def test_the_key_cache_keeps_the_last_good_keys_and_refreshes_at_most_so_often() -> None:
    issuer = JWTIssuer.create("mesh.local")
    answers = [json.dumps(issuer.jwks()).encode()]
    fetched = threading.Event()
    calls: list[float] = []
    now = [100.0]

    def fetch() -> bytes:
        calls.append(now[0])
        fetched.set()
        if not answers:
            raise OSError("connection refused")
        return answers.pop()

    cache = JWKSCache(fetch, clock=lambda: now[0], min_interval=5.0)
    assert cache.keys() == {}
    cache.stale()  # the first fetch runs in a thread of its own
    assert fetched.wait(5)
    deadline = time.monotonic() + 5
    while not cache.keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(cache.keys()) == [issuer.kid]
    fetched.clear()
    now[0] += 1
    cache.stale()  # within five seconds of the last: a flood of unknown kids costs nothing
    assert not fetched.wait(0.2) and calls == [100.0]
    now[0] += 5
    assert cache.refresh() is False  # the control plane is down: keep what there is
    assert list(cache.keys()) == [issuer.kid] and calls == [100.0, 106.0]


def test_the_minter_asks_once_per_audience_and_backs_off_when_refused() -> None:
    issuer = JWTIssuer.create("mesh.local")
    now = [1000.0]
    asked: list[str] = []
    down = [False]

    def fetch(audience: str) -> str:
        asked.append(audience)
        if down[0]:
            raise LookupError("control plane down")
        return issuer.sign(ORDERS, audience, now[0])[0]

    minter = TokenMinter(IdentityStore(), fetch=fetch, clock=lambda: now[0], rand=lambda: 1.0)
    assert minter.needs_io
    first = minter.token_for(PAYMENTS)
    assert first is not None and minter.token_for(PAYMENTS) == first
    assert minter.cached(PAYMENTS) == first and asked == [PAYMENTS]
    assert verifier_for(issuer).verify(first.decode(), now[0]) == (ORDERS, None)
    now[0] += 151  # past half its life, and the control plane is down
    down[0] = True
    assert minter.token_for(PAYMENTS) is None and len(asked) == 2
    assert minter.token_for(PAYMENTS) is None and len(asked) == 2  # backing off: not asked
    now[0] += 1.01  # full jitter with rand=1: the first backoff is one second
    assert minter.token_for(PAYMENTS) is None and len(asked) == 3
    now[0] += 1.5
    assert minter.token_for(PAYMENTS) is None and len(asked) == 3  # now two seconds
    down[0] = False
    now[0] += 0.6
    assert minter.token_for(PAYMENTS) is not None and len(asked) == 4


def test_a_burst_of_first_calls_asks_the_control_plane_once() -> None:
    issuer = JWTIssuer.create("mesh.local")
    asked: list[str] = []
    gate = threading.Event()

    def fetch(audience: str) -> str:
        asked.append(audience)
        gate.wait(5)
        return issuer.sign(ORDERS, audience, time.time())[0]

    minter = TokenMinter(IdentityStore(), fetch=fetch)
    results: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(minter.token_for(PAYMENTS)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert asked == [PAYMENTS]
    assert len(results) == 8 and len(set(results)) == 1 and results[0] is not None
