"""What an instance reports to the control plane: golden metrics (rate, success rate, latency
quantiles) read from the runtime's own Prometheus registry. Pure functions, no I/O.

An instance reports what happened since its last report, computed from the difference of two
readings of its own counters and histogram: the control plane then needs no state per instance
beyond the latest report, and a restarted instance simply starts from zero.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["Golden", "InstanceReport", "Reading", "golden", "quantile", "read_registry"]


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative inbound counts at one moment."""

    requests: float = 0.0
    failures: float = 0.0
    #: ``(upper bound, cumulative count)`` per histogram bucket, ``+Inf`` last.
    buckets: tuple[tuple[float, float], ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Golden:
    requests: int
    requests_per_second: float
    success_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


def read_registry(registry: CollectorRegistry, service: str) -> Reading:
    """Inbound request totals (5xx count as failures) and duration buckets for ``service``."""
    requests = failures = 0.0
    buckets: dict[float, float] = {}
    for family in registry.collect():
        if family.name == "mesh_inbound_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("service") == service:
                    requests += sample.value
                    if sample.labels.get("status", "").startswith("5"):
                        failures += sample.value
        elif family.name == "mesh_inbound_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("service") == service:
                    buckets[float(sample.labels["le"])] = sample.value
    return Reading(requests, failures, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated linearly inside its bucket
    (as Prometheus' ``histogram_quantile`` does); ``None`` without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound  # pragma: no cover - the +Inf bucket holds every observation


def golden(previous: Reading, current: Reading, elapsed: float) -> Golden:
    """What happened between two readings ``elapsed`` seconds apart."""
    requests = max(0.0, current.requests - previous.requests)
    failures = max(0.0, current.failures - previous.failures)
    before = dict(previous.buckets)
    delta = [(bound, max(0.0, count - before.get(bound, 0.0))) for bound, count in current.buckets]
    p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
    return Golden(
        requests=int(requests),
        requests_per_second=requests / elapsed if elapsed > 0 else 0.0,
        success_rate=(requests - failures) / requests if requests else None,
        p50_ms=None if p50 is None else p50 * 1000,
        p99_ms=None if p99 is None else p99 * 1000,
    )


def process_instance_name(prefix: str | None = None) -> str:
    """This process's instance name: ``prefix`` (``MESH_INSTANCE``) and the pid, else host, pid
    and a few random hex digits. A forked worker takes a new one, so that its reports are not
    mistaken for its parent's; the pid keeps gunicorn's workers apart under one prefix."""
    if prefix:
        return f"{prefix}-{os.getpid()}"
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class InstanceReport:
    """Makes this instance's reports, each covering the time since the one before."""

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        *,
        instance: str | None = None,
        prefix: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self._prefix = prefix
        #: Unique per process, readable by people (see :func:`process_instance_name`).
        self.instance = instance or process_instance_name(prefix)
        self._registry = registry
        self._clock = clock
        self._reading = Reading()
        self._read_at = clock()

    def rename_for_this_process(self) -> None:
        """In a forked child: a name of its own (the parent's has the parent's pid)."""
        self.instance = process_instance_name(self._prefix)

    def __call__(self, policy_version: int) -> dict[str, Any]:
        now = self._clock()
        reading = read_registry(self._registry, self.service)
        summary = golden(self._reading, reading, now - self._read_at)
        self._reading, self._read_at = reading, now
        return {
            "service": self.service,
            "instance": self.instance,
            "policy_version": policy_version,
            "requests": summary.requests,
            "requests_per_second": summary.requests_per_second,
            "success_rate": summary.success_rate,
            "p50_ms": summary.p50_ms,
            "p99_ms": summary.p99_ms,
        }
