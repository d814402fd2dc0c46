"""Who is calling, without sockets: TLS chains, forwarded certificates from trusted proxies only,
MESH_MTLS strict and permissive, and authorization by verified ID."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.inbound._authentication import Authenticator, TrustedProxies, parse_xfcc
from asgimesh.inbound._decide import InboundCore
from asgimesh.testing import ThrowawayCA

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
WEB = "spiffe://mesh.local/ns/default/sa/web"
PROXY = "10.0.0.7"
NOW = 1000.0


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


@pytest.fixture(scope="module")
def orders_pem(ca: ThrowawayCA) -> str:
    return ca.issue(ORDERS).cert_pem.decode()


def authenticator(ca: ThrowawayCA) -> tuple[Authenticator, list[str]]:
    failures: list[str] = []
    bundle = (ca.certificate,)
    return Authenticator("mesh.local", lambda: bundle, on_failure=failures.append), failures


TRUSTED = TrustedProxies([PROXY, "192.168.0.0/16"])


def test_a_verified_tls_chain_names_the_caller(ca, orders_pem) -> None:
    auth, failures = authenticator(ca)
    assert auth.authenticate([orders_pem], {}, "127.0.0.1", None, time.time()) == ORDERS
    assert failures == []
    assert len(auth._cache) == 1
    assert auth.authenticate([orders_pem], {}, "127.0.0.1", None, time.time()) == ORDERS
    assert len(auth._cache) == 1  # the second request of a connection: one lookup


def test_a_chain_of_another_ca_is_no_identity(ca) -> None:
    auth, failures = authenticator(ca)
    foreign = ThrowawayCA("mesh.local").issue(ORDERS).cert_pem.decode()
    assert auth.authenticate([foreign], {}, None, None, time.time()) is None
    assert failures == ["untrusted_certificate"]


def test_an_expired_certificate_is_no_identity(ca, orders_pem) -> None:
    auth, failures = authenticator(ca)
    later = time.time() + 3 * 3600  # the ThrowawayCA's certificates live an hour
    assert auth.authenticate([orders_pem], {}, None, None, later) is None
    assert failures == ["untrusted_certificate"]


def test_garbage_chains_are_no_identity(ca) -> None:
    auth, failures = authenticator(ca)
    assert auth.authenticate(["not pem"], {}, None, None, time.time()) is None
    assert failures == ["untrusted_certificate"]


def test_xfcc_uri_from_a_trusted_proxy(ca) -> None:
    auth, failures = authenticator(ca)
    xfcc = f'By=spiffe://mesh.local/ns/default/sa/edge;Hash=abc;URI={ORDERS}'
    fields = {"x-forwarded-client-cert": xfcc}
    assert auth.authenticate(None, fields, PROXY, TRUSTED, time.time()) == ORDERS
    assert auth.authenticate(None, fields, "192.168.3.4", TRUSTED, time.time()) == ORDERS
    assert failures == []


def test_xfcc_cert_from_a_trusted_proxy_is_verified(ca, orders_pem) -> None:
    auth, failures = authenticator(ca)
    good = {"x-forwarded-client-cert": f'Hash=abc;Cert="{quote(orders_pem)}";URI={ORDERS}'}
    assert auth.authenticate(None, good, PROXY, TRUSTED, time.time()) == ORDERS
    forged_pem = ThrowawayCA("mesh.local").issue(ORDERS).cert_pem.decode()
    forged = {"x-forwarded-client-cert": f'Cert="{quote(forged_pem)}";URI={ORDERS}'}
    # The URI is not taken when the Cert it comes with does not verify.
    assert auth.authenticate(None, forged, PROXY, TRUSTED, time.time()) is None
    assert failures == ["untrusted_certificate"]


@pytest.mark.parametrize("client", ["10.0.0.8", "127.0.0.1", None, "not-an-ip"])
def test_forwarded_certificates_from_anyone_else_are_ignored(ca, orders_pem, client) -> None:
    auth, failures = authenticator(ca)
    der = ca.issue(ORDERS).certificate.public_bytes(serialization.Encoding.DER)
    for fields in (
        {"x-forwarded-client-cert": f"URI={ORDERS}"},
        {"client-cert": f":{base64.b64encode(der).decode()}:"},
    ):
        assert auth.authenticate(None, fields, client, TRUSTED, time.time()) is None
        assert auth.authenticate(None, fields, PROXY, None, time.time()) is None  # no proxies
    assert set(failures) == {"untrusted_proxy"}


def test_rfc9440_client_cert_from_a_trusted_proxy(ca) -> None:
    auth, failures = authenticator(ca)
    der = ca.issue(ORDERS).certificate.public_bytes(serialization.Encoding.DER)
    fields = {"client-cert": f":{base64.b64encode(der).decode()}:"}
    assert auth.authenticate(None, fields, PROXY, TRUSTED, time.time()) == ORDERS
    for bad in ("no-colons", ":!!!:", "::", ":" + "A" * 20000 + ":"):
        assert auth.authenticate(None, {"client-cert": bad}, PROXY, TRUSTED, time.time()) is None
    assert failures == ["invalid_forwarded", "untrusted_certificate", "invalid_forwarded",
                        "invalid_forwarded"]


@pytest.mark.parametrize(
    "uri", ["spiffe://elsewhere/ns/a/sa/b", "https://orders", "spiffe://mesh.local/a/../b", ""]
)
def test_xfcc_uris_that_are_not_ours_are_refused(ca, uri) -> None:
    auth, failures = authenticator(ca)
    fields = {"x-forwarded-client-cert": f"URI={uri}"}
    assert auth.authenticate(None, fields, PROXY, TRUSTED, time.time()) is None
    assert failures == ["invalid_forwarded"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("URI=spiffe://a/b", {"uri": "spiffe://a/b"}),
        ('By=x;Cert="a,b;c";URI=u', {"by": "x", "cert": "a,b;c", "uri": "u"}),
        ("URI=first,URI=second", {"uri": "second"}),  # the last element: the nearest proxy's
        ('Cert="with \\"quote\\""', {"cert": 'with "quote"'}),
        ('Cert="unterminated', None),
        ("novalue", None),
        ("=x", None),
        ("", None),
    ],
)
def test_parse_xfcc(value: str, expected) -> None:
    assert parse_xfcc(value) == expected


def test_trusted_proxies() -> None:
    proxies = TrustedProxies(["10.0.0.7", "192.168.0.0/16", "fd00::/8"])
    assert "10.0.0.7" in proxies and "192.168.255.1" in proxies and "fd00::1" in proxies
    assert "::ffff:10.0.0.7" in proxies and "::ffff:192.168.0.9" in proxies
    assert "10.0.0.8" not in proxies and "junk" not in proxies and None not in proxies
    assert not TrustedProxies([])


# ---- the core: MESH_MTLS and authorization -----------------------------------------------------


@pytest.fixture
def runtime_for(ca, tmp_path):
    made = []

    def make(mtls: str, inbound: dict | None = None) -> MeshRuntime:
        files = ca.issue(WEB).write(tmp_path / f"id{len(made)}")
        settings = MeshSettings.from_env(
            service="web", mtls=mtls, cert=files.cert, key=files.key, ca=files.ca,
            policy=json.dumps({"inbound": {"web": inbound}}) if inbound else None,
        )
        runtime = MeshRuntime(settings, start=False)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def failures(runtime: MeshRuntime, reason: str) -> float:
    labels = {"service": "web", "reason": reason}
    return runtime.metrics.registry.get_sample_value("mesh_authn_failures_total", labels) or 0.0


def test_strict_answers_401_without_an_identity(runtime_for, orders_pem) -> None:
    runtime = runtime_for("strict")
    core = InboundCore.for_runtime(runtime)
    refused = core.decide("GET", "/", {}, "127.0.0.1")
    assert refused.answer is not None and refused.answer.status == 401
    assert json.loads(refused.answer.body)["error"] == "unauthenticated"
    assert failures(runtime, "missing") == 1
    allowed = core.decide("GET", "/", {}, "127.0.0.1", peer_chain=[orders_pem])
    assert allowed.answer is None and allowed.context is not None
    assert allowed.context.caller == ORDERS
    # Probes reach the health path without an identity.
    health = core.decide("GET", "/_mesh/health", {}, "127.0.0.1")
    assert health.answer is not None and health.answer.status == 200


def test_permissive_serves_callers_without_an_identity(runtime_for, orders_pem) -> None:
    core = InboundCore.for_runtime(runtime_for("permissive"))
    anonymous = core.decide("GET", "/", {}, "127.0.0.1")
    assert anonymous.answer is None and anonymous.context.caller is None
    known = core.decide("GET", "/", {}, "127.0.0.1", peer_chain=[orders_pem])
    assert known.context.caller == ORDERS


def test_off_believes_no_identity(ca, orders_pem) -> None:
    runtime = MeshRuntime(MeshSettings.from_env(service="web"), start=False)
    core = InboundCore.for_runtime(runtime)
    assert core.authenticator is None
    assert core.decide("GET", "/", {}, None, peer_chain=[orders_pem]).context.caller is None
    runtime.close()


def test_authorization_matches_verified_ids_exactly_or_by_prefix(runtime_for, ca) -> None:
    inbound = {
        "authorization": [
            {"allow": {"from": [ORDERS], "methods": ["POST"], "paths": ["/charge"]}},
            {"allow": {"from": ["spiffe://mesh.local/ns/ops/*"], "paths": ["/admin/*"]}},
        ]
    }
    core = InboundCore.for_runtime(runtime_for("permissive", inbound))

    def status(method: str, path: str, spiffe_id: str | None) -> int:
        chain = [ca.issue(spiffe_id).cert_pem.decode()] if spiffe_id else None
        exchange = core.decide(method, path, {}, None, peer_chain=chain)
        exchange.finish()
        return exchange.answer.status if exchange.answer is not None else 200

    assert status("POST", "/charge", ORDERS) == 200
    assert status("POST", "/charge", "spiffe://mesh.local/ns/default/sa/orders-v2") == 403
    assert status("POST", "/charge", None) == 403  # permissive: no identity and a rule asks: 403
    assert status("GET", "/admin/users", "spiffe://mesh.local/ns/ops/sa/oncall") == 200
    assert status("GET", "/admin/users", "spiffe://mesh.local/ns/opsx/sa/oncall") == 403


def test_an_empty_from_matches_nobody(runtime_for, ca) -> None:
    core = InboundCore.for_runtime(runtime_for("permissive", {"authorization": [{"allow": {"from": []}}]}))
    chain = [ca.issue(ORDERS).cert_pem.decode()]
    assert core.decide("GET", "/", {}, None, peer_chain=chain).answer.status == 403


def test_forwarded_identities_are_believed_from_the_policy_s_proxies_only(runtime_for) -> None:
    core = InboundCore.for_runtime(runtime_for("strict", {"trusted_proxies": [PROXY]}))
    fields = {"x-forwarded-client-cert": f"URI={ORDERS}"}
    assert core.decide("GET", "/", fields, PROXY).context.caller == ORDERS
    stranger = core.decide("GET", "/", fields, "10.9.9.9")
    assert stranger.answer is not None and stranger.answer.status == 401


def test_a_mesh_identity_token_names_the_caller(runtime_for, ca) -> None:
    from asgimesh.identity import IdentityStore, parse_svid
    from asgimesh.identity._jwt import sign_with_svid

    runtime = runtime_for("strict")
    core = InboundCore.for_runtime(runtime)
    issued = ca.issue(ORDERS)
    caller = IdentityStore()
    caller.set(parse_svid(issued.cert_pem, issued.key_pem, issued.bundle_pem,
                          trust_domain="mesh.local", source="caller"))
    token = sign_with_svid(caller, WEB, time.time(), 300)
    exchange = core.decide("GET", "/", {"mesh-identity": token}, None)
    assert exchange.answer is None and exchange.context.caller == ORDERS
    # A token for another service is no identity here: strict answers 401 and counts why.
    other = sign_with_svid(caller, "spiffe://mesh.local/ns/default/sa/other", time.time(), 300)
    refused = core.decide("GET", "/", {"mesh-identity": other}, None)
    assert refused.answer is not None and refused.answer.status == 401
    assert failures(runtime, "invalid_token") == 1 and failures(runtime, "missing") == 1
    # The TLS chain comes first: a verified certificate wins over a token.
    chain = [ca.issue("spiffe://mesh.local/ns/default/sa/tls").cert_pem.decode()]
    both = core.decide("GET", "/", {"mesh-identity": token}, None, peer_chain=chain)
    assert both.context.caller == "spiffe://mesh.local/ns/default/sa/tls"
    caller.close()
