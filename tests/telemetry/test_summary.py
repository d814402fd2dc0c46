import math

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


def test_instance_names_say_which_process() -> None:
    import os

    from prometheus_client import CollectorRegistry

    from asgimesh.telemetry import InstanceReport

    named = InstanceReport(CollectorRegistry(), "payments", prefix="payments-2-flaky")
    assert named.instance == f"payments-2-flaky-{os.getpid()}"
    default = InstanceReport(CollectorRegistry(), "payments")
    assert f"-{os.getpid()}-" in default.instance
    assert default.instance != InstanceReport(CollectorRegistry(), "payments").instance
