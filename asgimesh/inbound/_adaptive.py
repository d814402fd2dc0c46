"""Adaptive concurrency: the inbound limit found from observed latency, sans-I/O.

A fixed ``concurrency_limit`` is a guess that is wrong after the next deploy, the next
dependency slowdown or the next instance size. :class:`GradientLimit` follows the gradient
idea of Netflix's *concurrency-limits* (Gradient2) and Envoy's adaptive concurrency filter: it
compares the latency of the last window of requests with the service's latency without a queue
(the lowest recent window, drifting up slowly). While they agree the limit grows, smoothly,
by a queue allowance (√limit); when requests get slower than that latency allows
(``tolerance``), the limit drops at once in proportion, never below half per window.
Requests over the limit are refused at once (503 with
``Retry-After``, which the callers' mesh retries on another replica within its budget), so the
ones admitted keep their latency instead of all of them queueing.

Plain objects: time comes in as measured round-trip times, tests feed them directly.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ._limits import ConcurrencyGate

__all__ = ["AdaptiveGate", "GradientLimit"]


class GradientLimit:
    """The limit, updated once per ``window`` samples."""

    __slots__ = (
        "_long",
        "_max_in_flight",
        "_samples",
        "_since_calibration",
        "_sum",
        "calibrating",
        "drift",
        "learned",
        "max_limit",
        "min_limit",
        "recalibrate_every",
        "smoothing",
        "tolerance",
        "window",
    )

    @property
    def limit(self) -> float:
        """The limit in force: ``min_limit`` while calibrating, else the one learnt."""
        return float(self.min_limit) if self.calibrating else self.learned

    @limit.setter
    def limit(self, value: float) -> None:
        self.learned = value

    def __init__(
        self,
        initial: int = 20,
        *,
        min_limit: int = 4,
        max_limit: int = 1000,
        window: int = 50,
        drift: float = 0.02,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        recalibrate_every: int = 600,
    ) -> None:
        self.min_limit, self.max_limit = min_limit, max_limit
        self.learned = float(min(max(initial, min_limit), max_limit))
        self.window, self.drift = window, drift
        #: One window at ``min_limit`` first, and again every ``recalibrate_every`` windows:
        #: the latency without a queue can only be seen with (almost) none (Envoy's minRTT
        #: measurement does the same). It starts as soon as the service does.
        self.calibrating = True
        self.recalibrate_every = recalibrate_every
        self._since_calibration = 0
        self.tolerance, self.smoothing = tolerance, smoothing
        self._long: float | None = None
        self._samples = 0
        self._sum = 0.0
        self._max_in_flight = 0

    def sample(self, rtt: float, in_flight: int) -> None:
        """One request done after ``rtt`` seconds, ``in_flight`` requests (itself included)
        being served as it ended."""
        self._samples += 1
        self._sum += rtt
        if in_flight > self._max_in_flight:
            self._max_in_flight = in_flight
        if self._samples >= self.window:
            self._update()

    def _update(self) -> None:
        short = self._sum / self._samples
        in_flight = self._max_in_flight
        self._samples, self._sum, self._max_in_flight = 0, 0.0, 0
        if short <= 0:
            return
        if self.calibrating:
            self.calibrating = False
            self._long = short
            return
        self._since_calibration += 1
        if self._since_calibration >= self.recalibrate_every:
            self._since_calibration = 0
            self.calibrating = True
        long = self._long
        if long is None or short < long:
            # The latency the service has without a queue: it follows a faster window at once
            # and a slower one only slowly, so a lasting slowdown (a slower dependency, a
            # smaller instance) becomes the new normal over minutes, not a queue in seconds.
            long = short
        else:
            long += (short - long) * self.drift
        self._long = long
        learned = self.learned
        if in_flight * 2 < learned:
            return  # not using the limit: this window says nothing about a higher one
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        target = learned * gradient + math.sqrt(learned)
        # Down at once (a queue is building), up smoothly (probing for more).
        limit = target if target < learned else (
            learned * (1.0 - self.smoothing) + target * self.smoothing
        )
        self.learned = max(float(self.min_limit), min(float(self.max_limit), limit))


class AdaptiveGate(ConcurrencyGate):
    """A :class:`ConcurrencyGate` whose limit a :class:`GradientLimit` moves: every request
    that took a slot reports its time when it gives the slot back."""

    __slots__ = ("_clock", "_lock", "algorithm", "on_limit")

    def __init__(
        self,
        algorithm: GradientLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(int(algorithm.limit))
        self.algorithm = algorithm
        self._clock = clock
        self._lock = threading.Lock()
        #: Told the new limit whenever it changes (the ``mesh_inbound_concurrency_limit`` gauge).
        self.on_limit = on_limit
        if on_limit is not None:
            on_limit(self.limit)

    def done(self, started: float) -> None:
        in_flight = len(self._slots)
        self._slots.pop()
        rtt = self._clock() - started
        with self._lock:
            self.algorithm.sample(rtt, in_flight)
            limit = int(self.algorithm.limit)
        if limit != self.limit:
            self.limit = limit
            if self.on_limit is not None:
                self.on_limit(limit)
