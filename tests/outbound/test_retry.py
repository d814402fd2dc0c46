"""Retry decisions, backoff with full jitter, Retry-After and the retry budget."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from outbound_support import call_config

from asgimesh._backoff import full_jitter
from asgimesh.outbound._retry import RetryBudgetWindow, parse_retry_after, retry_reason


@pytest.mark.parametrize(
    ("method", "failure", "status", "expected"),
    [
        ("GET", "connect-failure", None, "connect-failure"),
        ("POST", "connect-failure", None, "connect-failure"),  # nothing was sent: any method
        ("GET", "reset", None, "reset"),
        ("POST", "reset", None, None),  # may have reached the upstream
        ("GET", None, 503, "503"),
        ("POST", None, 503, None),  # the double-payout rule
        ("PUT", None, 502, "502"),
        ("GET", None, 500, None),  # not in `on`
        ("GET", None, 404, None),
        ("GET", "timeout", None, "timeout"),  # a per-try timeout counts as a 504 (Envoy)
        ("PATCH", "timeout", None, None),
    ],
)
def test_retry_only_what_is_safe(method: str, failure: str | None, status: int | None,
                                 expected: str | None) -> None:
    config = call_config()
    idempotent = config.is_idempotent(method)
    assert retry_reason(config, idempotent, True, status=status, failure=failure) == expected  # type: ignore[arg-type]


def test_route_marked_idempotent_retries_post() -> None:
    config = call_config({"routes": [{"match": {"path": "/q"}, "idempotent": True}]}, method="POST", path="/q")
    assert retry_reason(config, config.is_idempotent("POST"), True, status=503) == "503"


def test_one_shot_body_is_never_retried() -> None:
    config = call_config()
    assert retry_reason(config, True, False, failure="connect-failure") is None
    assert retry_reason(config, True, False, status=503) is None


def test_conditions_follow_the_policy() -> None:
    config = call_config({"retries": {"on": ["reset", 429]}})
    assert retry_reason(config, True, True, failure="connect-failure") is None
    assert retry_reason(config, True, True, status=429) == "429"
    assert retry_reason(config, True, True, status=503) is None
    assert retry_reason(config, True, True, failure="timeout") == "timeout"  # under `reset`
    assert retry_reason(call_config({"retries": {"on": [503]}}), True, True, failure="timeout") is None
    assert retry_reason(call_config({"retries": {"attempts": 0}}), True, True, failure="connect-failure") is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(3)
    for retry, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (30, 0.25)]:
        draws = [full_jitter(retry, 0.025, 0.25, rng.random) for _ in range(500)]
        assert all(0 <= d <= ceiling for d in draws)
        assert max(draws) > ceiling * 0.9 and min(draws) < ceiling * 0.1  # full jitter: 0..cap


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None and parse_retry_after("-1") is None
    # Digits that are not ASCII ("²" passes str.isdigit()) and absurd lengths: no answer,
    # never a ValueError out of the transport (or an infinite wait).
    assert parse_retry_after("\u00b2") is None
    assert parse_retry_after("1\u00b2") is None
    assert parse_retry_after("9" * 400) is None


def test_budget_floor_then_ratio() -> None:
    budget = RetryBudgetWindow(ratio=0.2, min_per_second=1, ttl=10, now=0.0)
    # Floor: min_per_second x ttl = 10 retries with no requests at all.
    assert sum(budget.withdraw(0.0) for _ in range(20)) == 10
    for _ in range(100):
        budget.deposit(0.5)
    # 100 requests allow 20 more.
    assert sum(budget.withdraw(0.5) for _ in range(50)) == 20
    assert budget.balance(0.5) == pytest.approx(0.0)


def test_budget_window_slides() -> None:
    budget = RetryBudgetWindow(ratio=0.0, min_per_second=1, ttl=10, now=0.0)
    assert sum(budget.withdraw(0.0) for _ in range(20)) == 10
    assert not budget.withdraw(5.0)  # still inside the window
    assert budget.withdraw(10.5)  # the first bucket has aged out
    assert sum(budget.withdraw(25.0) for _ in range(20)) == 10  # all aged out


def test_budget_stops_a_retry_storm() -> None:
    """A dead upstream, 1000 calls/s for 10 s: retries stay at ratio x requests + floor."""
    budget = RetryBudgetWindow(ratio=0.2, min_per_second=10, ttl=10, now=0.0)
    retries = 0
    for i in range(10_000):
        now = i / 1000
        budget.deposit(now)
        retries += budget.withdraw(now)
    assert retries <= 0.2 * 10_000 + 100
    assert retries >= 0.2 * 10_000 * 0.9


def test_budget_reconfigure_keeps_counts_unless_window_changes() -> None:
    budget = RetryBudgetWindow(ratio=0.0, min_per_second=1, ttl=10, now=0.0)
    for _ in range(10):
        budget.withdraw(0.0)
    budget.configure(0.0, 2, 10, 0.0)
    assert budget.balance(0.0) == pytest.approx(10.0)
    budget.configure(0.0, 2, 5, 0.0)
    assert budget.balance(0.0) == pytest.approx(10.0)  # new window: counts start afresh


def test_the_budget_is_exact_when_threads_share_it() -> None:
    """Issue 7.5: a sync client shared by a WSGI server's threads. Threads that switch between
    the budget's check and its take must never get more retries than the window allows.

    CPython 3.11 rarely switches threads inside those few bytecodes, so the test makes it
    switch there: the bucket list yields the GIL (``time.sleep(0)``) when a slot is read, which
    happens after the check and before the take. Without the lock, threads then get more."""
    import sys
    import threading
    import time

    from asgimesh.outbound._retry import RetryBudgetWindow

    class YieldingList(list[int]):
        def __getitem__(self, index: object) -> int:  # type: ignore[override]
            time.sleep(0)
            return super().__getitem__(index)  # type: ignore[index]

    budget = RetryBudgetWindow(ratio=0.0, min_per_second=50.0, ttl=10.0)  # 500 retries
    budget._retries = YieldingList(budget._retries)
    barrier = threading.Barrier(8)
    taken = [0] * 8

    def hammer(index: int) -> None:
        barrier.wait()
        for _ in range(400):
            if budget.withdraw(1.0):
                taken[index] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(taken) == 500
    assert budget.balance(1.0) == 0
