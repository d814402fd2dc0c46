"""Adaptive concurrency (issue 13.6): the gradient limit on its own (fed round-trip times),
the gate and the admission answers, and a real uvicorn server under doubling load."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from asgimesh import MeshRuntime, MeshSettings
from asgimesh._errors import PolicyError
from asgimesh.inbound._adaptive import AdaptiveGate, GradientLimit
from asgimesh.policy import validate_document
from tests.conftest import Spawner


def feed(limit: GradientLimit, rtt: float, windows: int, in_flight: int | None = None) -> None:
    for _ in range(windows * limit.window):
        limit.sample(rtt, in_flight if in_flight is not None else int(limit.limit))


def test_the_limit_grows_while_latency_holds() -> None:
    limit = GradientLimit(10)
    feed(limit, 0.010, windows=20)
    assert limit.limit > 20


def test_the_limit_shrinks_when_requests_get_slower_and_recovers_after() -> None:
    limit = GradientLimit(100)
    feed(limit, 0.010, windows=10)
    before = limit.limit
    feed(limit, 0.050, windows=5)  # five times slower: queueing
    shrunk = limit.limit
    assert shrunk < before * 0.6
    feed(limit, 0.010, windows=30)
    assert limit.limit > shrunk * 1.5


def test_an_app_limited_window_leaves_the_limit_alone() -> None:
    limit = GradientLimit(100)
    feed(limit, 0.010, windows=5, in_flight=3)  # far below half the limit
    assert limit.limit == 100


def test_the_limit_stays_within_its_bounds() -> None:
    limit = GradientLimit(10, min_limit=5, max_limit=12)
    feed(limit, 0.010, windows=40)
    assert limit.limit == 12
    feed(limit, 10.0, windows=8)  # a thousand times slower: down to the floor at once
    assert limit.limit == 5


def test_the_gate_refuses_past_the_limit_and_learns_from_each_request() -> None:
    now = [0.0]
    seen: list[int] = []
    gate = AdaptiveGate(GradientLimit(4, min_limit=1, window=4), clock=lambda: now[0],
                        on_limit=seen.append)
    assert seen == [1]  # the first window calibrates at min_limit: the latency without a queue
    for _ in range(40):  # full, steady 10 ms requests: room for more
        taken = gate.limit
        assert all(gate.acquire() for _ in range(taken)) and not gate.acquire()
        now[0] += 0.01
        for _ in range(taken):
            gate.done(now[0] - 0.01)
        assert gate.in_flight == 0
    assert len(seen) > 1 and seen[-1] == gate.limit > 4


@pytest.mark.parametrize(
    ("adaptive", "problem"),
    [
        ({"min_limit": 10, "max_limit": 5}, "expected min_limit <= max_limit"),
        ({"tolerance": 0.5}, "adaptive_concurrency.tolerance"),
        ({"initial_limit": 0}, "adaptive_concurrency.initial_limit"),
    ],
)
def test_bad_settings_are_refused_with_their_path(adaptive: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_document({"inbound": {"app": {"adaptive_concurrency": adaptive}}})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_admission_answers_503_overloaded_and_the_gauge_shows_the_limit() -> None:
    policy = {"inbound": {"app": {"adaptive_concurrency": {"initial_limit": 8, "min_limit": 2}}}}
    runtime = MeshRuntime(MeshSettings(policy=json.dumps(policy)))
    admission = runtime.inbound_admission.current()
    assert admission is not None
    first = admission.admit("GET", "/", None, 0.0)
    second = admission.admit("GET", "/", None, 0.0)
    answer, gate = admission.admit("GET", "/", None, 0.0)
    assert first[0] is None and second[0] is None and gate is None and answer is not None
    assert answer.status == 503 and ("retry-after", "1") in answer.headers
    body = json.loads(answer.body)
    assert body["error"] == "overloaded" and "latency allows" in body["detail"]
    value = runtime.metrics.registry.get_sample_value
    # Calibrating first: min_limit until a window of requests has been measured.
    assert value("mesh_inbound_concurrency_limit", {"service": "app"}) == 2
    assert value("mesh_rate_limited_total", {"service": "app"}) == 1
    runtime.close()


def _load(url: str, clients: int, seconds: float) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while time.monotonic() < stop:
                started = time.monotonic()
                status = http.get(url).status_code
                results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 20)
    return results


def test_under_doubling_load_the_limit_sheds_instead_of_queueing(spawn: Spawner) -> None:
    """A service that can work on 4 requests at once (each 20 ms): offered 16 concurrent
    callers, the limit settles near what it can take and the rest are refused at once (503),
    so the admitted requests keep a latency near the service's own."""
    policy = {"inbound": {"work": {"adaptive_concurrency": {"initial_limit": 16, "min_limit": 2}}}}
    server = spawn.uvicorn(
        "tests.inbound.apps_asgi:capacity_app",
        env={"MESH_SERVICE": "work", "MESH_POLICY": json.dumps(policy), "CAPACITY": "4"},
        ready_path="/_mesh/health",
    )
    results = _load(server.url + "/work", clients=16, seconds=6)
    admitted = sorted(t for status, t in results if status == 200)
    refused = [status for status, _ in results if status != 200]
    assert admitted and refused and set(refused) == {503}
    metrics = httpx.get(server.url + "/_mesh/metrics").text
    (limit,) = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("mesh_inbound_concurrency_limit{")
    ]
    assert limit < 16  # learnt from the latency: below the offered concurrency
    p50 = admitted[len(admitted) // 2]
    assert p50 < 0.02 * 16 / 4  # well under the full queue's 80 ms
