"""Identities issued by a real control plane (``asgimesh.testing.control_plane``: the server's
app on uvicorn in a thread, over loopback sockets), and the renewal schedule without sockets."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from asgimesh import MeshRuntime, MeshSettings
from asgimesh.identity import IdentityError, IdentityStore, verify_chain
from asgimesh.identity._issuer import ControlPlaneIssuer, RenewalSchedule
from asgimesh.testing import ControlPlaneHandle, ThrowawayCA, control_plane

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlaneHandle]:
    with control_plane() as handle:
        yield handle


def token_for(cp: ControlPlaneHandle, service: str) -> str:
    response = httpx.post(
        cp.url + "/v1/tokens", json={"service": service}, headers=cp.admin_headers, timeout=5
    )
    response.raise_for_status()
    return str(response.json()["token"])


def test_a_service_token_gets_a_certificate_for_its_own_id(cp: ControlPlaneHandle) -> None:
    store = IdentityStore()
    issuer = ControlPlaneIssuer(
        cp.url, token_for(cp, "orders"), store, spiffe_id=ORDERS, trust_domain="mesh.local"
    )
    svid = issuer.issue()
    assert store.current is svid and svid.spiffe_id == ORDERS
    assert verify_chain(svid.chain, svid.bundle) is None
    bundle = httpx.get(cp.url + "/v1/trust-bundle", timeout=5).content
    assert svid.bundle_pem() == bundle
    assert svid.expires_at - svid.not_before > (svid.expires_at - svid.not_before) / 2
    # The next request is due half-way through its life.
    assert issuer.schedule.next_at == pytest.approx(svid.renew_at().timestamp())
    # A new key for every certificate: a renewal never reuses the last key.
    again = issuer.issue()
    assert again.key_pem() != svid.key_pem() and again.serial != svid.serial
    store.close()


def test_a_token_of_another_service_is_never_taken(cp: ControlPlaneHandle) -> None:
    store = IdentityStore()
    issuer = ControlPlaneIssuer(
        cp.url, token_for(cp, "payments"), store, spiffe_id=ORDERS, trust_domain="mesh.local"
    )
    with pytest.raises(IdentityError, match=r"issued spiffe://mesh\.local/ns/default/sa/payments"):
        issuer.issue()
    assert store.current is None


def test_a_refused_token_says_what_to_do(cp: ControlPlaneHandle) -> None:
    issuer = ControlPlaneIssuer(
        cp.url, "mst_wrong", IdentityStore(), spiffe_id=ORDERS, trust_domain="mesh.local"
    )
    with pytest.raises(IdentityError, match=r"refused MESH_TOKEN .*asgimesh token create"):
        issuer.issue()


def test_a_bundle_pinned_to_another_ca_refuses_the_answer(cp: ControlPlaneHandle) -> None:
    issuer = ControlPlaneIssuer(
        cp.url,
        token_for(cp, "orders"),
        IdentityStore(),
        spiffe_id=ORDERS,
        trust_domain="mesh.local",
        bundle_pem=ThrowawayCA().bundle_pem,  # MESH_CA pins another CA
    )
    with pytest.raises(IdentityError, match="does not verify against the trust bundle"):
        issuer.issue()


def test_an_unreachable_control_plane_is_retried_with_backoff() -> None:
    import socket

    with socket.socket() as sock:  # a port that refuses: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        issuer = ControlPlaneIssuer(
            url, "t", IdentityStore(), spiffe_id=ORDERS, trust_domain="mesh.local",
            timeout=1.0, schedule=RenewalSchedule(rand=lambda: 1.0),
        )
        before = time.time()
        assert issuer._attempt() is False
        assert issuer._attempt() is False
    assert issuer.schedule.failures == 2
    assert before + 1.9 <= issuer.schedule.next_at <= time.time() + 2.1  # 1 s, then 2 s


def test_renewal_schedule_backs_off_with_full_jitter_and_resets() -> None:
    draws = iter([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    schedule = RenewalSchedule(base=1.0, cap=8.0, rand=lambda: next(draws))
    assert schedule.due(0.0)
    delays = [schedule.failed(100.0) for _ in range(6)]
    assert delays == [0.5, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert not schedule.due(107.9) and schedule.due(108.0)
    svid = ThrowawayCA().issue(ORDERS)
    from asgimesh.identity import parse_svid

    parsed = parse_svid(
        svid.cert_pem, svid.key_pem, svid.bundle_pem, trust_domain="mesh.local", source="t"
    )
    schedule.succeeded(parsed, parsed.not_before.timestamp() - 60)  # a clock behind the CA's
    assert schedule.failures == 0 and schedule.next_at == parsed.renew_at().timestamp()
    # A certificate backdated for skew (5 min) and living 4 s: due half-way from its arrival,
    # not at once (half-way from not_before is long past).
    backdated = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    issued = ThrowawayCA().issue(
        ORDERS, not_before=backdated, lifetime=datetime.timedelta(minutes=5, seconds=4)
    )
    short = parse_svid(
        issued.cert_pem, issued.key_pem, issued.bundle_pem, trust_domain="mesh.local", source="t"
    )
    arrived = short.expires_at.timestamp() - 4
    schedule.succeeded(short, arrived)
    assert schedule.next_at == pytest.approx(arrived + 2)


def test_runtime_gets_its_identity_from_the_control_plane(cp: ControlPlaneHandle) -> None:
    settings = MeshSettings.from_env(
        service="orders", config=cp.url, token=token_for(cp, "orders")
    )
    runtime = MeshRuntime(settings)
    try:
        assert runtime.identity.wait(5) is not None
        assert runtime.identity.current is not None
        assert runtime.identity.current.spiffe_id == ORDERS
        threads = {t.name for t in threading.enumerate()}
        assert "asgimesh-identity-renewal" in threads
    finally:
        runtime.close()


def test_serverless_mode_gets_its_identity_inside_requests(cp: ControlPlaneHandle) -> None:
    settings = MeshSettings.from_env(
        service="orders", config=cp.url + "?refresh=30s", token=token_for(cp, "orders")
    )
    runtime = MeshRuntime(settings)
    try:
        # No background renewal: the identity comes from the per-request hook only.
        assert "asgimesh-identity-renewal" not in {t.name for t in threading.enumerate()}
        assert runtime.on_request is not None
        assert runtime.identity.wait(5) is not None  # started by load(), as a first request
        issuer = runtime.identity_source
        assert isinstance(issuer, ControlPlaneIssuer)
        first = runtime.identity.current
        assert first is not None
        issuer.schedule.next_at = 0.0  # make a renewal due
        deadline = time.monotonic() + 5
        while runtime.identity.current is first and time.monotonic() < deadline:
            started = time.monotonic()
            runtime.on_request()  # as each request does: never waits...
            assert time.monotonic() - started < 0.05
            time.sleep(0.02)
        assert runtime.identity.current is not first  # ...and the renewal landed
    finally:
        runtime.close()


@pytest.mark.anyio
async def test_wait_async_waits_for_the_first_identity_without_blocking() -> None:
    import anyio

    store = IdentityStore()
    assert await store.wait_async(0.05) is None
    ca = ThrowawayCA()
    from asgimesh.identity import parse_svid

    issued = ca.issue(ORDERS)
    svid = parse_svid(
        issued.cert_pem, issued.key_pem, issued.bundle_pem, trust_domain="mesh.local", source="t"
    )

    async def later() -> None:
        await anyio.sleep(0.05)
        store.set(svid)

    async with anyio.create_task_group() as group:
        group.start_soon(later)
        assert await store.wait_async(5) is svid
    store.close()
