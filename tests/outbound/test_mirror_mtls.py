"""Mirrored copies under mTLS, over real loopback TLS servers: a copy to an ``https://``
endpoint is dialled with this service's certificate and must find the mirror target's ID there
(a server with another ID gets no request, and the copy is counted failed); the real call is
unaffected either way. Sync and async (asyncio, trio)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from asgimesh import AsyncMeshTransport, MeshRuntime, MeshSettings, MeshTransport
from asgimesh.identity._tls import server_context
from asgimesh.testing import ThrowawayCA
from tests.identity.tls_server import TLSServer, store_for, tls_server

ORDERS = "spiffe://mesh.local/ns/default/sa/orders"
PAYMENTS = "spiffe://mesh.local/ns/default/sa/payments"
BILLING = "spiffe://mesh.local/ns/default/sa/billing"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("mesh.local")


def _server(ca: ThrowawayCA, spiffe_id: str) -> Iterator[TLSServer]:
    store = store_for(ca, spiffe_id)
    with tls_server(server_context(store)) as server:
        yield server
    store.close()


@pytest.fixture
def payments(ca: ThrowawayCA) -> Iterator[TLSServer]:
    yield from _server(ca, PAYMENTS)


@pytest.fixture
def billing(ca: ThrowawayCA) -> Iterator[TLSServer]:
    yield from _server(ca, BILLING)


@pytest.fixture
def orders(ca: ThrowawayCA, tmp_path: Path, payments: TLSServer,
           billing: TLSServer) -> Iterator[MeshRuntime]:
    """``orders`` calling ``payments`` and copying every call to ``billing`` (its own server,
    the right ID) and to ``ledger`` (a server presenting payments' ID: the wrong one)."""
    files = ca.issue(ORDERS).write(tmp_path)
    policy = {"services": {
        "payments": {"mirror": {"service": "billing"},
                     "routes": [{"match": {"path": "/wrong"}, "mirror": {"service": "ledger"}}]},
    }}
    runtime = MeshRuntime(
        MeshSettings.from_env(
            service="orders", cert=files.cert, key=files.key, ca=files.ca, mtls="permissive",
            upstreams=f"payments={payments.url};billing={billing.url};ledger={payments.url}",
            policy=json.dumps(policy),
        ),
        start=False,
    )
    yield runtime
    runtime.close()


def mirrors(rt: MeshRuntime, upstream: str, result: str) -> float:
    labels = {"service": "orders", "upstream": upstream, "result": result}
    return rt.metrics.registry.get_sample_value("mesh_outbound_mirrors_total", labels) or 0.0


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def _calls(mode: str, orders: MeshRuntime, paths: list[str]) -> list[int]:
    if mode == "sync":
        with httpx.Client(transport=MeshTransport(runtime=orders)) as client:
            statuses = [client.get(f"http://payments{p}").status_code for p in paths]
            eventually(lambda: mirrors(orders, "billing", "sent") + mirrors(orders, "ledger", "failed")
                       == len(paths))
            return statuses

    async def main() -> list[int]:
        async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=orders)) as client:
            statuses = [(await client.get(f"http://payments{p}")).status_code for p in paths]
            for _ in range(500):  # the copies are counted within 10 s
                if mirrors(orders, "billing", "sent") + mirrors(orders, "ledger", "failed") == len(paths):
                    break
                await anyio.sleep(0.02)
            return statuses

    return list(anyio.run(main, backend=mode))


@pytest.mark.parametrize("mode", ["sync", "asyncio", "trio"])
def test_copies_are_dialled_with_mtls_and_checked_for_the_targets_id(
    mode: str, orders: MeshRuntime, payments: TLSServer, billing: TLSServer
) -> None:
    assert _calls(mode, orders, ["/charge", "/wrong"]) == [200, 200]
    assert mirrors(orders, "billing", "sent") == 1 and mirrors(orders, "ledger", "failed") == 1
    assert billing.clients[-1] == [ORDERS]  # billing verified who sent the copy
    copy = billing.received[-1]
    assert copy.startswith(b"GET /charge HTTP/1.1") and b"mesh-shadow: 1" in copy.lower()
    assert b"host: payments-shadow" in copy.lower()
    # The copy to the server with the wrong ID never sent a byte of its request; the real
    # calls (two, to payments) did.
    requests = [r for r in payments.received if r.startswith(b"GET ")]
    assert len(requests) == 2 and all(b"mesh-shadow" not in r for r in requests)
