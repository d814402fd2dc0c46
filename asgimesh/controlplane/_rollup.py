"""The per-service roll-up ``GET /v1/services`` shows, from the instances' latest reports.
Pure functions, no I/O; what an instance puts in a report is :mod:`asgimesh.telemetry._summary`.

:class:`Report` is the one statement of what a report may hold: ``POST /v1/reports`` refuses
anything else, and the roll-up re-reads every stored report with the same numeric bounds and
skips those that do not fit. The second check is not redundant: a store outlives the code that
wrote it (an older replica on the same etcd, a hand-edited file, a service writing to etcd
itself), and one bad row must not turn the dashboard of every service into a 500. Within these
bounds no sum or product in the roll-up can overflow. Names read back are only bounded in
length, not held to the API's pattern: the dashboard shows them as text whatever they hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._wire import SERVICE_NAME
from ._inputs import MAX_VERSION

__all__ = [
    "MAX_LATENCY_MS",
    "MAX_RATE",
    "MAX_REQUESTS",
    "NAME_PATTERN",
    "Report",
    "roll_up",
]

#: Service and namespace names: DNS-label-like, at most 253 characters.
NAME_PATTERN = f"^{SERVICE_NAME}$"
#: Instance ids: 1-200 printable ASCII characters (reporters make hostname-pid-random).
INSTANCE_PATTERN = r"^[\x20-\x7e]{1,200}$"
#: Requests one report may cover (a report covers seconds; this is a million years at 30k/s).
MAX_REQUESTS = 10**12
#: Requests per second one instance may claim.
MAX_RATE = 10**9
#: Latency quantiles: one day, in milliseconds.
MAX_LATENCY_MS = 86_400_000


class Report(BaseModel):
    """One instance's report. Numbers are finite, non-negative and bounded; strings bounded."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    service: str = Field(pattern=NAME_PATTERN)
    instance: str = Field(pattern=INSTANCE_PATTERN)
    policy_version: int = Field(ge=0, le=MAX_VERSION)
    requests: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    requests_per_second: float = Field(default=0.0, ge=0, le=MAX_RATE)
    success_rate: float | None = Field(default=None, ge=0, le=1)
    p50_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    p99_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)


class _Stored(Report):
    """A report as read back from the store: the same numbers, names bounded in length only."""

    service: str = Field(min_length=1, max_length=253)
    instance: str = Field(min_length=1, max_length=200)


def _readable(stored: Iterable[Any]) -> list[tuple[Report, float | None]]:
    """Each stored report that still fits :class:`Report`, with when it was received."""
    readable: list[tuple[Report, float | None]] = []
    for entry in stored:
        if not isinstance(entry, dict):
            continue
        try:
            report = _Stored.model_validate(entry)
        except (ValidationError, RecursionError):
            continue
        received = entry.get("received")
        if not isinstance(received, float) or not math.isfinite(received):
            received = None
        readable.append((report, received))
    return readable


def roll_up(reports: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per service: its instances, the policy versions they run, summed rate, success
    rate weighted by requests, and the worst instance's p50/p99 (quantiles do not add up)."""
    by_service: dict[str, list[tuple[Report, float | None]]] = {}
    for report, received in _readable(reports):
        by_service.setdefault(report.service, []).append((report, received))
    rows = []
    for service, instances in sorted(by_service.items()):
        requests = sum(r.requests for r, _ in instances)
        ok = sum(r.requests * r.success_rate for r, _ in instances if r.success_rate is not None)
        p50 = [r.p50_ms for r, _ in instances if r.p50_ms is not None]
        p99 = [r.p99_ms for r, _ in instances if r.p99_ms is not None]
        rows.append(
            {
                "service": service,
                "instances": [
                    {
                        "instance": r.instance,
                        "policy_version": r.policy_version,
                        "requests_per_second": r.requests_per_second,
                        "success_rate": r.success_rate,
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "reported": received,
                    }
                    for r, received in sorted(instances, key=lambda pair: pair[0].instance)
                ],
                "policy_versions": sorted({r.policy_version for r, _ in instances}),
                "requests_per_second": round(sum(r.requests_per_second for r, _ in instances), 3),
                "success_rate": ok / requests if requests else None,
                "p50_ms": max(p50) if p50 else None,
                "p99_ms": max(p99) if p99 else None,
            }
        )
    return rows
