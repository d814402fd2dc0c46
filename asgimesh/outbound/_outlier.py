"""Outlier detection: stop sending to an endpoint that keeps failing, then try it again.

Envoy's consecutive-failure detector, simplified for a client: ``consecutive_failures`` failed
tries in a row (a connect failure, reset, timeout or 5xx) eject the endpoint for
``base_ejection_time x times ejected``; at most ``max_ejection_percent`` of a service's endpoints
are out at once, so a bad deploy cannot eject a whole service on a client's say-so. When its time
is up the endpoint comes back *probing*: its next try decides, one success restores it and one
failure ejects it again (for longer). ``times ejected`` decays by one per ``interval`` spent
healthy, so an endpoint that failed once long ago starts afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..policy import OutlierDetection
from ._endpoint import Endpoint

__all__ = ["OutlierRules", "record_failure", "record_success", "return_due"]


@dataclass(frozen=True, slots=True)
class OutlierRules:
    consecutive_failures: int
    interval: float
    base_ejection_time: float
    max_ejection_percent: float

    @classmethod
    def of(cls, config: OutlierDetection) -> OutlierRules:
        return cls(
            config.consecutive_failures,
            config.interval,
            config.base_ejection_time,
            config.max_ejection_percent,
        )

    def may_eject(self, total: int, ejected: int) -> bool:
        """Whether one more of ``total`` endpoints may go, ``ejected`` being out already."""
        return (ejected + 1) * 100 <= self.max_ejection_percent * total


def record_success(endpoint: Endpoint, rules: OutlierRules, now: float) -> None:
    endpoint.failures = 0
    endpoint.probing = False
    if endpoint.times_ejected and now - endpoint.times_changed >= rules.interval:
        endpoint.times_ejected -= 1
        endpoint.times_changed = now


def record_failure(
    endpoint: Endpoint, rules: OutlierRules, now: float, total: int, ejected: int
) -> bool:
    """Count a failed try; ``True`` if it ejects ``endpoint`` (the caller updates its sets)."""
    if endpoint.ejected_until > now:
        return False
    endpoint.failures += 1
    if not endpoint.probing and endpoint.failures < rules.consecutive_failures:
        return False
    if not rules.may_eject(total, ejected):
        return False
    endpoint.times_ejected += 1
    endpoint.times_changed = now
    endpoint.ejected_until = now + rules.base_ejection_time * endpoint.times_ejected
    endpoint.failures = 0
    endpoint.probing = False
    return True


def return_due(ejected: Sequence[Endpoint], now: float) -> list[Endpoint]:
    """The ejected endpoints whose time is up; each comes back probing."""
    back = [e for e in ejected if e.ejected_until <= now]
    for endpoint in back:
        endpoint.ejected_until = 0.0
        endpoint.times_changed = now  # healthy time counts from the return
        endpoint.probing = True
        endpoint.failures = 0
    return back
