import math
import os
from typing import Any

import pytest

from asgimesh.telemetry import InstanceReport, MeshMetrics
from asgimesh.telemetry._summary import Reading, golden, quantile, read_registry

INF = math.inf


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (INF, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None


def test_golden_reports_the_interval_only() -> None:
    before = Reading(100, 1, ((0.01, 90.0), (0.1, 100.0), (INF, 100.0)))
    after = Reading(300, 21, ((0.01, 90.0), (0.1, 300.0), (INF, 300.0)))
    result = golden(before, after, 10.0)
    assert result.requests == 200 and result.requests_per_second == 20.0
    assert result.success_rate == pytest.approx(0.9)
    assert 10 < result.p50_ms < 100 and result.p99_ms <= 100


def test_read_registry_counts_5xx_as_failures() -> None:
    metrics = MeshMetrics("orders")
    for status in ["200"] * 8 + ["503"] * 2:
        metrics.inbound.record("GET", status, 0.004)
    reading = read_registry(metrics.registry, "orders")
    assert (reading.requests, reading.failures) == (10, 2)
    assert golden(Reading(), reading, 1.0).p99_ms == pytest.approx(5.0, rel=0.05)


def test_instance_report_covers_the_interval_since_the_last_one() -> None:
    now = [100.0]
    metrics = MeshMetrics("orders")
    report = InstanceReport(metrics.registry, "orders", instance="orders-1", clock=lambda: now[0])
    for status in ["200"] * 30 + ["500"] * 10:
        metrics.inbound.record("GET", status, 0.004)
    now[0] += 10
    first = report(7)
    assert first["instance"] == "orders-1" and first["policy_version"] == 7
    assert (first["requests"], first["requests_per_second"]) == (40, 4.0)
    assert first["success_rate"] == pytest.approx(0.75)
    now[0] += 5
    second = report(8)
    assert (second["requests"], second["success_rate"]) == (0, None)
    assert InstanceReport(metrics.registry, "orders").instance != report.instance


def test_a_report_says_the_instances_state_and_its_concurrency_limit() -> None:
    metrics = MeshMetrics("orders")
    report = InstanceReport(metrics.registry, "orders", instance="orders-1")
    first = report(1)
    assert first["state"] == "serving" and first["concurrency_limit"] is None  # gauge at 0
    metrics.concurrency_limit.set(37)
    report.state = "draining"
    second = report(1)
    assert second["state"] == "draining" and second["concurrency_limit"] == 37


def test_instance_names_say_which_process() -> None:
    import os

    from prometheus_client import CollectorRegistry

    from asgimesh.telemetry import InstanceReport

    named = InstanceReport(CollectorRegistry(), "payments", prefix="payments-2-flaky")
    assert named.instance == f"payments-2-flaky-{os.getpid()}"
    default = InstanceReport(CollectorRegistry(), "payments")
    assert f"-{os.getpid()}-" in default.instance
    assert default.instance != InstanceReport(CollectorRegistry(), "payments").instance


def _edge_metrics() -> tuple[MeshMetrics, Any, Any]:
    from asgimesh.outbound._metrics import UpstreamMetrics

    metrics = MeshMetrics("frontend")
    return metrics, UpstreamMetrics(metrics, "payments"), UpstreamMetrics(metrics, "ledger")


def test_reports_carry_each_edge_with_retries_ejections_and_refusals() -> None:
    now, wall = [0.0], [1000.0]
    metrics, payments, ledger = _edge_metrics()
    metrics._wall_clock = lambda: wall[0]
    report = InstanceReport(
        metrics.registry,
        "frontend",
        instance="f-1",
        clock=lambda: now[0],
        ejections=metrics.recent_ejections,
        wall_clock=lambda: wall[0],
    )
    for _ in range(8):
        payments.request("GET", 200, 0.004)
    payments.request("POST", 503, 0.004)
    payments.request("GET", "error", 0.2)
    payments.retry("503")
    payments.retry("503")
    payments.retry("connect")
    ledger.ejection("127.0.0.1:9", 30.0, 5)
    ledger.refused("circuit-open")
    metrics.authz_denied.inc(3)
    metrics.rate_limited.inc()
    report.serving_on("127.0.0.1", 8003)
    ledger.request("GET", "error", 0.0)
    # An inbound request of another service in the same registry is not frontend's edge.
    metrics.outbound_requests.labels("other", "payments", "GET", "200").inc(50)
    now[0] += 10
    wall[0] += 10
    whole = report(3)
    assert (whole["denied"], whole["rate_limited"], whole["address"]) == (3, 1, "127.0.0.1:8003")
    assert whole["pid"] == os.getpid()
    first = whole["outbound"]
    assert list(first) == ["payments", "ledger"]  # the busiest first
    pay = first["payments"]
    assert (pay["requests"], pay["requests_per_second"]) == (10, 1.0)
    assert pay["success_rate"] == pytest.approx(0.8)
    assert pay["p50_ms"] == pytest.approx(5.0, rel=0.5) and pay["p99_ms"] > 100
    assert pay["retries"] == {"503": 2, "connect": 1} and pay["refusals"] == {}
    assert first["ledger"]["ejections"] == 1 and first["ledger"]["refusals"] == {"circuit-open": 1}
    assert first["ledger"]["success_rate"] == 0.0
    ejected = {"endpoint": "127.0.0.1:9", "since": 1000.0, "seconds": 30.0, "failures": 5}
    assert first["ledger"]["ejected"] == [ejected] and first["payments"]["ejected"] == []

    payments.request("GET", 200, 0.001)
    now[0] += 5
    wall[0] += 25  # 35 s after the ejection: its 30 s are over
    second = report(3)["outbound"]
    assert second["payments"]["requests"] == 1 and second["payments"]["retries"] == {}
    # Idle since the last report: the edge stays, at zero, so the graph does not flicker.
    assert second["ledger"] == {
        "requests": 0,
        "requests_per_second": 0.0,
        "success_rate": None,
        "p50_ms": None,
        "p99_ms": None,
        "retries": {},
        "ejections": 0,
        "refusals": {},
        "ejected": [],
    }


def test_a_report_names_at_most_the_64_busiest_upstreams() -> None:
    from asgimesh.outbound._metrics import UpstreamMetrics
    from asgimesh.telemetry._summary import MAX_UPSTREAMS_PER_REPORT

    metrics = MeshMetrics("frontend")
    report = InstanceReport(metrics.registry, "frontend", clock=lambda: 1.0)
    for index in range(MAX_UPSTREAMS_PER_REPORT + 10):
        upstream = UpstreamMetrics(metrics, f"host-{index:03d}")
        for _ in range(index):
            upstream.request("GET", 200, 0.001)
    outbound = report(1)["outbound"]
    assert len(outbound) == MAX_UPSTREAMS_PER_REPORT
    assert "host-073" in outbound and "host-000" not in outbound and "host-009" not in outbound
