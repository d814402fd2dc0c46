"""Traffic shifting and fault injection: per-call draws against the policy's percentages. Pure.

``split`` sends ``weight`` percent of a service's calls to another service (a canary, a
migration); the rest stay. ``fault`` delays or aborts a percentage of calls before they leave,
as Envoy's fault filter does, so that a chaos drill exercises the callers' timeouts and retries
without touching the upstream. ``mirror`` copies a percentage of calls to another service.
"""

from __future__ import annotations

import random

from ._compile import FaultConfig, MirrorConfig

__all__ = ["choose_backend", "draw_fault", "draw_mirror"]


def choose_backend(service: str, split: tuple[tuple[str, float], ...], rng: random.Random) -> str:
    """The service this call goes to: a split target by weight (percent), else ``service``."""
    if not split:
        return service
    draw = rng.random() * 100.0
    for target, weight in split:
        if draw < weight:
            return target
        draw -= weight
    return service


def draw_fault(fault: FaultConfig | None, rng: random.Random) -> tuple[float, int | None]:
    """``(delay seconds, abort status or None)`` for one call."""
    if fault is None:
        return 0.0, None
    delay = fault.delay if fault.delay_percent and rng.random() * 100 < fault.delay_percent else 0.0
    abort = (
        fault.abort_status
        if fault.abort_percent and rng.random() * 100 < fault.abort_percent
        else None
    )
    return delay, abort


def draw_mirror(mirror: MirrorConfig, rng: random.Random) -> bool:
    """Whether this call is mirrored: ``percent`` of them (100: every one, without a draw)."""
    return mirror.percent >= 100 or rng.random() * 100 < mirror.percent
