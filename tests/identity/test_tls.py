"""TLS with SPIFFE IDs over real loopback sockets: the caller checks the server's ID before it
sends a byte (sync httpx, and async under asyncio and trio), the server asks for optional client
certificates, and rotations reach new handshakes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from asgimesh.identity import IdentityStore, parse_svid
from asgimesh.identity._tls import MeshClientContext, identity_mismatch, server_context
from asgimesh.testing import ThrowawayCA

from .tls_server import TLSServer, store_for, tls_server

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


@pytest.fixture
def payments(ca: ThrowawayCA) -> Iterator[tuple[TLSServer, IdentityStore]]:
    store = store_for(ca, PAYMENTS)
    with tls_server(server_context(store)) as server:
        yield server, store
    store.close()


@pytest.fixture
def orders(ca: ThrowawayCA) -> Iterator[IdentityStore]:
    store = store_for(ca, ORDERS)
    yield store
    store.close()


def test_sync_call_with_the_right_id_is_mutual(payments, orders) -> None:
    server, _ = payments
    with httpx.Client(verify=MeshClientContext(PAYMENTS, orders)) as client:
        response = client.get(server.url + "/charge")
    assert response.status_code == 200 and response.text == "ok"
    assert server.clients == [[ORDERS]]  # the server saw the caller's verified ID
    assert server.received[0].startswith(b"GET /charge HTTP/1.1")


def test_sync_call_to_the_wrong_id_is_refused_before_sending(payments, orders) -> None:
    server, _ = payments
    with (
        httpx.Client(verify=MeshClientContext(ORDERS, orders)) as client,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        client.get(server.url + "/charge")
    message = str(caught.value)
    assert f"expected {ORDERS}" in message and f"presented {PAYMENTS}" in message
    time.sleep(0.2)
    assert all(data == b"" for data in server.received)  # not a byte of the request


@pytest.mark.anyio
async def test_async_call_to_the_wrong_id_is_refused_before_sending(payments, orders) -> None:
    server, _ = payments
    async with httpx.AsyncClient(verify=MeshClientContext(ORDERS, orders)) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(server.url + "/charge")
        # Under trio httpx's own message is empty (trio re-raises a failed handshake bare): the
        # mesh's transport restores it from the cause chain.
        assert identity_mismatch(caught.value) == (
            f"mesh identity mismatch: expected {ORDERS}, the server presented {PAYMENTS}"
        )
        import anyio

        await anyio.sleep(0.2)
        assert all(data == b"" for data in server.received)
        good = MeshClientContext(PAYMENTS, orders)
    async with httpx.AsyncClient(verify=good) as client:
        response = await client.get(server.url + "/charge")
    assert response.status_code == 200
    assert server.clients[-1] == [ORDERS]


def test_a_server_of_a_foreign_ca_is_refused(orders) -> None:
    foreign = store_for(ThrowawayCA("mesh.local"), PAYMENTS)
    with tls_server(server_context(foreign)) as server:
        with (
            httpx.Client(verify=MeshClientContext(PAYMENTS, orders)) as client,
            pytest.raises(httpx.ConnectError, match="certificate verify failed"),
        ):
            client.get(server.url + "/")
        assert all(data == b"" for data in server.received)
    foreign.close()


def test_a_caller_without_a_certificate_still_completes_the_handshake(payments, ca) -> None:
    server, _ = payments
    with httpx.Client(verify=MeshClientContext(PAYMENTS, bundle_pem=ca.bundle_pem)) as client:
        response = client.get(server.url + "/")
    assert response.status_code == 200
    assert server.clients == [[]]  # no client certificate: the mesh answers 401, not TLS


def test_a_caller_of_a_foreign_ca_fails_the_handshake(payments, ca) -> None:
    server, _ = payments
    stranger = store_for(ThrowawayCA("mesh.local"), ORDERS)
    context = MeshClientContext(PAYMENTS, stranger)
    context.load_verify_locations(cadata=ca.bundle_pem.decode())  # it trusts the server...
    with httpx.Client(verify=context) as client, pytest.raises(httpx.HTTPError):
        client.get(server.url + "/")
    time.sleep(0.2)
    assert server.received == [] or all(data == b"" for data in server.received)
    assert server.handshake_errors  # ...but the server does not trust it
    stranger.close()


def test_rotations_reach_new_handshakes_on_both_sides(payments, orders, ca) -> None:
    server, payments_store = payments
    context = MeshClientContext(PAYMENTS, orders)

    def call() -> int:
        from cryptography import x509

        with httpx.Client(verify=context) as client, client.stream("GET", server.url) as response:
            ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
            der = ssl_object.getpeercert(True)
            response.read()
        return x509.load_der_x509_certificate(der).serial_number

    before = call()
    assert before == payments_store.current.serial
    rotated = ca.issue(PAYMENTS)
    payments_store.set(
        parse_svid(rotated.cert_pem, rotated.key_pem, rotated.bundle_pem,
                   trust_domain="mesh.local", source="rotated")
    )
    assert call() == rotated.certificate.serial_number  # the server presents the new one
    new_orders = ca.issue(ORDERS)
    orders.set(
        parse_svid(new_orders.cert_pem, new_orders.key_pem, new_orders.bundle_pem,
                   trust_domain="mesh.local", source="rotated")
    )
    call()
    assert server.clients[-1] == [ORDERS]
