"""Outlier detection through an Upstream: ejection, the cap, return and probing."""

from __future__ import annotations

import random

import pytest
from outbound_support import backend_config

from asgimesh.outbound._refusal import Refusal
from asgimesh.outbound._upstream import Upstream
from asgimesh.telemetry import MeshMetrics


def upstream(n: int = 4, **outlier: object) -> Upstream:
    config = backend_config(
        {"endpoints": [f"http://10.0.0.{i}:80" for i in range(n)],
         "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "30s",
                               "max_ejection_percent": 50, **outlier}}
    )
    return Upstream(config, MeshMetrics("test"), random.Random(1), 0.0)


def fail(up: Upstream, index: int, times: int, now: float) -> None:
    for _ in range(times):
        up.failed(up.endpoints[index], 0.001, 1.0, now)


def ejections(up: Upstream) -> float:
    return up.metrics._metrics.registry.get_sample_value(
        "mesh_outbound_ejections_total", {"service": "test", "upstream": "svc"}) or 0.0


def test_consecutive_failures_eject() -> None:
    up = upstream()
    fail(up, 0, 2, 0.0)
    assert up.endpoints[0] in up.available
    up.succeeded(up.endpoints[0], 0.001, 0.0)  # a success resets the count
    fail(up, 0, 2, 0.0)
    assert up.endpoints[0] in up.available
    fail(up, 0, 1, 0.0)
    assert up.endpoints[0] not in up.available and up.endpoints[0] in up.ejected
    assert ejections(up) == 1.0
    assert all(up.pick(1.0) is not up.endpoints[0] for _ in range(100))


def test_never_more_than_max_ejection_percent() -> None:
    up = upstream(4)  # 50% of 4: at most two out
    for i in range(4):
        fail(up, i, 3, 0.0)
    assert len(up.ejected) == 2 and len(up.available) == 2


def test_ejected_endpoint_returns_after_base_times_ejections_and_is_probed() -> None:
    up = upstream()
    e = up.endpoints[0]
    fail(up, 0, 3, 0.0)
    assert e.ejected_until == 30.0
    up.pick(29.9)
    assert e in up.ejected
    up.pick(30.0)
    assert e in up.available and e.probing
    # A probe that fails ejects it again at once, for twice as long.
    fail(up, 0, 1, 30.0)
    assert e in up.ejected and e.ejected_until == 30.0 + 60.0
    up.pick(90.0)
    assert e.probing
    up.succeeded(e, 0.001, 90.0)
    assert not e.probing and e in up.available
    fail(up, 0, 2, 90.5)
    assert e in up.available  # healthy again: needs the full count


def test_times_ejected_decays_while_healthy() -> None:
    up = upstream(interval="10s")
    e = up.endpoints[0]
    fail(up, 0, 3, 0.0)
    up.pick(30.0)
    up.succeeded(e, 0.001, 30.0)
    assert e.times_ejected == 1
    up.succeeded(e, 0.001, 41.0)
    assert e.times_ejected == 0


def test_all_ejected_is_circuit_open_and_none_is_no_endpoints() -> None:
    up = upstream(2, max_ejection_percent=100)
    fail(up, 0, 3, 0.0)
    fail(up, 1, 3, 0.0)
    with pytest.raises(Refusal) as caught:
        up.pick(1.0)
    assert caught.value.kind == "circuit-open"
    assert up.pick(31.0) in up.endpoints  # back after their time
    empty = Upstream(backend_config({"endpoints": []}), MeshMetrics("t"), random.Random(), 0.0)
    with pytest.raises(Refusal) as caught:
        empty.pick(0.0)
    assert caught.value.kind == "no-endpoints"


def test_new_endpoint_set_keeps_known_endpoints_state() -> None:
    up = upstream(2)
    up.endpoints[0].observe(0.5, 0.0)
    up.set_endpoints(["http://10.0.0.0:80", "http://10.0.0.9:80"], 1.0)
    assert [e.url for e in up.endpoints] == ["http://10.0.0.0:80", "http://10.0.0.9:80"]
    assert up.endpoints[0].rtt == 0.5


def test_failure_penalty_outweighs_a_loaded_healthy_peer() -> None:
    """Under load a healthy endpoint's cost (latency x queue) can exceed the per-try timeout;
    a fast-failing endpoint must still cost more than it after a failure."""
    up = upstream(2)
    healthy, flaky = up.endpoints
    healthy.observe(0.2, 0.0)
    healthy.outstanding = 20  # cost ~4 s, above the 1 s penalty
    up.failed(flaky, 0.001, 1.0, 0.0)
    assert flaky.cost(0.0) >= 2 * healthy.cost(0.0)
    assert all(up.pick(0.0) is healthy for _ in range(20))
    # Bounded: at most ten penalties however costly the peers.
    healthy.outstanding = 10_000
    up.failed(flaky, 0.001, 1.0, 0.0)
    assert flaky.rtt == 10.0
