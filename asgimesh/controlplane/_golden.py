"""Golden metrics (rate, success rate, latency quantiles) from the runtime's Prometheus registry,
and the per-service roll-up ``GET /v1/services`` shows. Pure functions, no I/O.

An instance reports what happened since its last report, computed from the difference of two
readings of its own counters and histogram: the control plane then needs no state per instance
beyond the latest report, and a restarted instance simply starts from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["Golden", "Reading", "golden", "quantile", "read_registry", "roll_up"]


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


def roll_up(reports: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per service: its instances, the policy versions they run, summed rate, success
    rate weighted by requests, and the worst instance's p50/p99 (quantiles do not add up)."""
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for report in reports:
        by_service.setdefault(str(report["service"]), []).append(report)
    rows = []
    for service, instances in sorted(by_service.items()):
        requests = sum(int(r.get("requests") or 0) for r in instances)
        ok = sum(
            int(r.get("requests") or 0) * float(r["success_rate"])
            for r in instances
            if r.get("success_rate") is not None
        )
        p50 = [float(r["p50_ms"]) for r in instances if r.get("p50_ms") is not None]
        p99 = [float(r["p99_ms"]) for r in instances if r.get("p99_ms") is not None]
        rows.append(
            {
                "service": service,
                "instances": [
                    {
                        "instance": r["instance"],
                        "policy_version": r.get("policy_version"),
                        "requests_per_second": r.get("requests_per_second"),
                        "success_rate": r.get("success_rate"),
                        "p50_ms": r.get("p50_ms"),
                        "p99_ms": r.get("p99_ms"),
                        "reported": r.get("received"),
                    }
                    for r in sorted(instances, key=lambda r: str(r["instance"]))
                ],
                "policy_versions": sorted({int(r.get("policy_version") or 0) for r in instances}),
                "requests_per_second": round(
                    sum(float(r.get("requests_per_second") or 0) for r in instances), 3
                ),
                "success_rate": ok / requests if requests else None,
                "p50_ms": max(p50) if p50 else None,
                "p99_ms": max(p99) if p99 else None,
            }
        )
    return rows
