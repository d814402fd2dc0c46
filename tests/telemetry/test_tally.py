"""``InboundTally`` exposes exactly what ``prometheus_client``'s ``Counter`` and ``Histogram``
would for the same requests, and loses no count under threads."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from asgimesh.telemetry._metrics import LATENCY_BUCKETS, MeshMetrics
from asgimesh.telemetry._tally import InboundTally

REQUESTS = [
    ("GET", "200", 0.0003),
    ("GET", "200", 0.0005),  # on a bound: counted in that bucket ("le")
    ("GET", "200", 0.02),
    ("POST", "201", 1.7),
    ("GET", "503", 0.004),
    ("_OTHER", "404", 31.0),  # past the last bound: +Inf only
]


def _without_created(text: bytes) -> list[str]:
    """Exposition lines, less the ``_created`` series (timestamps of when each began)."""
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_exposition_is_what_prometheus_client_would_write() -> None:
    ours = CollectorRegistry(auto_describe=True)
    tally = InboundTally("orders", LATENCY_BUCKETS)
    ours.register(tally)
    reference = CollectorRegistry(auto_describe=True)
    counter = Counter(
        "mesh_inbound_requests",
        "Inbound requests handled, by method and status.",
        ["service", "method", "status"],
        registry=reference,
    )
    histogram = Histogram(
        "mesh_inbound_request_duration_seconds",
        "Inbound request duration.",
        ["service"],
        buckets=LATENCY_BUCKETS,
        registry=reference,
    ).labels("orders")
    for method, status, seconds in REQUESTS:
        tally.record(method, status, seconds)
        counter.labels("orders", method, status).inc()
        histogram.observe(seconds)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(reference))
    # The counter's series still say when they began, as prometheus_client's do.
    created = re.findall(rb"^mesh_inbound_requests_created\{.*\} (\S+)$", generate_latest(ours), re.M)
    assert len(created) == 4


def test_a_registry_refuses_a_second_collector_of_the_same_names() -> None:
    """``describe`` names the families, so a clash is caught when registering."""
    registry = MeshMetrics("orders").registry
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(InboundTally("orders", LATENCY_BUCKETS))


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match=r"buckets: expected increasing bounds, got \[0.1, 0.01\]"):
        InboundTally("orders", (0.1, 0.01))


def test_no_count_is_lost_between_threads() -> None:
    metrics = MeshMetrics("orders")
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(5000):
            metrics.inbound.record("GET", "200", 0.001)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    labels = {"service": "orders", "method": "GET", "status": "200"}
    get = metrics.registry.get_sample_value
    assert get("mesh_inbound_requests_total", labels) == 40000
    assert get("mesh_inbound_request_duration_seconds_count", {"service": "orders"}) == 40000
    assert get("mesh_inbound_request_duration_seconds_sum", {"service": "orders"}) == pytest.approx(40.0)
