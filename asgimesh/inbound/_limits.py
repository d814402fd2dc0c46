"""The counting primitives of the inbound limits, sans-I/O: a token bucket and a concurrency
gate.

Time comes in as ``now`` (``time.monotonic`` seconds), so tests drive them with a made-up clock.
WSGI servers call from many threads: a bucket is guarded by a lock (never contended under ASGI),
the concurrency gate is lock-free (see :class:`ConcurrencyGate`).
"""

from __future__ import annotations

import math
import threading
from collections import deque

__all__ = ["ConcurrencyGate", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; each request takes one.

    Starts full at its first use, so a fresh (or just reloaded) limit admits a whole burst.
    """

    __slots__ = ("_last", "_lock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"expected a rate above zero, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate)))
        self._tokens = self.burst
        self._last: float | None = None
        self._lock = threading.Lock()

    def take(self, now: float) -> float:
        """Take a token at ``now``: ``0.0`` if one was there, else seconds until one will be."""
        lock = self._lock
        lock.acquire()  # explicit calls: half the cost of ``with`` on this path
        try:
            last = self._last
            tokens = self._tokens
            if last is None or now > last:
                if last is not None:
                    tokens = min(self.burst, tokens + (now - last) * self.rate)
                self._last = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0.0
            self._tokens = tokens
            return (1.0 - tokens) / self.rate
        finally:
            lock.release()

    @staticmethod
    def retry_after(wait: float) -> int:
        """``wait`` seconds as a ``Retry-After`` value: whole seconds, at least 1."""
        # The small allowance keeps a wait of exactly 1 s, computed as 1.0000000001, at 1.
        return max(1, math.ceil(wait - 1e-9))


class ConcurrencyGate:
    """Counts this service's requests in flight; refuses one that would exceed ``limit``.

    Lock-free and thread-safe: one deque entry per request in flight, and ``append``, ``pop``
    and ``len`` of a deque are each atomic. A request is counted before it is checked, so two
    threads racing for the last slot may both be refused (a 429 with ``Retry-After: 1``), never
    both admitted. Several times cheaper than a lock, for ASGI and WSGI alike.
    """

    __slots__ = ("_slots", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: deque[None] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    def acquire(self) -> bool:
        """Take a slot: ``True`` if there was one (then :meth:`release` it exactly once)."""
        slots = self._slots
        slots.append(None)
        if len(slots) > self.limit:
            slots.pop()
            return False
        return True

    def release(self) -> None:
        self._slots.pop()

    def done(self, started: float) -> None:
        """Give the slot back at the end of a request that began at ``started`` (monotonic
        seconds; an adaptive gate learns from it, this one only counts)."""
        self._slots.pop()


