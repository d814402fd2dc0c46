"""A service's recent try latencies, for hedges whose delay is a percentile (``p95``). Pure.

The tries are those of the service's hedged calls (answers below 500, and the losers' times):
the class of requests the percentile is for, as *The Tail at Scale* puts it, and a plain call
never pays for recording. A ring of the last :data:`SIZE` tries' latencies with the time of
each: a quantile is read from the samples of the last :data:`MAX_AGE` seconds only, so the
estimate follows the service both when it is busy (old samples are overwritten) and when it is
quiet (they age out). Sorting 256 floats takes a few microseconds, so the sorted view is
refreshed at most every :data:`REFRESH_SAMPLES` new samples or :data:`REFRESH_SECONDS` (and,
until there is an estimate, at each new sample), not per call; recording a sample is four
stores. Only services a
percentile hedge calls keep one (``latency_window`` of their :class:`~._compile.BackendConfig`).

Without :data:`MIN_SAMPLES` fresh samples there is no estimate (``None``), and a call hedges
only once there is one: a p95 of five samples is noise, and a delay guessed too short doubles the
service's load, while not hedging is exactly how the service behaved before hedging was set.
Times are on the injected monotonic clock; a sync transport shared by threads records without a
lock (a lost sample now and then moves a percentile by nothing that matters).
"""

from __future__ import annotations

import math

__all__ = ["FLOOR", "MAX_AGE", "MIN_SAMPLES", "SIZE", "LatencyWindow"]

#: Samples kept: enough for a p99 to rest on two or three of them.
SIZE = 256
#: Fresh samples needed before there is an estimate at all.
MIN_SAMPLES = 20
#: Samples older than this (seconds) are left out: the estimate is of the service as it is now.
MAX_AGE = 30.0
#: The sorted view is refreshed after this many new samples, or this many seconds.
REFRESH_SAMPLES = 16
REFRESH_SECONDS = 1.0
#: The least delay a percentile gives (1 ms): a service answering in microseconds on loopback
#: would otherwise be hedged at once, doubling its load for nothing a caller could notice.
FLOOR = 0.001


class LatencyWindow:
    """The latencies of a service's recent tries, and their quantiles."""

    __slots__ = ("_count", "_next", "_sorted", "_sorted_at", "_sorted_count", "_times", "_values")

    def __init__(self) -> None:
        self._values = [0.0] * SIZE
        self._times = [-math.inf] * SIZE
        self._next = 0
        #: Samples recorded ever, and at the last refresh of the sorted view.
        self._count = 0
        self._sorted_count = 0
        self._sorted: list[float] = []
        self._sorted_at = -math.inf

    def observe(self, seconds: float, now: float) -> None:
        """Record one try's latency (an answer's headers, or a hedge race's cancelled loser
        at its cancellation: a lower bound of its latency, which keeps the slow tail in)."""
        index = self._next
        self._values[index] = seconds
        self._times[index] = now
        self._next = index + 1 if index + 1 < SIZE else 0
        self._count += 1

    def quantile(self, q: float, now: float) -> float | None:
        """The ``q`` quantile (``0.95``) of the fresh samples, at least :data:`FLOOR`; ``None``
        with fewer than :data:`MIN_SAMPLES` of them."""
        new = self._count - self._sorted_count
        if (
            new >= REFRESH_SAMPLES
            or now - self._sorted_at >= REFRESH_SECONDS
            # Short of an estimate, each new sample may be the one that gives it.
            or (new and len(self._sorted) < MIN_SAMPLES)
        ):
            cutoff = now - MAX_AGE
            self._sorted = sorted(
                value for value, at in zip(self._values, self._times, strict=True) if at >= cutoff
            )
            self._sorted_count = self._count
            self._sorted_at = now
        ordered = self._sorted
        count = len(ordered)
        if count < MIN_SAMPLES:
            return None
        rank = min(max(math.ceil(q * count) - 1, 0), count - 1)  # nearest rank
        return max(ordered[rank], FLOOR)
