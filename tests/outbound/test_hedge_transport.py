"""Hedged requests through real upstreams on loopback (uvicorn processes, one of them slow),
through every transport: httpx and httpx2, sync and async (asyncio and trio)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from outbound_driver import VARIANTS, Driver, driver, runtime, sample

#: The slow replica's answer time, and what a hedged call must beat by far.
SLOW = 0.6
FAST_ENOUGH = 0.45
#: The policy defaults of this module's calls (the ``mesh`` fixture reads them).
MESH_DEFAULTS = {"timeout": "3s", "per_try_timeout": "2s",
                 "retries": {"backoff": {"base": "1ms", "max": "5ms"}}}


def timed(d: Driver, method: str = "GET", **kwargs: Any) -> tuple[Any, float]:
    start = time.monotonic()
    response = d.request(method, "http://pay/", **kwargs)
    return response, time.monotonic() - start


def settled(d: Driver) -> list[int]:
    """Every endpoint's outstanding tries once the losers are done (a sync loser's thread
    runs until its slow answer comes, then releases its endpoint)."""
    endpoints = d.transport._planner.upstreams["pay"].endpoints
    deadline = time.monotonic() + 5
    while any(e.outstanding for e in endpoints) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [e.outstanding for e in endpoints]


def slow_and_fast(fake_upstreams: Any) -> tuple[str, str]:
    slow, fast = fake_upstreams.get(2)
    fake_upstreams.control(slow, f"slow:{SLOW}")
    return slow, fast


def pay(urls: list[str], **extra: Any) -> dict[str, Any]:
    # Round robin: the first try of every other call goes to the slow replica.
    return {"pay": {"endpoints": urls, "load_balancer": "round_robin", **extra}}


def test_a_hedge_beats_the_slow_replica(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = slow_and_fast(fake_upstreams)
    d = mesh(pay([slow, fast], hedge={"delay": "20ms"}))
    results = [timed(d) for _ in range(6)]
    assert [r.status_code for r, _ in results] == [200] * 6
    assert all(r.json()["upstream"] == "u1" for r, _ in results)  # the fast one's answers
    assert max(t for _, t in results) < FAST_ENOUGH, [round(t, 3) for _, t in results]
    assert fake_upstreams.stats(slow)["requests"] >= 1  # first tries did go there
    sent = sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent")
    won = sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="won")
    assert won >= 1 and won <= sent  # (a fast try slower than 20 ms on a busy machine: a hedge lost)
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="pay", method="GET",
                  status="200") == 6  # each call counted once, hedged or not
    hedged = [r for r, _ in results if r.json()["headers"]["mesh-attempt"] == "2"]
    assert len(hedged) == won  # the hedge is the call's next attempt
    assert settled(d) == [0, 0]


def test_without_a_hedge_the_slow_replica_is_waited_for(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = slow_and_fast(fake_upstreams)
    d = mesh(pay([slow, fast]))
    times = [timed(d)[1] for _ in range(2)]
    assert max(times) >= SLOW * 0.9, times  # round robin sent one of them to the slow replica
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") == 0


def test_a_post_is_never_hedged(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = slow_and_fast(fake_upstreams)
    d = mesh(pay([slow, fast], hedge={"delay": "20ms"}))
    times = [timed(d, "POST", content=b"{}")[1] for _ in range(2)]
    assert max(times) >= SLOW * 0.9, times
    # Each POST reached exactly one replica once.
    assert sum(fake_upstreams.stats(u)["requests"] for u in (slow, fast)) == 2
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") == 0


def test_no_budget_no_hedge(mesh: Any, fake_upstreams: Any) -> None:
    urls = fake_upstreams.get(2)
    for url in urls:  # whichever the first try goes to, a hedge would be due
        fake_upstreams.control(url, f"slow:{SLOW}")
    d = mesh(pay(urls, hedge={"delay": "20ms"},
                 retries={"budget": {"ratio": 0, "min_per_second": 0}}))
    assert timed(d)[1] >= SLOW * 0.9
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="budget") == 1
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") == 0
    assert sum(fake_upstreams.stats(u)["requests"] for u in urls) == 1  # no second request


def test_the_pool_stays_healthy_after_many_hedges(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = fake_upstreams.get(2)
    fake_upstreams.control(slow, "slow:0.2")
    d = mesh(pay([slow, fast], hedge={"delay": "5ms"}), max_connections=4)
    for _ in range(20):
        response = d.request("GET", "http://pay/", timeout=5)
        assert response.status_code == 200 and response.json()["upstream"] == "u1"
    sent = sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent")
    assert sent >= 5
    assert settled(d) == [0, 0]
    pool = d.transport._inner._pool
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(c.is_idle() or c.is_closed()
                                                  for c in pool.connections):
        time.sleep(0.05)
    assert all(c.is_idle() or c.is_closed() for c in pool.connections), pool.connections
    assert len(pool.connections) <= 4
    # And the pool still serves: the slow replica made fast, each replica answers in turn.
    fake_upstreams.control(slow, "ok")
    answers = {d.request("GET", "http://pay/", timeout=5).json()["upstream"] for _ in range(4)}
    assert answers == {"u0", "u1"}


def test_a_route_can_turn_its_services_hedge_off(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = slow_and_fast(fake_upstreams)
    d = mesh(pay([slow, fast], hedge={"delay": "20ms"},
                 routes=[{"match": {"path": "/report"}, "hedge": {"max": 0}}]))
    start = time.monotonic()
    for _ in range(2):
        assert d.request("GET", "http://pay/report").status_code == 200
    assert time.monotonic() - start >= SLOW * 0.9
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") == 0


def test_a_p95_hedge_learns_the_services_latency_first(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast = fake_upstreams.get(2)
    d = mesh(pay([slow, fast], hedge={"delay": "p95"}))
    # Both fast: the window fills with the service's latency (no hedge before 20 samples).
    for _ in range(30):
        assert d.request("GET", "http://pay/").status_code == 200
    window = d.transport._planner.upstreams["pay"].latency
    assert window is not None
    p95 = window.quantile(0.95, d.transport._planner.clock())
    assert p95 is not None and p95 < FAST_ENOUGH
    fake_upstreams.control(slow, f"slow:{SLOW}")
    sent = sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent")
    times = [timed(d)[1] for _ in range(6)]
    # No call waited for the slow replica, though tries (first ones or hedges) went there.
    assert max(times) < FAST_ENOUGH, times
    assert fake_upstreams.stats(slow)["requests"] >= 1
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") > sent
    assert settled(d) == [0, 0]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.endswith("sync")])
def test_a_caller_cancelling_a_hedged_call_releases_every_try(mesh: Any, fake_upstreams: Any) -> None:
    slow, other = fake_upstreams.get(2)
    for url in (slow, other):
        fake_upstreams.control(url, f"slow:{SLOW}")
    d = mesh(pay([slow, other], hedge={"delay": "20ms"}))

    async def cancelled() -> bool:
        import anyio

        with anyio.move_on_after(0.2) as scope:  # after the hedge, before either answers
            await d.client.get("http://pay/")
        return scope.cancelled_caught

    assert d._portal.call(cancelled)
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") == 1
    assert settled(d) == [0, 0]
    assert sample(d.runtime, "mesh_outbound_requests_total", upstream="pay", method="GET",
                  status="error") == 1  # counted once, as a call without an answer
    fake_upstreams.control(slow, "ok")
    fake_upstreams.control(other, "ok")
    assert d.request("GET", "http://pay/").status_code == 200  # and the pool still serves


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.endswith("sync")])
def test_threads_sharing_a_sync_transport_hedge_without_leaks(variant: str,
                                                              fake_upstreams: Any) -> None:
    """The WSGI case: one sync client shared by a server's threads."""
    from concurrent.futures import ThreadPoolExecutor

    slow, fast = fake_upstreams.get(2)
    fake_upstreams.control(slow, "lag:30:0.3")
    rt = runtime(pay([slow, fast], hedge={"delay": "20ms"}), base=MESH_DEFAULTS)
    with driver(variant, rt) as d:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: timed(d), range(40)))
        assert [r.status_code for r, _ in results] == [200] * 40
        # About 6 of the 40 first tries met the lag; their hedges answered first (a hiccup of
        # this shared machine may still stretch a call or two).
        assert sum(t >= 0.3 for _, t in results) <= 2, sorted(round(t, 3) for _, t in results)
        assert sample(rt, "mesh_outbound_hedges_total", upstream="pay", result="won") >= 1
        assert settled(d) == [0, 0]
        assert sample(rt, "mesh_outbound_requests_total", upstream="pay", method="GET",
                      status="200") == 40


def test_a_hedged_and_mirrored_call_sends_one_copy(mesh: Any, fake_upstreams: Any) -> None:
    slow, fast, shadow = fake_upstreams.get(3)
    fake_upstreams.control(slow, f"slow:{SLOW}")
    services = pay([slow, fast], hedge={"delay": "20ms"}, mirror={"service": "shade"})
    services["shade"] = {"endpoints": [shadow]}
    d = mesh(services)
    assert all(d.request("GET", "http://pay/").status_code == 200 for _ in range(4))
    assert sample(d.runtime, "mesh_outbound_hedges_total", upstream="pay", result="sent") >= 1
    deadline = time.monotonic() + 5
    while fake_upstreams.stats(shadow)["requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and no more come
    assert fake_upstreams.stats(shadow)["requests"] == 4  # one copy per call, not per try
