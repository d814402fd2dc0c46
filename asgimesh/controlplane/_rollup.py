"""The per-service roll-up ``GET /v1/services`` shows, from the instances' latest reports.
Pure functions, no I/O; what an instance puts in a report is :mod:`asgimesh.telemetry._summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["roll_up"]


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
