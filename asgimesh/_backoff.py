"""Exponential backoff with full jitter: one formula for every loop that waits after a failure.

Full jitter (attempt *n* sleeps uniformly in ``[0, min(cap, base * 2**(n-1))]``) is what AWS's
analysis of backoff found spreads a herd of clients best, and what Envoy and Linkerd use for
retries. The mesh uses it for outbound retries, the policy watcher's reconnections, the etcd
watch and certificate renewal, so they share this one home; the random source is injected so
that the sans-I/O callers stay deterministic under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["ReconnectBackoff", "full_jitter"]


def full_jitter(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """The sleep before try ``attempt + 1`` after ``attempt`` (1-based) consecutive failures."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 60))
    return rand() * ceiling


class ReconnectBackoff:
    """Counts consecutive failures of one loop and says how long to wait after each."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rand = base, cap, rand
        self.failures = 0

    def next_delay(self) -> float:
        """Record one more failure; the seconds to wait before trying again."""
        self.failures += 1
        return full_jitter(self.failures, self.base, self.cap, self._rand)

    def reset(self) -> None:
        """The loop succeeded: the next failure starts from ``base`` again."""
        self.failures = 0
