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


def _edge(**fields: object) -> dict[str, object]:
    return {"requests": 10, "requests_per_second": 1.0, "success_rate": 1.0, **fields}


def test_edges_roll_up_per_caller_and_callee() -> None:
    from asgimesh.controlplane._rollup import roll_up_edges

    reports = [
        {
            "service": "frontend",
            "instance": "f-1",
            "policy_version": 1,
            "outbound": {
                "payments": _edge(
                    requests=100, requests_per_second=10, success_rate=1.0, p50_ms=2, p99_ms=9,
                    retries={"503": 2}, refusals={"budget": 1},
                ),
                "api.example.com": _edge(),
            },
        },
        {
            "service": "frontend",
            "instance": "f-2",
            "policy_version": 1,
            "outbound": {
                "payments": _edge(
                    requests=300, requests_per_second=30, success_rate=0.5, p50_ms=3, p99_ms=40,
                    retries={"503": 1, "connect": 4}, ejections=2,
                )
            },
        },
        {"service": "payments", "instance": "p-1", "policy_version": 1},
        # One bad edge makes the whole report unreadable, as any other bad field does.
        {
            "service": "orders",
            "instance": "o-1",
            "policy_version": 1,
            "outbound": {"payments": _edge(requests_per_second=1e308)},
        },
    ]
    edges = roll_up_edges(reports)
    assert [(e["source"], e["destination"], e["known"]) for e in edges] == [
        ("frontend", "api.example.com", False),
        ("frontend", "payments", True),
    ]
    pay = edges[1]
    assert pay["instances"] == 2 and pay["requests"] == 400 and pay["requests_per_second"] == 40
    assert pay["success_rate"] == pytest.approx(250 / 400)
    assert (pay["p50_ms"], pay["p99_ms"]) == (3, 40)
    assert pay["retries"] == {"503": 3, "connect": 4}
    assert pay["ejections"] == 2 and pay["refusals"] == {"budget": 1}
    assert roll_up_edges([]) == []


def test_a_stopped_instance_leaves_the_roll_up_at_once_and_a_draining_one_says_so() -> None:
    from asgimesh.controlplane._rollup import roll_up_edges

    base = {"service": "pay", "policy_version": 1, "requests": 10, "requests_per_second": 1.0,
            "outbound": {"ledger": {"requests": 5, "requests_per_second": 0.5}}}  # fmt: skip
    reports = [
        {**base, "instance": "pay-1", "state": "draining", "concurrency_limit": 12},
        {**base, "instance": "pay-2", "state": "stopped"},
        {**base, "instance": "pay-3"},
        {**base, "instance": "pay-4", "state": "gone fishing"},  # not a state: skipped
    ]
    (row,) = roll_up(reports)
    assert [(i["instance"], i["state"], i["concurrency_limit"]) for i in row["instances"]] == [
        ("pay-1", "draining", 12), ("pay-3", "serving", None)]  # fmt: skip
    assert row["requests_per_second"] == 2.0
    (edge,) = roll_up_edges(reports)
    assert edge["instances"] == 2 and edge["requests"] == 10
