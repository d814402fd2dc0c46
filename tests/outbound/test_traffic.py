"""Traffic split and fault injection draws."""

from __future__ import annotations

import random
from collections import Counter

from asgimesh.outbound._compile import FaultConfig
from asgimesh.outbound._traffic import choose_backend, draw_fault


def test_split_by_weight() -> None:
    rng = random.Random(42)
    counts = Counter(choose_backend("pay", (("pay-v2", 10.0), ("pay-v3", 30.0)), rng) for _ in range(10_000))
    assert 800 < counts["pay-v2"] < 1200
    assert 2700 < counts["pay-v3"] < 3300
    assert 5700 < counts["pay"] < 6300
    assert choose_backend("pay", (), rng) == "pay"
    assert all(choose_backend("pay", (("v2", 100.0),), rng) == "v2" for _ in range(100))


def test_fault_by_percent() -> None:
    rng = random.Random(1)
    fault = FaultConfig(abort_percent=25, abort_status=500, delay_percent=50, delay=0.1)
    draws = [draw_fault(fault, rng) for _ in range(4000)]
    aborts = sum(1 for _, a in draws if a == 500)
    delays = sum(1 for d, _ in draws if d == 0.1)
    assert 850 < aborts < 1150 and 1800 < delays < 2200
    assert draw_fault(None, rng) == (0.0, None)
