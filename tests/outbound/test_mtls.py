"""Outbound mTLS through the mesh's transports, over real loopback sockets: a mesh service's
``https://`` endpoint is dialled with this service's certificate and must present the ID of
the service the app meant to call, checked before a byte of the request is sent (sync httpx,
and async under asyncio and trio); under ``MESH_MTLS=strict`` a plain ``http://`` endpoint
is refused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asgimesh import AsyncMeshTransport, MeshRuntime, MeshSettings, MeshTransport
from asgimesh.identity import IdentityStore
from asgimesh.identity._tls import server_context
from asgimesh.testing import ThrowawayCA
from tests.identity.tls_server import TLSServer, store_for, svid_for, tls_server

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"
BILLING = "spiffe://mesh.local/ns/default/sa/billing"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


@pytest.fixture
def payments(ca: ThrowawayCA) -> Iterator[TLSServer]:
    """An HTTPS server presenting the payments ID (it records what each connection sent)."""
    store = store_for(ca, PAYMENTS)
    with tls_server(server_context(store)) as server:
        yield server
    store.close()


@pytest.fixture
def make_orders(ca: ThrowawayCA, tmp_path: Path) -> Iterator[Callable[..., MeshRuntime]]:
    """``make_orders(upstreams=..., mtls=..., ...)``: the calling service, ``orders``, with its
    certificate in files (``MESH_CERT`` ...); every runtime made is closed afterwards."""
    files = ca.issue(ORDERS).write(tmp_path)
    made: list[MeshRuntime] = []

    def make(**settings: Any) -> MeshRuntime:
        settings = {"mtls": "permissive", **settings}
        runtime = MeshRuntime(
            MeshSettings.from_env(
                service="orders", cert=files.cert, key=files.key, ca=files.ca, **settings
            ),
            start=False,
        )
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def orders(make_orders: Callable[..., MeshRuntime], payments: TLSServer) -> MeshRuntime:
    """``orders`` with two mesh services on the same server: ``payments`` (the right ID) and
    ``billing`` (not)."""
    return make_orders(upstreams=f"payments={payments.url};billing={payments.url}")


def test_sync_call_presents_the_callers_certificate(orders, payments) -> None:
    with httpx.Client(transport=MeshTransport(runtime=orders)) as client:
        response = client.get("http://payments/charge")
    assert response.status_code == 200 and response.text == "ok"
    assert payments.clients[-1] == [ORDERS]  # the server verified who called
    assert payments.received[-1].startswith(b"GET /charge HTTP/1.1")


def test_sync_call_to_a_server_with_another_id_is_refused_before_sending(orders, payments) -> None:
    with (
        httpx.Client(transport=MeshTransport(runtime=orders)) as client,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        client.get("http://billing/invoice")
    message = str(caught.value)
    assert f"expected {BILLING}" in message and f"presented {PAYMENTS}" in message
    time.sleep(0.2)
    assert payments.received and all(data == b"" for data in payments.received)


@pytest.mark.anyio
async def test_async_calls_check_the_id_under_each_event_loop(orders, payments) -> None:
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=orders)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get("http://billing/invoice")
        # trio re-raises a failed handshake without a message: the transport restores it.
        message = str(caught.value)
        assert f"expected {BILLING}" in message and f"presented {PAYMENTS}" in message
        await anyio.sleep(0.2)
        assert all(data == b"" for data in payments.received)
        response = await client.get("http://payments/charge")
    assert response.status_code == 200
    assert payments.clients[-1] == [ORDERS]


def test_the_callers_own_verify_still_applies_to_hosts_outside_the_mesh(orders, payments) -> None:
    """``verify`` keeps its meaning for hosts that are not mesh services: the default trust
    store does not know the mesh's CA, so a plain https call to the same server fails."""
    with (
        httpx.Client(transport=MeshTransport(runtime=orders)) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(payments.url + "/charge")


def test_strict_refuses_a_plain_http_endpoint_naming_it(make_orders) -> None:
    runtime = make_orders(mtls="strict", upstreams="payments=http://127.0.0.1:9")
    with (
        httpx.Client(transport=MeshTransport(runtime=runtime)) as client,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        client.get("http://payments/charge")
    assert "'payments'" in str(caught.value) and "http://127.0.0.1:9" in str(caught.value)
    assert "MESH_MTLS=strict" in str(caught.value)


def test_a_call_before_the_first_certificate_waits_for_it(orders, payments, ca) -> None:
    orders.identity = IdentityStore()  # as a service whose CSR the control plane has not answered
    timer = threading.Timer(0.3, lambda: orders.identity.set(svid_for(ca, ORDERS)))
    timer.start()
    try:
        started = time.monotonic()
        with httpx.Client(transport=MeshTransport(runtime=orders)) as client:
            response = client.get("http://payments/charge")
    finally:
        timer.join()
        orders.identity.close()
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.25
    assert payments.clients[-1] == [ORDERS]


def test_no_certificate_within_the_deadline_is_a_clear_connect_error(make_orders, payments) -> None:
    runtime = make_orders(upstreams=f"payments={payments.url}", timeout="300ms")
    runtime.identity = IdentityStore()  # as a service whose CSR the control plane has not answered
    with (
        httpx.Client(transport=MeshTransport(runtime=runtime)) as client,
        pytest.raises(httpx.ConnectError, match="no certificate") as caught,
    ):
        client.get("http://payments/charge")
    assert "'payments'" in str(caught.value)
    assert payments.received == []  # not even a connection


@pytest.mark.anyio
async def test_a_policy_identity_names_the_id_a_service_must_present(orders, payments) -> None:
    """``billing`` is served by the payments workload: its policy ``identity`` says so, the
    call goes through; the policy changed back, the next connection is refused again."""
    def billing_presents(spiffe_id: str) -> None:
        billing = {"endpoints": [payments.url], "identity": spiffe_id}
        orders.policy.apply({"services": {"billing": billing}}, source="test")

    billing_presents(PAYMENTS)
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=orders)) as client:
        response = await client.get("http://billing/invoice")
        assert response.status_code == 200
        assert payments.received[-1].startswith(b"GET /invoice HTTP/1.1")
        billing_presents(BILLING)
        with pytest.raises(httpx.ConnectError, match=f"expected {BILLING}"):
            await client.get("http://billing/invoice")


def test_a_policy_identity_applies_to_sync_calls_too(orders, payments) -> None:
    with httpx.Client(transport=MeshTransport(runtime=orders)) as client:
        with pytest.raises(httpx.ConnectError, match=f"expected {BILLING}"):
            client.get("http://billing/invoice")
        billing = {"endpoints": [payments.url], "identity": PAYMENTS}
        orders.policy.apply({"services": {"billing": billing}}, source="test")
        assert client.get("http://billing/invoice").status_code == 200
    assert payments.clients[-1] == [ORDERS]


def test_a_policy_identity_must_be_a_spiffe_id() -> None:
    from asgimesh import Policy, PolicyError
    from asgimesh.policy import validate_document

    with pytest.raises(PolicyError) as caught:
        validate_document({"services": {"billing": {"identity": "https://billing"}}})
    assert "services.billing.identity" in str(caught.value)
    assert "expected a SPIFFE ID" in str(caught.value) and "'https://billing'" in str(caught.value)
    assert Policy.model_validate({"services": {"b": {"identity": PAYMENTS}}}).services[
        "b"
    ].identity == PAYMENTS
