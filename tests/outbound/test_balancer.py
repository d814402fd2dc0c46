"""Balancers, with an injected random source and clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from asgimesh.outbound._balancer import make_balancer
from asgimesh.outbound._endpoint import DEFAULT_RTT, Endpoint


def endpoints(n: int, now: float = 0.0) -> list[Endpoint]:
    return [Endpoint(f"http://10.0.0.{i}:80", now) for i in range(n)]


def test_endpoint_parses_origin_as_httpx_spells_it() -> None:
    e = Endpoint("https://Svc.local:443", 0.0)
    assert (e.scheme, e.host, e.port) == ("https", "svc.local", None)
    e = Endpoint("http://[::1]:8001", 0.0)
    assert (e.host, e.port) == ("::1", 8001)


def test_peak_ewma_takes_peaks_at_once_and_decays() -> None:
    e = Endpoint("http://a:1", 0.0)
    assert e.rtt == DEFAULT_RTT
    e.observe(1.0, 0.0)
    assert e.rtt == 1.0  # a peak is taken at once
    e.observe(0.01, 0.001)
    assert 0.99 < e.rtt < 1.0  # a dip only gradually
    assert e.estimate(30.0) < e.estimate(0.001) / 10  # and news ages: decays towards zero
    e.outstanding = 3
    assert e.cost(0.001) == pytest.approx(e.estimate(0.001) * 4)


def test_p2c_ewma_prefers_the_faster_endpoint() -> None:
    eps = endpoints(3)
    eps[0].observe(0.100, 0.0)  # slow
    eps[1].observe(0.001, 0.0)
    eps[2].observe(0.001, 0.0)
    eps[1].rtt = eps[2].rtt = 0.001
    balancer = make_balancer("p2c_ewma", random.Random(7))
    picks = Counter(balancer.pick(eps, 0.0).url for _ in range(3000))
    # The slow one only wins when drawn against itself, which p2c never does.
    assert picks[eps[0].url] == 0
    assert picks[eps[1].url] > 1000 and picks[eps[2].url] > 1000


def test_p2c_ewma_weighs_outstanding_requests() -> None:
    eps = endpoints(2)
    for e in eps:
        e.rtt = 0.010
    eps[0].outstanding = 5
    balancer = make_balancer("p2c_ewma", random.Random(1))
    assert all(balancer.pick(eps, 0.0) is eps[1] for _ in range(50))


def test_least_request_picks_fewer_outstanding() -> None:
    eps = endpoints(2)
    eps[1].outstanding = 2
    balancer = make_balancer("least_request", random.Random(1))
    assert all(balancer.pick(eps, 0.0) is eps[0] for _ in range(50))


def test_round_robin_cycles_every_endpoint() -> None:
    eps = endpoints(3)
    balancer = make_balancer("round_robin", random.Random(3))
    picks = [balancer.pick(eps, 0.0) for _ in range(9)]
    assert Counter(p.url for p in picks) == Counter({e.url: 3 for e in eps})
    assert picks[0] is not picks[1] and picks[1] is not picks[2]


def test_random_is_roughly_uniform() -> None:
    eps = endpoints(4)
    balancer = make_balancer("random", random.Random(5))
    counts = Counter(balancer.pick(eps, 0.0).url for _ in range(4000))
    assert all(800 < c < 1200 for c in counts.values()) and len(counts) == 4


@pytest.mark.parametrize("kind", ["p2c_ewma", "least_request", "round_robin", "random"])
def test_every_balancer_avoids_excluded_unless_nothing_else(kind: str) -> None:
    eps = endpoints(3)
    balancer = make_balancer(kind, random.Random(11))
    for _ in range(100):
        assert balancer.pick(eps, 0.0, exclude=[eps[0], eps[1]]) is eps[2]
    # All excluded: a retry still goes somewhere.
    assert balancer.pick(eps, 0.0, exclude=eps) in eps
    assert balancer.pick(eps[:1], 0.0) is eps[0]
