"""Retry decisions, ``Retry-After`` and the retry budget. Pure; clock readings are injected.

What is safe to retry (the rule Istio learnt from a double payout, when a retried 503 charged a
card twice): a connection that was never made carried nothing, so connect failures are retried
for any method; anything that may have reached the upstream (a reset, a timeout, a 502/503/504) is
retried only for idempotent methods (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or routes
the policy marks ``idempotent: true``; and only a body that can be sent again (bytes in memory,
not a one-shot stream) is ever retried.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from ._compile import CallConfig

__all__ = ["Failure", "RetryBudgetWindow", "parse_retry_after", "retry_reason"]

#: How a try ended without an HTTP answer.
#: ``connect-failure``: no connection was made, so nothing reached the upstream.
#: ``reset``: the connection broke after the request may have been sent.
#: ``timeout``: no answer in the try's time (Envoy retries it under ``reset``/``gateway-error``).
Failure = Literal["connect-failure", "reset", "timeout"]


def retry_reason(
    config: CallConfig,
    idempotent: bool,
    replayable: bool,
    *,
    status: int | None = None,
    failure: Failure | None = None,
) -> str | None:
    """The reason to retry this try's outcome (the metric label), or ``None`` not to."""
    if not replayable or config.attempts == 0:
        return None
    if failure == "connect-failure":
        return failure if config.retry_connect else None
    if not idempotent:
        return None
    if failure == "reset":
        return failure if config.retry_reset else None
    if failure == "timeout":
        return failure if config.retry_reset or 504 in config.retry_statuses else None
    if status is not None and status in config.retry_statuses:
        return str(status)
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
    if not value:
        return None
    text = value.strip()
    # An upstream's header: ``isascii()`` first (``str.isdigit()`` also accepts "²", which
    # ``float()`` refuses), and no more digits than a day's seconds need twice over.
    if text.isascii() and text.isdigit():
        return float(text) if len(text) <= 10 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RetryBudgetWindow:
    """Retries allowed: ``ratio`` x requests over the last ``ttl`` + ``min_per_second`` x ``ttl``.

    Linkerd's and Finagle's budget: retries can add at most a fixed fraction to the load an
    upstream already sees, so a failing upstream is not hit by a retry storm, while a floor keeps
    retries possible for a service that gets few requests. Counts are kept in ten buckets per
    ``ttl``, so a deposit and a withdrawal are O(1) and the window slides in ``ttl/10`` steps.

    The budget is a safety limit, and one sync client is shared by a WSGI server's threads (the
    Flask and Django plugins): every update takes a lock, so check-then-take is one step and
    threads can never withdraw more than the window allows. Uncontended (asyncio, one thread)
    the lock costs tens of nanoseconds.
    """

    BUCKETS = 10

    __slots__ = ("_bucket", "_lock", "_requests", "_retries", "_sum_requests", "_sum_retries",
                 "_width", "min_per_second", "ratio", "ttl")

    def __init__(self, ratio: float, min_per_second: float, ttl: float, now: float = 0.0) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self._lock = threading.Lock()
        self._window(ttl, now)

    def _window(self, ttl: float, now: float) -> None:
        self.ttl = ttl
        self._width = ttl / self.BUCKETS
        self._requests = [0] * self.BUCKETS
        self._retries = [0] * self.BUCKETS
        self._sum_requests = 0
        self._sum_retries = 0
        self._bucket = math.floor(now / self._width)

    def configure(self, ratio: float, min_per_second: float, ttl: float, now: float) -> None:
        """Apply a new policy's budget, keeping the counts when the window is unchanged."""
        with self._lock:
            self.ratio = ratio
            self.min_per_second = min_per_second
            if ttl != self.ttl:
                self._window(ttl, now)

    def _advance(self, now: float) -> int:
        bucket = math.floor(now / self._width)
        gap = bucket - self._bucket
        if gap > 0:
            for step in range(1, min(gap, self.BUCKETS) + 1):
                slot = (self._bucket + step) % self.BUCKETS
                self._sum_requests -= self._requests[slot]
                self._sum_retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._bucket = bucket
        return self._bucket % self.BUCKETS

    def deposit(self, now: float) -> None:
        """Count one request (a call's first try)."""
        with self._lock:
            slot = self._advance(now)
            self._requests[slot] += 1
            self._sum_requests += 1

    def withdraw(self, now: float) -> bool:
        """Take one retry from the budget if there is one; ``False`` when spent."""
        with self._lock:
            slot = self._advance(now)
            allowed = self.min_per_second * self.ttl + self.ratio * self._sum_requests
            if self._sum_retries + 1 > allowed:
                return False
            self._retries[slot] += 1
            self._sum_retries += 1
            return True

    def balance(self, now: float) -> float:
        """Retries still allowed right now (for tests and status pages)."""
        with self._lock:
            self._advance(now)
            spent = self._sum_retries
            return self.min_per_second * self.ttl + self.ratio * self._sum_requests - spent
