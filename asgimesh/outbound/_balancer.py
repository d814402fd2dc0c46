"""Load balancers: which endpoint the next try goes to. Pure; the random source is injected.

``p2c_ewma`` (the default) is the power of two choices over a peak-EWMA cost, as Finagle's
``Balancers.p2cPeakEwma`` and Linkerd's proxy do: pick two endpoints at random, send to the one
whose latency estimate times outstanding tries is lower. It needs no global view, reacts within a
few requests to a slow or failing endpoint, and never herds every caller onto one "best" endpoint.
``least_request`` is the same two choices on outstanding tries alone (Envoy's default);
``round_robin`` and ``random`` are the classics.

``exclude`` holds endpoints this call already tried: a retry goes elsewhere when it can (Envoy's
``previous_hosts`` predicate), since the endpoint that just failed is the likeliest to fail again.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

from ._endpoint import Endpoint

__all__ = ["Balancer", "LeastRequest", "P2CEwma", "RandomBalancer", "RoundRobin", "make_balancer"]


class Balancer(Protocol):
    def pick(
        self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint:
        """One of ``endpoints`` (never empty), avoiding ``exclude`` unless nothing else is left."""
        ...


def _candidates(endpoints: Sequence[Endpoint], exclude: Collection[Endpoint]) -> Sequence[Endpoint]:
    if not exclude:
        return endpoints
    rest = [e for e in endpoints if e not in exclude]
    return rest or endpoints


def _two(pool: Sequence[Endpoint], rng: random.Random) -> tuple[Endpoint, Endpoint]:
    """Two distinct endpoints of ``pool`` (at least two long), uniformly at random."""
    count = len(pool)
    first = int(rng.random() * count)
    second = int(rng.random() * (count - 1))
    if second >= first:
        second += 1
    return pool[first], pool[second]


class _PowerOfTwo:
    """Pick two endpoints at random and send to the less loaded; subclasses say what load is."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(
        self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint:
        pool = _candidates(endpoints, exclude)
        if len(pool) == 1:
            return pool[0]
        a, b = _two(pool, self._rng)
        return a if self._load(a, now) <= self._load(b, now) else b

    @staticmethod
    def _load(endpoint: Endpoint, now: float) -> float:
        raise NotImplementedError


class P2CEwma(_PowerOfTwo):
    """Power of two choices on peak-EWMA latency x (outstanding + 1)."""

    @staticmethod
    def _load(endpoint: Endpoint, now: float) -> float:
        return endpoint.cost(now)


class LeastRequest(_PowerOfTwo):
    """Power of two choices on outstanding tries (Envoy's ``LEAST_REQUEST``)."""

    @staticmethod
    def _load(endpoint: Endpoint, now: float) -> float:
        return endpoint.outstanding


class RoundRobin:
    """Each endpoint in turn, starting at a random one so that callers do not march in step."""

    def __init__(self, rng: random.Random) -> None:
        self._next = rng.randrange(1 << 30)

    def pick(
        self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint:
        pool = _candidates(endpoints, exclude)
        index = self._next % len(pool)
        self._next = index + 1
        return pool[index]


class RandomBalancer:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(
        self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[Endpoint] = ()
    ) -> Endpoint:
        pool = _candidates(endpoints, exclude)
        return pool[int(self._rng.random() * len(pool))]


_KINDS: dict[str, type[P2CEwma | LeastRequest | RoundRobin | RandomBalancer]] = {
    "p2c_ewma": P2CEwma,
    "least_request": LeastRequest,
    "round_robin": RoundRobin,
    "random": RandomBalancer,
}


def make_balancer(kind: str, rng: random.Random) -> Balancer:
    """The balancer the policy names (``load_balancer``)."""
    return _KINDS[kind](rng)
