"""The outbound metric children of one upstream label (a mesh service, or a pass-through host).

``prometheus_client``'s ``labels()`` takes a lock and hashes the label tuple; a call pays for it
once per label set here instead of on every request.
"""

from __future__ import annotations

from typing import Any

from ..telemetry import MeshMetrics

__all__ = ["UpstreamMetrics"]


class UpstreamMetrics:
    """The metric children of one upstream label, created once instead of on every call."""

    __slots__ = (
        "_ejections",
        "_hedges",
        "_metrics",
        "_mirrors",
        "_overrides",
        "_refusals",
        "_requests",
        "_retries",
        "_zone_tries",
        "duration",
        "upstream",
    )

    def __init__(self, metrics: MeshMetrics, upstream: str) -> None:
        self._metrics = metrics
        self.upstream = upstream
        self._requests: dict[tuple[str, int | str], Any] = {}
        self._retries: dict[str, Any] = {}
        self._refusals: dict[str, Any] = {}
        self._hedges: dict[str, Any] = {}
        self._mirrors: dict[str, Any] = {}
        self._ejections: Any = None
        self._overrides: dict[bool, Any] = {}
        self._zone_tries: dict[bool, Any] = {}
        self.duration = metrics.outbound_duration.labels(metrics.service, upstream)

    def request(self, method: str, status: int | str, seconds: float) -> None:
        key = (method, status)
        child = self._requests.get(key)
        if child is None:
            child = self._metrics.outbound_requests.labels(
                self._metrics.service, self.upstream, method, str(status)
            )
            self._requests[key] = child
        child.inc()
        self.duration.observe(seconds)

    def retry(self, reason: str) -> None:
        child = self._retries.get(reason)
        if child is None:
            child = self._metrics.outbound_retries.labels(
                self._metrics.service, self.upstream, reason
            )
            self._retries[reason] = child
        child.inc()

    def hedge(self, result: str) -> None:
        """A hedge ``sent``, ``won`` (it answered first) or refused by the ``budget``."""
        child = self._hedges.get(result)
        if child is None:
            child = self._metrics.outbound_hedges.labels(
                self._metrics.service, self.upstream, result
            )
            self._hedges[result] = child
        child.inc()

    def refused(self, kind: str) -> None:
        """The mesh refused a call before or between tries (``circuit-open``, ``budget``...)."""
        child = self._refusals.get(kind)
        if child is None:
            child = self._metrics.outbound_refusals.labels(
                self._metrics.service, self.upstream, kind
            )
            self._refusals[kind] = child
        child.inc()

    def mirror(self, result: str) -> None:
        """A mirrored copy sent to this upstream ended (``sent``, ``failed``, ``dropped``,
        ``skipped``); this upstream is the mirror target."""
        child = self._mirrors.get(result)
        if child is None:
            child = self._metrics.outbound_mirrors.labels(
                self._metrics.service, self.upstream, result
            )
            self._mirrors[result] = child
        child.inc()

    def override(self, clamped: bool) -> None:
        """A request's own overrides applied (``clamped``: at least one held to a bound)."""
        child = self._overrides.get(clamped)
        if child is None:
            child = self._metrics.outbound_overrides.labels(
                self._metrics.service, self.upstream, "clamped" if clamped else "applied"
            )
            self._overrides[clamped] = child
        child.inc()

    def zone_try(self, local: bool) -> None:
        """A try of a zone-affine call went to the caller's zone (``local``) or another."""
        child = self._zone_tries.get(local)
        if child is None:
            child = self._metrics.outbound_zone_tries.labels(
                self._metrics.service, self.upstream, "local" if local else "remote"
            )
            self._zone_tries[local] = child
        child.inc()

    def ejection(self, endpoint: str, seconds: float, failures: int) -> None:
        """``endpoint`` (``host:port``) ejected for ``seconds`` after ``failures`` failed tries."""
        if self._ejections is None:
            self._ejections = self._metrics.outbound_ejections.labels(
                self._metrics.service, self.upstream
            )
        self._ejections.inc()
        self._metrics.record_ejection(self.upstream, endpoint, seconds, failures)
