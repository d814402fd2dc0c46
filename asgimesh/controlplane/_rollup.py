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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .._wire import SERVICE_NAME
from ..telemetry import MAX_EJECTED_PER_UPSTREAM, MAX_UPSTREAMS_PER_REPORT
from ._inputs import MAX_VERSION

__all__ = [
    "MAX_LATENCY_MS",
    "MAX_RATE",
    "MAX_REQUESTS",
    "NAME_PATTERN",
    "Report",
    "roll_up",
    "roll_up_edges",
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


#: Retry reasons and refusal kinds: short lowercase tokens (``503``, ``connect``, ``budget``).
REASON_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
#: Distinct reasons one edge may list (the mesh has fewer than ten of each).
MAX_REASONS = 16

_Reason = Annotated[str, StringConstraints(pattern=REASON_PATTERN)]
_Count = Annotated[int, Field(ge=0, le=MAX_REQUESTS)]


#: Concurrency limits (the policy model's bound on adaptive concurrency's ``max_limit``).
MAX_CONCURRENCY_LIMIT = 100_000
#: Process ids and wall-clock times (Unix seconds, up to the year 2286).
MAX_PID = 2**31
MAX_TIME = 10**10
#: What an instance serves on: ``host:port``, printable ASCII.
ADDRESS_PATTERN = r"^[\x21-\x7e]{1,100}$"


class EjectedEndpoint(BaseModel):
    """An endpoint a caller has ejected, and why: ``seconds`` after ``failures`` failed tries."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    endpoint: str = Field(pattern=ADDRESS_PATTERN)
    since: float = Field(ge=0, le=MAX_TIME)
    seconds: float = Field(ge=0, le=MAX_LATENCY_MS)
    failures: int = Field(ge=0, le=MAX_REQUESTS)


class EdgeReport(BaseModel):
    """What one instance sent to one upstream since its previous report."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    requests: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    requests_per_second: float = Field(default=0.0, ge=0, le=MAX_RATE)
    success_rate: float | None = Field(default=None, ge=0, le=1)
    p50_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    p99_ms: float | None = Field(default=None, ge=0, le=MAX_LATENCY_MS)
    retries: dict[_Reason, _Count] = Field(default_factory=dict, max_length=MAX_REASONS)
    ejections: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    refusals: dict[_Reason, _Count] = Field(default_factory=dict, max_length=MAX_REASONS)
    ejected: list[EjectedEndpoint] = Field(
        default_factory=list, max_length=MAX_EJECTED_PER_UPSTREAM
    )


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
    denied: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    rate_limited: int = Field(default=0, ge=0, le=MAX_REQUESTS)
    pid: int | None = Field(default=None, ge=0, le=MAX_PID)
    address: str | None = Field(default=None, pattern=ADDRESS_PATTERN)
    #: ``draining``: shutting down (its health answers 503); ``stopped``: its last report,
    #: after which it is left out of the roll-up at once rather than when it goes stale.
    state: Literal["serving", "draining", "stopped"] = "serving"
    #: The inbound concurrency limit in force (adaptive concurrency's current finding).
    concurrency_limit: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_LIMIT)
    #: Per upstream (a mesh service, or a host outside the mesh), what this instance sent.
    outbound: dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], EdgeReport] = Field(
        default_factory=dict, max_length=MAX_UPSTREAMS_PER_REPORT
    )


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
        if report.state == "stopped":  # it said goodbye: not an instance any more
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
                        "denied": r.denied,
                        "rate_limited": r.rate_limited,
                        "pid": r.pid,
                        "address": r.address,
                        "state": r.state,
                        "concurrency_limit": r.concurrency_limit,
                        "reported": received,
                    }
                    for r, received in sorted(instances, key=lambda pair: pair[0].instance)
                ],
                "policy_versions": sorted({r.policy_version for r, _ in instances}),
                "requests_per_second": round(sum(r.requests_per_second for r, _ in instances), 3),
                "success_rate": ok / requests if requests else None,
                "p50_ms": max(p50) if p50 else None,
                "p99_ms": max(p99) if p99 else None,
                "denied": sum(r.denied for r, _ in instances),
                "rate_limited": sum(r.rate_limited for r, _ in instances),
            }
        )
    return rows


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for reason, count in counts.items():
        into[reason] = into.get(reason, 0) + count


def roll_up_edges(reports: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per edge caller → callee, from what the callers' instances sent: summed rate,
    success rate weighted by requests, the worst instance's p50/p99, and the retries, ejections
    and refusals of the latest report of each instance, summed. ``known`` tells whether the
    callee is a service that reports too (otherwise a host outside the mesh, or a service
    that does not run the mesh)."""
    readable = _readable(reports)
    services = {report.service for report, _ in readable}
    by_edge: dict[tuple[str, str], list[EdgeReport]] = {}
    ejected: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for report, _ in sorted(readable, key=lambda pair: pair[0].instance):
        for upstream, edge in report.outbound.items():
            by_edge.setdefault((report.service, upstream), []).append(edge)
            for endpoint in edge.ejected:
                ejected.setdefault((report.service, upstream), []).append(
                    {"instance": report.instance, **endpoint.model_dump()}
                )
    rows = []
    for (source, destination), edges in sorted(by_edge.items()):
        requests = sum(e.requests for e in edges)
        ok = sum(e.requests * e.success_rate for e in edges if e.success_rate is not None)
        p50 = [e.p50_ms for e in edges if e.p50_ms is not None]
        p99 = [e.p99_ms for e in edges if e.p99_ms is not None]
        retries: dict[str, int] = {}
        refusals: dict[str, int] = {}
        for e in edges:
            _add_counts(retries, e.retries)
            _add_counts(refusals, e.refusals)
        rows.append(
            {
                "source": source,
                "destination": destination,
                "known": destination in services,
                "instances": len(edges),
                "requests": requests,
                "requests_per_second": round(sum(e.requests_per_second for e in edges), 3),
                "success_rate": ok / requests if requests else None,
                "p50_ms": max(p50) if p50 else None,
                "p99_ms": max(p99) if p99 else None,
                "retries": dict(sorted(retries.items())),
                "ejections": sum(e.ejections for e in edges),
                "refusals": dict(sorted(refusals.items())),
                "ejected": ejected.get((source, destination), []),
            }
        )
    return rows
