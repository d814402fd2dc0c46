import pytest

from asgimesh.controlplane._rollup import roll_up


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


def test_roll_up_skips_what_no_report_may_hold() -> None:
    """Issue 12.2: two instances at 1e308 summed to inf, which JSON cannot carry (a 500)."""
    huge = {"service": "a", "policy_version": 1, "requests_per_second": 1e308}
    rows = roll_up(
        [
            {**huge, "instance": "1"},
            {**huge, "instance": "2"},
            {"service": "a", "instance": "3", "policy_version": 1, "requests": 10**400},
            {"service": "a", "instance": "4", "policy_version": 1, "requests_per_second": 2.0},
            {"instance": "no service"},
            "not a report",
        ]
    )
    assert [i["instance"] for i in rows[0]["instances"]] == ["4"]
    assert rows[0]["requests_per_second"] == 2.0
