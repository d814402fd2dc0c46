import math

import pytest

from asgimesh import ConfigError
from asgimesh.controlplane._client import Backoff, parse_source_url
from asgimesh.controlplane._golden import Reading, golden, quantile, read_registry, roll_up
from asgimesh.telemetry import MeshMetrics

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
    metrics.inbound_requests.labels("orders", "GET", "200").inc(8)
    metrics.inbound_requests.labels("orders", "GET", "503").inc(2)
    for _ in range(10):
        metrics.inbound_duration.observe(0.004)
    reading = read_registry(metrics.registry, "orders")
    assert (reading.requests, reading.failures) == (10, 2)
    assert golden(Reading(), reading, 1.0).p99_ms == pytest.approx(5.0, rel=0.05)


def test_roll_up_sums_rates_and_weights_success() -> None:
    rows = roll_up(
        [
            {
                "service": "a",
                "instance": "1",
                "policy_version": 2,
                "requests": 100,
                "requests_per_second": 10,
                "success_rate": 1.0,
                "p50_ms": 1,
                "p99_ms": 5,
            },
            {
                "service": "a",
                "instance": "2",
                "policy_version": 3,
                "requests": 300,
                "requests_per_second": 30,
                "success_rate": 0.5,
                "p50_ms": 2,
                "p99_ms": 9,
            },
        ]
    )
    assert rows[0]["requests_per_second"] == 40
    assert rows[0]["success_rate"] == pytest.approx(250 / 400)
    assert rows[0]["policy_versions"] == [2, 3] and rows[0]["p99_ms"] == 9


def test_backoff_grows_to_the_cap_with_full_jitter_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, rand=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.2
    assert Backoff(0.1, 1.0, rand=lambda: 0.0).next_delay() == 0.0


def test_parse_source_url() -> None:
    plain = parse_source_url("http://cp:7070/")
    assert (plain.kind, plain.base_url, plain.refresh) == ("http", "http://cp:7070", None)
    serverless = parse_source_url("https://cp:7070/mesh?refresh=30s&report=5s")
    assert serverless.base_url == "https://cp:7070/mesh"
    assert (serverless.refresh, serverless.report_every) == (30.0, 5.0)
    etcd = parse_source_url("etcd://127.0.0.1:2379/team")
    assert (etcd.kind, etcd.base_url, etcd.prefix) == ("etcd", "http://127.0.0.1:2379", "/team")
    with pytest.raises(ConfigError, match="unknown parameter 'refesh'"):
        parse_source_url("http://cp:7070?refesh=30s")
    with pytest.raises(ConfigError, match="refresh: expected a duration"):
        parse_source_url("http://cp:7070?refresh=soon")
