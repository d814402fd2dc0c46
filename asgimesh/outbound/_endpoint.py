"""One endpoint of a service and what the mesh has learnt about it.

Plain mutable state, shared by the balancer (latency, outstanding tries) and outlier detection
(consecutive failures, ejection). Times are on the injected monotonic clock.
"""

from __future__ import annotations

import math
from urllib.parse import urlsplit

__all__ = ["DECAY", "DEFAULT_RTT", "Endpoint"]

#: Peak-EWMA decay time: Finagle's ``PeakEwma`` and Linkerd's balancer both use 10 s.
DECAY = 10.0
#: Latency assumed for an endpoint with no answer yet (Linkerd's default RTT estimate, 30 ms).
DEFAULT_RTT = 0.030


class Endpoint:
    """An origin (``http://10.0.0.7:8080``) of a service."""

    __slots__ = (
        "ejected_until",
        "failures",
        "host",
        "outstanding",
        "port",
        "probing",
        "rtt",
        "scheme",
        "stamp",
        "times_changed",
        "times_ejected",
        "url",
        "zone",
    )

    def __init__(self, url: str, now: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        default_port = 443 if parts.scheme == "https" else 80
        #: ``None`` for the scheme's default port, as httpx spells it.
        self.port: int | None = parts.port if parts.port not in (None, default_port) else None
        #: Peak-EWMA latency estimate (seconds) and when it was last updated.
        self.rtt = DEFAULT_RTT
        self.stamp = now
        #: Tries sent and not yet finished (answered body closed, or failed).
        self.outstanding = 0
        self.failures = 0
        self.ejected_until = 0.0
        self.times_ejected = 0
        #: When ``times_ejected`` last changed: it decays by one per healthy outlier interval.
        self.times_changed = now
        #: Back from an ejection and not yet proven: one failure ejects it again.
        self.probing = False
        #: The zone the policy places it in (``None``: not given).
        self.zone: str | None = None

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, rtt={self.rtt:.4f}, outstanding={self.outstanding})"

    def estimate(self, now: float) -> float:
        """The latency estimate, decayed towards zero for the time without news (Finagle)."""
        elapsed = now - self.stamp
        if elapsed <= 0:
            return self.rtt
        return self.rtt * math.exp(-elapsed / DECAY)

    def observe(self, rtt: float, now: float) -> None:
        """Fold one try's latency in: a peak is taken at once, a dip only gradually."""
        estimate = self.estimate(now)
        if rtt > estimate:
            self.rtt = rtt
        else:
            weight = math.exp(-max(now - self.stamp, 0.0) / DECAY)
            self.rtt = estimate * weight + rtt * (1.0 - weight)
        self.stamp = now

    def cost(self, now: float) -> float:
        """Peak-EWMA load: expected latency times the queue a new try would join."""
        return self.estimate(now) * (self.outstanding + 1)
