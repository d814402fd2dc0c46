"""Traffic mirroring through real servers on loopback (fake upstreams as the primary and the
mirror target), through every transport: httpx and httpx2, sync and async (asyncio and trio)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from outbound_driver import Driver, dead_url, driver, runtime

from asgimesh import MeshContext, MeshRuntime
from asgimesh._wire import parse_traceparent
from asgimesh.outbound._shadow import CLOSE_WAIT

#: The policy defaults of this module's calls (the ``mesh`` fixture reads them).
MESH_DEFAULTS = {"timeout": "3s", "per_try_timeout": "1s",
                 "retries": {"backoff": {"base": "1ms", "max": "5ms"}}}


def mirrors(rt: MeshRuntime, result: str, upstream: str = "search-v2") -> float:
    labels = {"service": "app", "upstream": upstream, "result": result}
    return rt.metrics.registry.get_sample_value("mesh_outbound_mirrors_total", labels) or 0.0


def eventually(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Copies are fire-and-forget: wait (bounded) for what they do to show."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def mirror_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "asgimesh-mirror"]


def shop(primary: str, target: str, mirror: dict[str, Any] | None = None, **search: Any) -> dict[str, Any]:
    return {
        "search": {"endpoints": [primary], "mirror": mirror or {"service": "search-v2"}, **search},
        "search-v2": {"endpoints": [target]},
        "plain": {"endpoints": [primary]},  # the same upstream, never mirrored: the baseline
    }


def test_every_call_is_copied_at_100_percent(mesh: Any, fake_upstreams: Any) -> None:
    primary, target = fake_upstreams.get(2)
    d = mesh(shop(primary, target))
    context = MeshContext(request_id="req-7", trace_id="e" * 32, span_id="f" * 16)
    answers = [d.request("GET", "http://search/q?term=x", context=context,
                         headers={"x-tenant": "acme"}) for _ in range(10)]
    assert all(a.status_code == 200 and a.json()["upstream"] == "u0" for a in answers)
    eventually(lambda: fake_upstreams.stats(target)["requests"] == 10)
    eventually(lambda: mirrors(d.runtime, "sent") == 10)
    assert fake_upstreams.stats(primary)["requests"] == 10
    seen = fake_upstreams.stats(target)["last_headers"]
    assert seen["host"] == "search-shadow" and seen["mesh-shadow"] == "1"
    assert seen["mesh-attempt"] == "1" and 0 < int(seen["mesh-deadline-ms"]) <= 1000
    assert seen["x-tenant"] == "acme" and seen["x-request-id"] == "req-7"
    shadow_trace = parse_traceparent(seen["traceparent"])
    call_trace = parse_traceparent(answers[-1].json()["headers"]["traceparent"])
    assert shadow_trace is not None and call_trace is not None
    assert shadow_trace[0] == call_trace[0] and shadow_trace[1] != call_trace[1]
    assert "mesh-shadow" not in answers[-1].json()["headers"]  # the real call is not marked
    eventually(lambda: d.transport._planner.mirrors.in_flight == 0)


def test_zero_percent_copies_nothing(mesh: Any, fake_upstreams: Any) -> None:
    primary, target = fake_upstreams.get(2)
    d = mesh(shop(primary, target, {"service": "search-v2", "percent": 0},
                  routes=[{"match": {"path": "/copy"}, "mirror": {"service": "search-v2"}}]))
    assert all(d.request("GET", "http://search/q").status_code == 200 for _ in range(20))
    assert d.request("GET", "http://search/copy").status_code == 200
    eventually(lambda: fake_upstreams.stats(target)["requests"] >= 1)
    time.sleep(0.2)
    assert fake_upstreams.stats(target)["requests"] == 1  # only the route's copy
    assert fake_upstreams.stats(target)["by_method"] == {"GET": 1}
    assert mirrors(d.runtime, "sent") == 1


def test_a_seeded_share_of_calls_is_copied(mesh: Any, fake_upstreams: Any) -> None:
    primary, target = fake_upstreams.get(2)
    d = mesh(shop(primary, target, {"service": "search-v2", "percent": 25}))
    d.transport._planner.rng = random.Random(11)  # before the first call builds any state
    calls = 160
    assert all(d.request("GET", "http://search/q").status_code == 200 for _ in range(calls))
    eventually(lambda: d.transport._planner.mirrors.in_flight == 0)
    copied = fake_upstreams.stats(target)["requests"]
    # The draw is the only use of the random source here (one endpoint per service: the
    # balancers draw nothing), so the seeded sequence says exactly which calls are copied.
    replay = random.Random(11)
    assert copied == sum(replay.random() * 100 < 25 for _ in range(calls))
    assert 15 <= copied <= 70  # 25% of 160 is 40 (binomial sd 5.5); a broken draw is 0 or 160
    assert mirrors(d.runtime, "sent") == copied


def test_post_body_is_copied_as_is_and_a_stream_is_skipped(mesh: Any, fake_upstreams: Any) -> None:
    primary, target = fake_upstreams.get(2)
    d = mesh(shop(primary, target))
    body = os.urandom(200_000)
    answer = d.request("POST", "http://search/index", content=body)
    assert answer.status_code == 200 and answer.json()["body_length"] == len(body)
    eventually(lambda: fake_upstreams.stats(target)["requests"] == 1)
    stats = fake_upstreams.stats(target)
    assert stats["by_method"] == {"POST": 1}
    assert stats["last_body_length"] == len(body)
    assert stats["last_body_sha256"] == hashlib.sha256(body).hexdigest()
    if d.sync:
        stream: Any = iter([b"one-", b"shot"])
    else:
        async def chunks() -> Any:
            yield b"one-"
            yield b"shot"
        stream = chunks()
    answer = d.request("POST", "http://search/index", content=stream)
    assert answer.status_code == 200 and answer.json()["body_length"] == 8
    assert mirrors(d.runtime, "skipped") == 1
    time.sleep(0.2)
    assert fake_upstreams.stats(target)["requests"] == 1  # the stream was not copied
    assert fake_upstreams.stats(primary)["last_body_length"] == 8


@pytest.mark.parametrize("mode", ["asyncio", "trio"])
def test_a_cancelled_call_does_not_cancel_its_copy(mode: str, fake_upstreams: Any) -> None:
    """The copy runs in a task of the event loop, not in the request's: a caller that gives up
    (a timeout, a client gone) takes only its own call with it."""
    import anyio

    primary, target = fake_upstreams.get(2)
    fake_upstreams.control(primary, "slow:1")
    fake_upstreams.control(target, "slow:0.3")
    rt = runtime(shop(primary, target), {"per_try_timeout": "3s", "timeout": "5s"}, base=MESH_DEFAULTS)
    with driver(f"httpx-{mode}", rt) as d:
        async def give_up() -> bool:
            with anyio.move_on_after(0.2) as scope:
                await d.client.get("http://search/q")
            return bool(scope.cancelled_caught)

        assert d._portal.call(give_up)
        eventually(lambda: mirrors(rt, "sent") == 1)
        assert fake_upstreams.stats(target)["requests"] == 1


def _wall(d: Driver, host: str, calls: int) -> float:
    start = time.monotonic()
    for _ in range(calls):
        assert d.request("GET", f"http://{host}/q").status_code == 200
    return time.monotonic() - start


@pytest.mark.parametrize("failure", ["hang", "refused"])
def test_a_failing_mirror_target_neither_slows_nor_fails_the_calls(
    mesh: Any, fake_upstreams: Any, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary, hung = fake_upstreams.get(2)
    target = hung if failure == "hang" else dead_url()
    if failure == "hang":
        fake_upstreams.control(hung, "hang")
    d = mesh(shop(primary, target))
    calls = 20
    _wall(d, "plain", 3)  # warm the pool
    baseline = _wall(d, "plain", calls)
    mirrored = _wall(d, "search", calls)
    # Each copy waits up to its 1 s limit: a call that waited for its copy would take 20 s.
    assert mirrored < 5 * baseline + 1.0, (mirrored, baseline)
    # Async: every copy times out (or is refused). Sync: eight threads take them in turn, and
    # a copy that waited in the queue past its own limit is dropped unsent.
    eventually(lambda: mirrors(d.runtime, "failed") + mirrors(d.runtime, "dropped") == calls)
    assert mirrors(d.runtime, "failed") >= (8 if d.sync and failure == "hang" else calls)
    assert mirrors(d.runtime, "sent") == 0
    assert fake_upstreams.stats(primary)["requests"] == 3 + 2 * calls
    eventually(lambda: d.transport._planner.mirrors.in_flight == 0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_past_the_cap_copies_are_dropped_and_counted(variant: str, fake_upstreams: Any) -> None:
    primary, hung = fake_upstreams.get(2)
    fake_upstreams.control(hung, "hang")
    rt = runtime(shop(primary, hung), {"per_try_timeout": "5s", "timeout": "6s"}, base=MESH_DEFAULTS)
    with driver(variant, rt) as d:
        d.transport._planner.mirrors.cap = 4
        assert all(d.request("GET", "http://search/q").status_code == 200 for _ in range(10))
        # Ten calls take far less than the copies' 5 s: four copies hang, six are dropped.
        assert mirrors(rt, "dropped") == 6
        assert d.transport._planner.mirrors.in_flight == 4
        eventually(lambda: fake_upstreams.stats(hung)["requests"] == 4)
        started = time.monotonic()
        d.close()
        closing = time.monotonic() - started
    # Closing does not wait for hung copies past its bound (the copies' own limit is 5 s).
    assert closing < CLOSE_WAIT + 2.0, closing
    if not d.sync:
        assert d.transport._mirror_tasks.running == 0  # cancelled and gone, not leaked
        assert mirrors(rt, "dropped") == 10  # the four cancelled copies are dropped too
    # No mirror thread outlives its copy's limit (sync), none at all (async).
    eventually(lambda: not mirror_threads(), 10.0)
    assert d.transport._planner.mirrors.in_flight == 0


def test_mirror_threads_are_bounded_and_closed(fake_upstreams: Any) -> None:
    primary, slow = fake_upstreams.get(2)
    fake_upstreams.control(slow, "slow:0.3")
    rt = runtime(shop(primary, slow), base=MESH_DEFAULTS)
    with driver("httpx-sync", rt) as d:
        assert all(d.request("GET", "http://search/q").status_code == 200 for _ in range(30))
        assert 1 <= len(mirror_threads()) <= 8
        # Eight at a time, 0.3 s each, within the copies' 1 s limit: the first ones are sent,
        # later ones may time out or expire in the queue; every one ends, counted once.
        ended = ("sent", "failed", "dropped")
        eventually(lambda: sum(mirrors(rt, r) for r in ended) == 30)
        assert mirrors(rt, "sent") >= 8
        assert d.transport._mirror_workers.threads <= 8  # idle threads stay until closed
    eventually(lambda: not mirror_threads(), 10.0)


def test_no_mirror_in_policy_starts_nothing(mesh: Any, fake_upstreams: Any) -> None:
    (primary,) = fake_upstreams.get(1)
    d = mesh({"search": {"endpoints": [primary]}})
    assert all(d.request("GET", "http://search/q").status_code == 200 for _ in range(5))
    assert d.transport._planner.mirrors.in_flight == 0
    if d.sync:
        assert d.transport._mirror_workers.threads == 0
    else:
        assert d.transport._mirror_tasks.running == 0 and not d.transport._mirror_inners

