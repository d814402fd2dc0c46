"""The contract's Prometheus metrics (section 6), one registry per runtime.

``prometheus_client`` does the exposition; we only declare the families. A registry of our own
(not the process-global default) keeps two runtimes in one test process apart and keeps the host
app's own metrics out of ``/_mesh/metrics`` unless it asks for them. The two families every
inbound request touches are counted by :class:`~asgimesh.telemetry._tally.InboundTally` (plain
integers, one lock per request) rather than a ``Counter`` and a ``Histogram``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ._tally import InboundTally

__all__ = ["CONTENT_TYPE", "Ejection", "MeshMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Request latency buckets, seconds: fine below 100 ms where a mesh's calls mostly land.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


#: Ejections remembered for reports (the latest; older ones are only counted).
MAX_RECENT_EJECTIONS = 32


@dataclass(frozen=True, slots=True)
class Ejection:
    """One endpoint taken out by outlier detection: what the dashboard says *why* with."""

    upstream: str
    #: ``host:port`` of the endpoint.
    endpoint: str
    #: Wall-clock time it was ejected (Unix seconds) and for how long.
    at: float
    seconds: float
    #: Failed tries in a row that ejected it (1 for a probe that failed after a return).
    failures: int


class MeshMetrics:
    """Every metric family of the contract, each labelled with this ``service``."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        #: ``mesh_inbound_requests_total`` and ``mesh_inbound_request_duration_seconds``.
        self.inbound = InboundTally(service, LATENCY_BUCKETS)
        r.register(self.inbound)
        self.outbound_requests = Counter(
            "mesh_outbound_requests",
            "Outbound calls, by upstream, method and status "
            "(status 'error' where no HTTP answer came).",
            ["service", "upstream", "method", "status"],
            registry=r,
        )
        self.outbound_duration = Histogram(
            "mesh_outbound_request_duration_seconds",
            "Outbound call duration, all tries together.",
            ["service", "upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbound_retries = Counter(
            "mesh_outbound_retries",
            "Outbound retries, by upstream and reason.",
            ["service", "upstream", "reason"],
            registry=r,
        )
        self.outbound_hedges = Counter(
            "mesh_outbound_hedges",
            "Hedged tries of outbound calls, by upstream and result (sent; won: it answered "
            "first; budget: one was due but the retry budget was spent, so none was sent).",
            ["service", "upstream", "result"],
            registry=r,
        )
        self.outbound_refusals = Counter(
            "mesh_outbound_refusals",
            "Outbound calls the mesh refused before or between tries, by upstream and reason "
            "(circuit-open, budget, deadline, per-try, no-endpoints, plaintext, identity, "
            "override).",
            ["service", "upstream", "reason"],
            registry=r,
        )
        self.outbound_mirrors = Counter(
            "mesh_outbound_mirrors",
            "Mirrored (shadow) copies of outbound calls, by mirror target and result "
            "(sent: answered, whatever the status; failed: no answer; dropped: too many in "
            "flight, too late or the transport closing; skipped: a body that cannot be replayed).",
            ["service", "upstream", "result"],
            registry=r,
        )
        self.outbound_overrides = Counter(
            "mesh_outbound_overrides",
            "Outbound calls with per-request overrides (the mesh extension or mesh-* headers), "
            "by upstream and result (applied, or clamped to the policy's bounds).",
            ["service", "upstream", "result"],
            registry=r,
        )
        self.outbound_zone_tries = Counter(
            "mesh_outbound_zone_tries",
            "Tries of calls with zone_affinity, by upstream and locality (local: in the "
            "caller's MESH_ZONE; remote: spilled over to another zone).",
            ["service", "upstream", "locality"],
            registry=r,
        )
        self.outbound_ejections = Counter(
            "mesh_outbound_ejections",
            "Endpoints ejected by outlier detection.",
            ["service", "upstream"],
            registry=r,
        )
        self.policy_version = Gauge(
            "mesh_policy_version",
            "Version of the policy in force.",
            ["service"],
            registry=r,
        ).labels(service)
        self.policy_reloads = Counter(
            "mesh_policy_reloads",
            "Policy updates, by result (success or failure).",
            ["service", "result"],
            registry=r,
        )
        self.authz_denied = Counter(
            "mesh_authz_denied",
            "Inbound requests denied by authorization.",
            ["service"],
            registry=r,
        ).labels(service)
        self.rate_limited = Counter(
            "mesh_rate_limited",
            "Inbound requests refused by a rate or concurrency limit.",
            ["service"],
            registry=r,
        ).labels(service)
        self.concurrency_limit = Gauge(
            "mesh_inbound_concurrency_limit",
            "The inbound concurrency limit adaptive concurrency has found (0 while off).",
            ["service"],
            registry=r,
        ).labels(service)
        self.certificate_expiry = Gauge(
            "mesh_identity_certificate_expiry_timestamp_seconds",
            "When this service's certificate expires (Unix time; 0 while it has none).",
            ["service"],
            registry=r,
        ).labels(service)
        self.authn_failures = Counter(
            "mesh_authn_failures",
            "Caller identities refused (bad token, untrusted certificate, forged header), "
            "by reason.",
            ["service", "reason"],
            registry=r,
        )
        #: The latest ejections, newest last, for this instance's reports.
        self.recent_ejections: deque[Ejection] = deque(maxlen=MAX_RECENT_EJECTIONS)
        self._wall_clock = time.time
        # Pre-create the series every dashboard expects, so they read 0 rather than missing.
        self.policy_reloads.labels(service, "success")
        self.policy_reloads.labels(service, "failure")

    def record_ejection(self, upstream: str, endpoint: str, seconds: float, failures: int) -> None:
        """Remember an ejection (counted in ``mesh_outbound_ejections_total`` by the caller)."""
        self.recent_ejections.append(
            Ejection(upstream, endpoint, self._wall_clock(), seconds, failures)
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
