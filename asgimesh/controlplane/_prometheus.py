"""``GET /v1/services`` from a Prometheus server instead of the instances' reports.

Past a few hundred instances, or where Prometheus already scrapes every service's
``/_mesh/metrics``, the control plane can read the same figures from Prometheus' query API
(``asgimesh control-plane --prometheus URL``): rates and quantiles over a window, per service,
per instance (Prometheus' ``instance`` label: the scraped ``host:port``) and per edge
``service`` → ``upstream``. The answer has the roll-up's shape, so the dashboard and
``asgimesh status`` work unchanged.

:data:`QUERIES` is the one statement of the PromQL used (``docs/prometheus.md`` shows the same
text, checked by a test, for operators to reuse in Grafana or as recording rules);
:func:`services_from_results` turns the query results into the answer, a plain function tested
without a server. :class:`PrometheusSource` is the thin I/O around them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import anyio
import httpx

__all__ = [
    "PROMETHEUS_WINDOW",
    "QUERIES",
    "PrometheusError",
    "PrometheusSource",
    "queries",
    "services_from_results",
]

#: A rate window: one PromQL duration of a single unit (``30s``, ``1m``, ``2h``).
PROMETHEUS_WINDOW = re.compile(r"[1-9][0-9]{0,5}(ms|s|m|h|d)", re.ASCII)

#: PromQL by name; ``$window`` is the rate window (``--prometheus-window``, default ``1m``).
QUERIES: dict[str, str] = {
    "instance_rate": "sum by (service, instance) (rate(mesh_inbound_requests_total[$window]))",
    "instance_errors": (
        'sum by (service, instance) (rate(mesh_inbound_requests_total{status=~"5.."}[$window]))'
    ),
    "instance_p50": (
        "histogram_quantile(0.5, sum by (service, instance, le) "
        "(rate(mesh_inbound_request_duration_seconds_bucket[$window])))"
    ),
    "instance_p99": (
        "histogram_quantile(0.99, sum by (service, instance, le) "
        "(rate(mesh_inbound_request_duration_seconds_bucket[$window])))"
    ),
    "instance_version": "max by (service, instance) (mesh_policy_version)",
    "instance_denied": (
        "sum by (service, instance) (increase(mesh_authz_denied_total[$window]))"
    ),
    "instance_limited": (
        "sum by (service, instance) (increase(mesh_rate_limited_total[$window]))"
    ),
    "service_p50": (
        "histogram_quantile(0.5, sum by (service, le) "
        "(rate(mesh_inbound_request_duration_seconds_bucket[$window])))"
    ),
    "service_p99": (
        "histogram_quantile(0.99, sum by (service, le) "
        "(rate(mesh_inbound_request_duration_seconds_bucket[$window])))"
    ),
    "edge_rate": "sum by (service, upstream) (rate(mesh_outbound_requests_total[$window]))",
    "edge_errors": (
        "sum by (service, upstream) "
        '(rate(mesh_outbound_requests_total{status=~"5..|error"}[$window]))'
    ),
    "edge_calls": "sum by (service, upstream) (increase(mesh_outbound_requests_total[$window]))",
    "edge_p50": (
        "histogram_quantile(0.5, sum by (service, upstream, le) "
        "(rate(mesh_outbound_request_duration_seconds_bucket[$window])))"
    ),
    "edge_p99": (
        "histogram_quantile(0.99, sum by (service, upstream, le) "
        "(rate(mesh_outbound_request_duration_seconds_bucket[$window])))"
    ),
    "edge_retries": (
        "sum by (service, upstream, reason) (increase(mesh_outbound_retries_total[$window]))"
    ),
    "edge_refusals": (
        "sum by (service, upstream, reason) (increase(mesh_outbound_refusals_total[$window]))"
    ),
    "edge_ejections": (
        "sum by (service, upstream) (increase(mesh_outbound_ejections_total[$window]))"
    ),
}

#: Series one answer may hold per query (a mesh past this is beyond one dashboard page).
MAX_SERIES = 10_000


class PrometheusError(Exception):
    """Prometheus could not answer: unreachable, an error status, or an unexpected body."""


def queries(window: str) -> dict[str, str]:
    """:data:`QUERIES` with the rate window filled in."""
    return {name: query.replace("$window", window) for name, query in QUERIES.items()}


Series = list[tuple[Mapping[str, str], float]]


def _number(value: Any) -> float | None:
    """A sample's value (Prometheus sends it as a string); ``None`` for NaN and infinities,
    which ``histogram_quantile`` gives where there were no observations."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_vector(body: Any) -> Series:
    """The ``(labels, value)`` pairs of an instant vector answer; :class:`PrometheusError` for
    anything else."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise PrometheusError(f"query failed: {str(error or body)[:200]}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise PrometheusError("expected an instant vector")
    result = data.get("result")
    if not isinstance(result, list) or len(result) > MAX_SERIES:
        raise PrometheusError(f"expected at most {MAX_SERIES} series")
    series: Series = []
    for item in result:
        if not isinstance(item, dict):
            continue
        labels, value = item.get("metric"), item.get("value")
        if not isinstance(labels, dict) or not isinstance(value, list) or len(value) != 2:
            continue
        number = _number(value[1])
        if number is not None:
            series.append(({str(k): str(v)[:253] for k, v in labels.items()}, number))
    return series


def _by(series: Series, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels.get(k, "") for k in keys): value for labels, value in series}


def _success(rate: float | None, errors: float | None) -> float | None:
    if not rate:
        return None
    return max(0.0, min(1.0, 1.0 - (errors or 0.0) / rate))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def services_from_results(results: Mapping[str, Series]) -> dict[str, Any]:
    """The roll-up's ``services`` and ``edges`` from the results of :data:`QUERIES`."""
    get = results.get
    rate = _by(get("instance_rate", []), "service", "instance")
    errors = _by(get("instance_errors", []), "service", "instance")
    p50 = _by(get("instance_p50", []), "service", "instance")
    p99 = _by(get("instance_p99", []), "service", "instance")
    version = _by(get("instance_version", []), "service", "instance")
    denied = _by(get("instance_denied", []), "service", "instance")
    limited = _by(get("instance_limited", []), "service", "instance")
    service_p50 = _by(get("service_p50", []), "service")
    service_p99 = _by(get("service_p99", []), "service")
    instances: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(set(rate) | set(version)):
        service, instance = key
        if not service:
            continue
        instances.setdefault(service, []).append(
            {
                "instance": instance,
                "policy_version": int(version.get(key, 0)),
                "requests_per_second": round(rate.get(key, 0.0), 3),
                "success_rate": _success(rate.get(key), errors.get(key)),
                "p50_ms": _ms(p50.get(key)),
                "p99_ms": _ms(p99.get(key)),
                "denied": round(denied.get(key, 0.0)),
                "rate_limited": round(limited.get(key, 0.0)),
                "pid": None,
                "address": instance or None,
                "reported": None,
            }
        )
    rows = []
    for service, members in sorted(instances.items()):
        total = sum(rate.get((service, m["instance"]), 0.0) for m in members)
        failing = sum(errors.get((service, m["instance"]), 0.0) for m in members)
        rows.append(
            {
                "service": service,
                "instances": members,
                "policy_versions": sorted({m["policy_version"] for m in members}),
                "requests_per_second": round(total, 3),
                "success_rate": _success(total, failing),
                "p50_ms": _ms(service_p50.get((service,))),
                "p99_ms": _ms(service_p99.get((service,))),
                "denied": sum(m["denied"] for m in members),
                "rate_limited": sum(m["rate_limited"] for m in members),
            }
        )
    return {"services": rows, "edges": _edges(results, {row["service"] for row in rows})}


def _edges(results: Mapping[str, Series], services: set[str]) -> list[dict[str, Any]]:
    get = results.get
    rate = _by(get("edge_rate", []), "service", "upstream")
    errors = _by(get("edge_errors", []), "service", "upstream")
    calls = _by(get("edge_calls", []), "service", "upstream")
    p50 = _by(get("edge_p50", []), "service", "upstream")
    p99 = _by(get("edge_p99", []), "service", "upstream")
    ejections = _by(get("edge_ejections", []), "service", "upstream")
    reasons: dict[str, dict[tuple[str, ...], dict[str, int]]] = {}
    for name in ("edge_retries", "edge_refusals"):
        per_edge = reasons[name] = {}
        for labels, value in get(name, []):
            count = round(value)
            if count > 0:
                edge = (labels.get("service", ""), labels.get("upstream", ""))
                per_edge.setdefault(edge, {})[labels.get("reason", "")] = count
    rows = []
    for key in sorted(set(rate) | set(calls)):
        source, destination = key
        if not source or not destination:
            continue
        rows.append(
            {
                "source": source,
                "destination": destination,
                "known": destination in services,
                "instances": None,
                "requests": round(calls.get(key, 0.0)),
                "requests_per_second": round(rate.get(key, 0.0), 3),
                "success_rate": _success(rate.get(key), errors.get(key)),
                "p50_ms": _ms(p50.get(key)),
                "p99_ms": _ms(p99.get(key)),
                "retries": dict(sorted(reasons["edge_retries"].get(key, {}).items())),
                "ejections": round(ejections.get(key, 0.0)),
                "refusals": dict(sorted(reasons["edge_refusals"].get(key, {}).items())),
                "ejected": [],
            }
        )
    return rows


class PrometheusSource:
    """Runs :data:`QUERIES` against one Prometheus server, all at once, bounded in time."""

    def __init__(self, url: str, *, window: str = "1m", timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        parts = httpx.URL(self.url)
        #: The server as messages name it: without credentials a URL may carry.
        self.shown = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
        self._queries = queries(window)
        self._timeout = timeout

    async def services(self) -> dict[str, Any]:
        """The roll-up's ``services`` and ``edges``; :class:`PrometheusError` if any query
        fails (the caller decides what to show instead)."""
        results: dict[str, Series] = {}
        failures: list[str] = []
        async with httpx.AsyncClient(timeout=self._timeout) as client:

            async def run(name: str, query: str) -> None:
                try:
                    answer = await client.get(self.url + "/api/v1/query", params={"query": query})
                    results[name] = parse_vector(answer.json())
                except (httpx.HTTPError, ValueError, PrometheusError) as error:
                    failures.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")

            async with anyio.create_task_group() as tasks:
                for name, query in self._queries.items():
                    tasks.start_soon(run, name, query)
        if failures:
            raise PrometheusError(f"Prometheus at {self.shown}: {sorted(failures)[0]}")
        return services_from_results(results)
