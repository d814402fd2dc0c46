"""What an instance reports to the control plane: golden metrics (rate, success rate, latency
quantiles) read from the runtime's own Prometheus registry. Pure functions, no I/O.

A report covers both directions: what the instance received, and per upstream what it sent
(the same golden metrics plus retries by reason, endpoints ejected and calls the mesh refused),
so the control plane sees every edge caller → callee without a sidecar on either end.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from ._metrics import Ejection

__all__ = [
    "MAX_UPSTREAMS_PER_REPORT",
    "Golden",
    "InstanceReport",
    "Reading",
    "UpstreamReading",
    "golden",
    "quantile",
    "read_registry",
]

#: Upstreams one report describes at most (the busiest first); the control plane refuses more.
MAX_UPSTREAMS_PER_REPORT = 64
#: Endpoints of one upstream a report lists as ejected, at most.
MAX_EJECTED_PER_UPSTREAM = 16


@dataclass(frozen=True, slots=True)
class UpstreamReading:
    """Cumulative outbound counts to one upstream at one moment."""

    requests: float = 0.0
    #: Calls that ended in a 5xx or with no answer (``status="error"``).
    failures: float = 0.0
    buckets: tuple[tuple[float, float], ...] = field(default_factory=tuple)
    retries: Mapping[str, float] = field(default_factory=dict)
    ejections: float = 0.0
    #: Calls the mesh refused before or between tries, by kind (``circuit-open``, ``budget``...).
    refusals: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative counts at one moment: inbound, and outbound per upstream."""

    requests: float = 0.0
    failures: float = 0.0
    #: ``(upper bound, cumulative count)`` per histogram bucket, ``+Inf`` last.
    buckets: tuple[tuple[float, float], ...] = field(default_factory=tuple)
    outbound: Mapping[str, UpstreamReading] = field(default_factory=dict)
    #: Inbound requests refused by authorization, and by a rate or concurrency limit.
    denied: float = 0.0
    limited: float = 0.0
    #: The inbound concurrency limit in force (``mesh_inbound_concurrency_limit``; 0: none).
    concurrency_limit: float = 0.0


@dataclass(frozen=True, slots=True)
class Golden:
    requests: int
    requests_per_second: float
    success_rate: float | None
    p50_ms: float | None
    p99_ms: float | None


#: The families a report reads (the others are left alone).
_REPORTED = (
    "mesh_inbound_request",
    "mesh_inbound_concurrency_limit",
    "mesh_outbound_",
    "mesh_authz_denied",
    "mesh_rate_limited",
)


def read_registry(registry: CollectorRegistry, service: str) -> Reading:
    """Inbound request totals (5xx count as failures) and duration buckets for ``service``, and
    the same per upstream for its outbound calls (5xx and ``error`` count as failures)."""
    requests = failures = denied = limited = limit = 0.0
    buckets: dict[float, float] = {}
    out: dict[str, dict[str, Any]] = {}

    def upstream(labels: Mapping[str, str]) -> dict[str, Any]:
        name = labels.get("upstream", "")
        entry = out.get(name)
        if entry is None:
            entry = out[name] = {
                "requests": 0.0,
                "failures": 0.0,
                "buckets": {},
                "retries": {},
                "ejections": 0.0,
                "refusals": {},
            }
        return entry

    for family in registry.collect():
        name = family.name
        if not name.startswith(_REPORTED):
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service") != service:
                continue
            kind = sample.name[len(name) :]
            if name == "mesh_inbound_concurrency_limit":
                limit = sample.value
                continue
            if kind == "_bucket":
                if name == "mesh_inbound_request_duration_seconds":
                    buckets[float(labels["le"])] = sample.value
                else:
                    upstream(labels)["buckets"][float(labels["le"])] = sample.value
            elif kind != "_total":
                continue
            elif name == "mesh_inbound_requests":
                requests += sample.value
                if labels.get("status", "").startswith("5"):
                    failures += sample.value
            elif name == "mesh_outbound_requests":
                entry = upstream(labels)
                entry["requests"] += sample.value
                status = labels.get("status", "")
                if status.startswith("5") or status == "error":
                    entry["failures"] += sample.value
            elif name == "mesh_outbound_ejections":
                upstream(labels)["ejections"] += sample.value
            elif name == "mesh_authz_denied":
                denied += sample.value
            elif name == "mesh_rate_limited":
                limited += sample.value
            elif name in ("mesh_outbound_retries", "mesh_outbound_refusals"):
                reasons = upstream(labels)[name.rpartition("_")[2]]
                reason = labels.get("reason", "")
                reasons[reason] = reasons.get(reason, 0.0) + sample.value
    outbound = {
        name: UpstreamReading(
            requests=entry["requests"],
            failures=entry["failures"],
            buckets=tuple(sorted(entry["buckets"].items())),
            retries=entry["retries"],
            ejections=entry["ejections"],
            refusals=entry["refusals"],
        )
        for name, entry in out.items()
    }
    return Reading(
        requests, failures, tuple(sorted(buckets.items())), outbound, denied, limited, limit
    )


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


def golden(
    previous: Reading | UpstreamReading, current: Reading | UpstreamReading, elapsed: float
) -> Golden:
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


def _counts_since(previous: Mapping[str, float], current: Mapping[str, float]) -> dict[str, int]:
    """Per reason, how many since the previous reading (reasons with none left out)."""
    since = {}
    for reason, count in current.items():
        delta = int(count - previous.get(reason, 0.0))
        if delta > 0:
            since[reason] = delta
    return dict(sorted(since.items()))


def ejected_now(ejections: Iterable[Ejection], now: float) -> dict[str, list[dict[str, Any]]]:
    """Per upstream, the endpoints still ejected at ``now`` (wall clock) and why, newest first,
    one entry per endpoint."""
    out: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    for ejection in reversed(list(ejections)):
        key = (ejection.upstream, ejection.endpoint)
        if ejection.at + ejection.seconds <= now or key in seen:
            continue
        seen.add(key)
        listed = out.setdefault(ejection.upstream, [])
        if len(listed) < MAX_EJECTED_PER_UPSTREAM:
            listed.append(
                {
                    "endpoint": ejection.endpoint,
                    "since": round(ejection.at, 3),
                    "seconds": round(ejection.seconds, 3),
                    "failures": ejection.failures,
                }
            )
    return out


def outbound_since(
    previous: Reading,
    current: Reading,
    elapsed: float,
    ejected: Mapping[str, list[dict[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per upstream this instance has called, the report's edge since ``previous``: golden
    metrics of the calls, retries by reason, endpoints ejected and calls refused by kind. An
    idle edge stays in (at zero), so the service graph does not flicker between calls; at most
    :data:`MAX_UPSTREAMS_PER_REPORT`, the busiest first."""
    edges: list[tuple[str, dict[str, Any]]] = []
    empty = UpstreamReading()
    for name, reading in current.outbound.items():
        before = previous.outbound.get(name, empty)
        summary = golden(before, reading, elapsed)
        retries = _counts_since(before.retries, reading.retries)
        refusals = _counts_since(before.refusals, reading.refusals)
        ejections = max(0, int(reading.ejections - before.ejections))
        edge: dict[str, Any] = {
            "requests": summary.requests,
            "requests_per_second": summary.requests_per_second,
            "success_rate": summary.success_rate,
            "p50_ms": summary.p50_ms,
            "p99_ms": summary.p99_ms,
            "retries": retries,
            "ejections": ejections,
            "refusals": refusals,
            "ejected": (ejected or {}).get(name, []),
        }
        edges.append((name, edge))
    edges.sort(key=lambda pair: (-pair[1]["requests"], pair[0]))
    return dict(edges[:MAX_UPSTREAMS_PER_REPORT])


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
        ejections: Iterable[Ejection] = (),
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        #: ``host:port`` this instance serves on, once a request has shown it (the middleware
        #: sets it): with the pid, what the dashboard names the instance by.
        self.address: str | None = None
        self._ejections = ejections
        self._wall_clock = wall_clock
        self._prefix = prefix
        #: Unique per process, readable by people (see :func:`process_instance_name`).
        self.instance = instance or process_instance_name(prefix)
        self._registry = registry
        self._clock = clock
        self._reading = Reading()
        self._read_at = clock()
        #: ``serving``, ``draining`` (shutting down, still serving what comes) or ``stopped``
        #: (the last report: the control plane drops the instance at once).
        self.state = "serving"

    def serving_on(self, host: object, port: object) -> None:
        """The address a server hands the app (ASGI ``scope["server"]``, WSGI ``SERVER_NAME``
        and ``SERVER_PORT``): reported as ``host:port``, printable ASCII, bounded."""
        if not isinstance(host, str) or not host:
            return
        address = host if port in (None, "") else f"{host}:{port}"
        if len(address) <= 100 and address.isascii() and address.isprintable():
            self.address = address

    def rename_for_this_process(self) -> None:
        """In a forked child: a name of its own (the parent's has the parent's pid)."""
        self.instance = process_instance_name(self._prefix)

    def __call__(self, policy_version: int) -> dict[str, Any]:
        now = self._clock()
        reading = read_registry(self._registry, self.service)
        previous, elapsed = self._reading, now - self._read_at
        summary = golden(previous, reading, elapsed)
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
            "denied": max(0, int(reading.denied - previous.denied)),
            "rate_limited": max(0, int(reading.limited - previous.limited)),
            "pid": os.getpid(),
            "address": self.address,
            "state": self.state,
            "concurrency_limit": int(reading.concurrency_limit) or None,
            "outbound": outbound_since(
                previous, reading, elapsed, ejected_now(self._ejections, self._wall_clock())
            ),
        }
