"""The live state of one service: its endpoints, balancer, outlier detection, budget, metrics.

It outlives policy versions: a new policy reconfigures it in place, and endpoints that stay keep
what was learnt about them (latency, ejections), so a policy push does not reset the balancer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection

from ..telemetry import MeshMetrics
from ._balancer import Balancer, make_balancer
from ._compile import BackendConfig
from ._discovery import DnsRecords
from ._endpoint import Endpoint
from ._metrics import UpstreamMetrics
from ._outlier import OutlierRules, record_failure, record_success, return_due
from ._refusal import Refusal
from ._retry import RetryBudgetWindow
from ._zones import pick_by_zone

__all__ = ["Upstream"]


class Upstream:
    """One service's endpoints and everything the mesh keeps about them."""

    def __init__(
        self,
        config: BackendConfig,
        metrics: MeshMetrics,
        rng: random.Random,
        now: float,
        zone: str | None = None,
    ) -> None:
        self.name = config.name
        #: The caller's zone (``MESH_ZONE``); ``None``: zone affinity has nothing to prefer.
        self.zone = zone
        #: With a zone: the endpoints in rotation in it and in the others, and how many it has.
        self.local: list[Endpoint] = []
        self.remote: list[Endpoint] = []
        self.local_total = 0
        self.metrics = UpstreamMetrics(metrics, config.name)
        self._rng = rng
        self._lock = threading.Lock()
        self.endpoints: list[Endpoint] = []
        #: Endpoints tries may go to (not ejected), and those ejected.
        self.available: list[Endpoint] = []
        self.ejected: list[Endpoint] = []
        self._next_return = float("inf")
        self.config = config
        self.rules = OutlierRules.of(config.outlier)
        self.balancer: Balancer = make_balancer(config.load_balancer, rng)
        budget = config.budget
        self.budget = RetryBudgetWindow(budget.ratio, budget.min_per_second, budget.ttl, now)
        self.dns = DnsRecords(config.dns) if config.dns else None
        self.set_endpoints(config.endpoints, now)

    def configure(self, config: BackendConfig, now: float) -> None:
        """Apply a new policy version's view of this service."""
        if config == self.config:
            return
        old, self.config = self.config, config
        self.rules = OutlierRules.of(config.outlier)
        if config.load_balancer != old.load_balancer:
            self.balancer = make_balancer(config.load_balancer, self._rng)
        budget = config.budget
        self.budget.configure(budget.ratio, budget.min_per_second, budget.ttl, now)
        if config.dns != old.dns:
            self.dns = DnsRecords(config.dns) if config.dns else None
        if not config.dns:
            self.set_endpoints(config.endpoints, now)

    def set_endpoints(self, urls: Collection[str], now: float) -> None:
        """Replace the endpoint set; endpoints that stay keep their statistics."""
        zones = dict(self.config.zones)
        with self._lock:
            known = {e.url: e for e in self.endpoints}
            self.endpoints = [known.get(url) or Endpoint(url, now) for url in dict.fromkeys(urls)]
            for endpoint in self.endpoints:
                endpoint.zone = zones.get(endpoint.url)
            self._regroup()

    def _regroup(self) -> None:
        self.available = [e for e in self.endpoints if not e.ejected_until]
        self.ejected = [e for e in self.endpoints if e.ejected_until]
        self._next_return = min((e.ejected_until for e in self.ejected), default=float("inf"))
        zone = self.zone
        if zone is not None:
            self.local = [e for e in self.available if e.zone == zone]
            self.remote = [e for e in self.available if e.zone != zone]
            self.local_total = sum(1 for e in self.endpoints if e.zone == zone)

    def pick(
        self, now: float, exclude: Collection[Endpoint] = (), by_zone: bool = False
    ) -> Endpoint:
        """The endpoint for the next try; :class:`Refusal` when there is none to try.
        ``by_zone``: the call prefers the caller's zone (``zone_affinity``)."""
        if now >= self._next_return:
            with self._lock:
                if return_due(self.ejected, now):
                    self._regroup()
        available = self.available
        if not available:
            if self.endpoints:
                raise Refusal(
                    "circuit-open",
                    f"every endpoint of {self.name!r} is ejected by outlier detection",
                )
            where = f"dns {self.config.dns}" if self.config.dns else "the policy"
            raise Refusal("no-endpoints", f"service {self.name!r} has no endpoints in {where}")
        if by_zone and self.local_total:
            endpoint, local = pick_by_zone(
                self.balancer, self.local, self.remote, self.local_total, now, exclude, self._rng
            )
            self.metrics.zone_try(local)
            return endpoint
        return self.balancer.pick(available, now, exclude)

    def succeeded(self, endpoint: Endpoint, rtt: float, now: float) -> None:
        endpoint.observe(rtt, now)
        if endpoint.failures or endpoint.probing or endpoint.times_ejected:
            record_success(endpoint, self.rules, now)

    def failed(self, endpoint: Endpoint, rtt: float, penalty: float, now: float) -> None:
        """A try failed: outlier detection counts it, and the balancer is told to steer away.

        A fast failure must not look like a fast endpoint (a replica answering 503 at once would
        otherwise draw ever more traffic): the try counts as a latency of at least ``penalty``
        (the per-try timeout: a failure is as bad as the slowest acceptable answer) and at least
        twice the current cost of the costliest other endpoint, so that even under load, when
        queues make the healthy endpoints' costs exceed ``penalty``, it is picked again only
        once that decays. The second bound is capped at ten penalties so that endpoints that all
        fail cannot ratchet each other up without limit.
        """
        worst = 0.0
        for peer in self.available:
            if peer is not endpoint:
                cost = peer.cost(now)
                if cost > worst:
                    worst = cost
        endpoint.observe(max(rtt, penalty, min(2.0 * worst, 10.0 * penalty)), now)
        with self._lock:
            if endpoint.ejected_until:
                return
            failures = 1 if endpoint.probing else endpoint.failures + 1
            if record_failure(
                endpoint, self.rules, now, len(self.endpoints), len(self.ejected)
            ):
                self._regroup()
                where = f"{endpoint.host}:{endpoint.port}" if endpoint.port else endpoint.host
                self.metrics.ejection(where, endpoint.ejected_until - now, failures)
