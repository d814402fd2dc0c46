"""Hedged requests, sans-I/O: the policy, the compiled config, the latency window and every
decision of a :class:`HedgedCall`, driven by a fake clock (no sockets)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from outbound_support import FakeClock, backend_config, call_config

from asgimesh import MeshRuntime, MeshSettings, PolicyError
from asgimesh.outbound._call import Call
from asgimesh.outbound._compile import HedgeConfig, compile_policy
from asgimesh.outbound._hedge import HedgedCall, Try
from asgimesh.outbound._latency import FLOOR, MAX_AGE, MIN_SAMPLES, LatencyWindow
from asgimesh.outbound._planner import CallPlanner
from asgimesh.outbound._steps import WAIT, Done, Fail, Send, Sleep
from asgimesh.outbound._upstream import Upstream
from asgimesh.policy import parse_policy, validate_document
from asgimesh.telemetry import MeshMetrics

ENDPOINTS = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"]
HEDGE = {"hedge": {"delay": "50ms"}, "timeout": "1s", "per_try_timeout": "500ms"}


def make(service: dict[str, Any] | None = None, *, method: str = "GET", now: float = 0.0,
         upstream: Upstream | None = None) -> HedgedCall:
    service = {"endpoints": ENDPOINTS, **HEDGE, **(service or {})}
    up = upstream or Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), now)
    return HedgedCall(up, call_config(service, method=method), method, replayable=True,
                      now=now, rng=random.Random(2))


def first(call: HedgedCall, now: float = 0.0) -> Try:
    step = call.start([], None, now)
    assert isinstance(step, Send)
    assert call.latest is not None and call.latest.endpoint is step.endpoint
    return call.latest


def hedges(call: Call, result: str) -> float:
    registry = call.upstream.metrics._metrics.registry
    labels = {"service": "test", "upstream": "svc", "result": result}
    return registry.get_sample_value("mesh_outbound_hedges_total", labels) or 0.0


def outstanding(call: Call) -> list[int]:
    return [e.outstanding for e in call.upstream.endpoints]


# ---- the policy --------------------------------------------------------------------------------


def refusal(hedge: object) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(json.dumps({"services": {"pay": {"routes": [{"hedge": hedge}]}}}))
    return str(caught.value)


def test_the_policy_takes_a_duration_or_a_percentile_and_a_bounded_max() -> None:
    policy = parse_policy(json.dumps({"services": {"pay": {
        "hedge": {"delay": "50ms", "max": 2},
        "routes": [{"match": {"path": "/a"}, "hedge": {"delay": "P99"}},
                   {"match": {"path": "/b"}, "hedge": {"max": 0}},
                   {"match": {"path": "/c"}},
                   {"match": {"path": "/d"}, "hedge": None}]}}}))
    pay = policy.services["pay"]
    assert pay.hedge is not None and pay.hedge.delay == 0.05 and pay.hedge.max == 2
    assert pay.routes[0].hedge is not None and pay.routes[0].hedge.delay == "p99"
    routes = compile_policy(policy).services["pay"]
    assert routes.default.hedge == HedgeConfig(0.05, None, 2)
    assert routes.config_for("GET", "/a").hedge == HedgeConfig(0.0, 0.99, 1)  # the route's own
    assert routes.config_for("GET", "/b").hedge is None  # max 0: this route opts out
    assert routes.config_for("GET", "/c").hedge == HedgeConfig(0.05, None, 2)  # inherited
    assert routes.config_for("GET", "/d").hedge == HedgeConfig(0.05, None, 2)  # null: too
    assert routes.default.hedge is not None
    # The default delay is the service's p95; only a percentile hedge keeps a latency window.
    assert compile_policy(parse_policy('{"services": {"s": {"hedge": {}}}}')).services[
        "s"].default.hedge == HedgeConfig(0.0, 0.95, 1)
    assert compile_policy(policy).backends["pay"].latency_window
    fixed = parse_policy('{"services": {"s": {"hedge": {"delay": "20ms"}}}}')
    assert not compile_policy(fixed).backends["s"].latency_window


def test_bad_hedges_are_refused_naming_path_value_and_what_was_expected() -> None:
    expected = ('services.pay.routes.0.hedge.delay: expected a duration above zero ("50ms") or '
                'a percentile of the service\'s latency, "p50" to "p99" (such as "p95"), got ')
    assert expected + "0" in refusal({"delay": 0})
    assert expected + "'p100'" in refusal({"delay": "p100"})
    assert expected + "'p9'" in refusal({"delay": "p9"})
    assert expected + "'soon'" in refusal({"delay": "soon"})
    assert ("services.pay.routes.0.hedge.max: expected 0 (no hedging) to 3 hedges per call, "
            "got 4") in refusal({"max": 4})
    assert "got True" in refusal({"max": True})
    assert "services.pay.routes.0.hedge.after: unknown field" in refusal({"after": "1s"})


def test_a_split_target_of_a_percentile_hedge_keeps_a_window_too() -> None:
    doc = {"services": {"pay": {"hedge": {"delay": "p90"}, "split": [{"service": "v2", "weight": 5}]},
                        "v2": {}, "other": {}}}
    backends = compile_policy(validate_document(doc)).backends
    assert backends["pay"].latency_window and backends["v2"].latency_window
    assert not backends["other"].latency_window


def test_only_idempotent_replayable_calls_are_hedged() -> None:
    doc = {"services": {"pay": {"endpoints": ENDPOINTS, "hedge": {"delay": "10ms"},
                                "routes": [{"match": {"path": "/search"}, "idempotent": True}]},
                        "plain": {"endpoints": ENDPOINTS}}}
    planner = CallPlanner(MeshRuntime(MeshSettings(policy=json.dumps(doc)), start=False),
                          clock=FakeClock(), rng=random.Random(1))
    assert type(planner.plan("GET", "pay", "/", replayable=True)) is HedgedCall
    assert type(planner.plan("PUT", "pay", "/", replayable=True)) is HedgedCall
    assert type(planner.plan("POST", "pay", "/", replayable=True)) is Call  # not idempotent
    assert type(planner.plan("POST", "pay", "/search", replayable=True)) is HedgedCall
    assert type(planner.plan("GET", "pay", "/", replayable=False)) is Call  # a one-shot body
    assert type(planner.plan("GET", "plain", "/", replayable=True)) is Call  # no hedge policy
    assert not Call.hedged and HedgedCall.hedged


# ---- the latency window ------------------------------------------------------------------------


def test_window_needs_enough_fresh_samples_and_follows_the_service() -> None:
    window = LatencyWindow()
    for i in range(MIN_SAMPLES - 1):
        window.observe(0.010, float(i) / 100)
    assert window.quantile(0.95, 1.0) is None  # too few to say anything
    window.observe(0.010, 1.0)
    assert window.quantile(0.95, 2.0) == 0.010
    # 100 samples 1..100 ms: the nearest-rank p95 is 95 ms, the p50 50 ms.
    window = LatencyWindow()
    for i in range(1, 101):
        window.observe(i / 1000, 10.0)
    assert window.quantile(0.95, 11.0) == pytest.approx(0.095)
    assert window.quantile(0.50, 11.0) == pytest.approx(0.050)
    # The service slows down: the old samples age out and the estimate follows.
    for _ in range(40):
        window.observe(0.300, 10.0 + MAX_AGE)
    assert window.quantile(0.95, 11.0 + MAX_AGE) == pytest.approx(0.300)
    # Quiet for long: no estimate at all rather than a stale one.
    assert window.quantile(0.95, 100.0 + 3 * MAX_AGE) is None


def test_window_has_a_floor_and_keeps_only_the_latest_samples() -> None:
    window = LatencyWindow()
    for _ in range(50):
        window.observe(0.00001, 1.0)
    assert window.quantile(0.95, 2.0) == FLOOR
    for _ in range(300):  # more than the ring holds: the fast samples are gone
        window.observe(0.2, 3.0)
    assert window.quantile(0.5, 5.0) == 0.2


def test_window_is_kept_only_while_a_percentile_hedge_calls_the_service() -> None:
    service = {"endpoints": ENDPOINTS, "hedge": {"delay": "p95"}}
    up = Upstream(backend_config(service), MeshMetrics("t"), random.Random(1), 0.0)
    assert up.latency is not None
    call = make(service, upstream=up)
    one = first(call)
    assert isinstance(call.try_answered(one, 200, None, 0.02), Done)
    assert up.latency._count == 1 and up.latency._values[0] == pytest.approx(0.02)
    call = make(service, upstream=up)
    one = first(call)
    call.try_answered(one, 500, None, 0.5)  # a failure is no latency sample
    assert up.latency._count == 1
    plain = Call(up, call_config(service, method="POST"), "POST", replayable=True, now=0.0,
                 rng=random.Random(2))
    assert isinstance(plain.start([], None, 0.0), Send)
    plain.answered(200, None, 0.03)
    assert up.latency._count == 1  # a plain call to the same service neither records nor pays
    up.configure(backend_config({"hedge": {"delay": "50ms"}}), 2.0)
    assert up.latency is None
    plain = Upstream(backend_config(), MeshMetrics("t"), random.Random(1), 0.0)
    assert plain.latency is None


# ---- the call's decisions ----------------------------------------------------------------------


def test_a_hedge_is_sent_after_the_delay_to_another_endpoint() -> None:
    call = make()
    one = first(call)
    assert call.hedge_wait(0.0) == pytest.approx(0.05)
    assert call.hedge_wait(0.03) == pytest.approx(0.02)
    step = call.hedge_due(0.05)
    assert isinstance(step, Send)
    two = call.latest
    assert two is not None and two is not one and two.hedge == 0.05
    assert step.endpoint is two.endpoint and two.endpoint is not one.endpoint
    assert dict(step.headers)[b"mesh-attempt"] == b"2"
    assert dict(step.headers)[b"mesh-deadline-ms"] == b"950"
    assert step.timeout is not None and step.timeout["read"] == pytest.approx(0.5)
    assert sorted(outstanding(call)) == [0, 1, 1]
    assert call.hedge_wait(0.05) is None  # max 1: no more
    assert hedges(call, "sent") == 1


def test_the_hedge_wins_the_loser_is_released_and_not_counted_a_failure() -> None:
    call = make()
    one = first(call)
    call.hedge_due(0.05)
    two = call.latest
    assert two is not None
    done = call.try_answered(two, 200, None, 0.06)
    assert isinstance(done, Done) and done.endpoint is two.endpoint
    assert hedges(call, "won") == 1
    before = one.endpoint.estimate(0.07)
    call.cancelled(one, 0.07)
    assert one.endpoint.outstanding == 0
    assert one.endpoint.failures == 0 and not one.endpoint.ejected_until
    assert one.endpoint.estimate(0.07) > before  # it was slow: 70 ms and counting
    call.release(done.endpoint)  # the winner's body closed
    assert outstanding(call) == [0, 0, 0]
    call.cancelled(one, 0.08)  # twice is nothing (a late answer after the race)
    assert outstanding(call) == [0, 0, 0]
    registry = call.upstream.metrics._metrics.registry
    labels = {"service": "test", "upstream": "svc", "method": "GET", "status": "200"}
    assert registry.get_sample_value("mesh_outbound_requests_total", labels) == 1


def test_the_first_try_wins_before_the_hedge_is_due() -> None:
    call = make()
    one = first(call)
    assert isinstance(call.try_answered(one, 200, None, 0.01), Done)
    assert call.hedge_wait(0.01) is None and call.hedge_due(0.05) is None
    assert hedges(call, "sent") == 0 and hedges(call, "won") == 0


def test_not_for_post_nor_a_one_shot_body() -> None:
    doc = {"services": {"pay": {"endpoints": ENDPOINTS, **HEDGE}}}
    planner = CallPlanner(MeshRuntime(MeshSettings(policy=json.dumps(doc)), start=False),
                          clock=FakeClock(), rng=random.Random(1))
    post = planner.plan("POST", "pay", "/", replayable=True)
    assert post is not None and not post.hedged
    assert isinstance(post.start([], None, 1000.0), Send)
    assert not hasattr(post, "hedge_wait")


def test_never_a_hedge_that_would_start_at_the_deadline() -> None:
    call = make({"timeout": "60ms", "hedge": {"delay": "55ms"}})
    first(call)
    assert call.hedge_wait(0.0) is None  # due at 55 ms, within the slack of the 60 ms deadline
    call = make({"timeout": "100ms", "hedge": {"delay": "50ms"}})
    first(call)
    assert call.hedge_wait(0.0) == pytest.approx(0.05)
    step = call.hedge_due(0.05)
    assert isinstance(step, Send) and call.limit == pytest.approx(0.05) and call.deadline_bound
    assert call.hedge_due(0.0995) is None  # (were another allowed) too late


def test_a_hedge_that_cannot_go_stops_hedging_so_the_driver_never_spins() -> None:
    call = make({"timeout": "100ms", "hedge": {"delay": "50ms", "max": 3}})
    first(call)
    assert call.hedge_wait(0.0995) == 0.0  # overdue, and the deadline is a slack away
    assert call.hedge_due(0.0995) is None
    assert call.hedge_wait(0.0995) is None  # the driver now only waits for the tries


def test_a_spent_budget_means_no_hedge_and_says_so() -> None:
    service = {"retries": {"budget": {"ratio": 0, "min_per_second": 0}}}
    call = make(service)
    first(call)
    assert call.hedge_due(0.05) is None
    assert hedges(call, "budget") == 1 and hedges(call, "sent") == 0
    assert call.note == ("budget", "hedge")  # the try's span tells
    assert call.hedge_wait(0.06) is None  # not asked again in this call


def test_hedges_withdraw_from_the_retry_budget() -> None:
    up = Upstream(backend_config({"endpoints": ENDPOINTS, "retries": {
        "budget": {"ratio": 0, "min_per_second": 0.1, "ttl": "10s"}}}), MeshMetrics("test"),
        random.Random(1), 0.0)
    assert up.budget.balance(0.0) == pytest.approx(1.0)
    call = make(upstream=up)
    first(call)
    assert isinstance(call.hedge_due(0.05), Send)
    assert up.budget.balance(0.05) == pytest.approx(0.0)
    second = make(upstream=up)
    first(second, 0.1)
    assert second.hedge_due(0.15) is None  # the first call's hedge took the last one


def test_no_hedge_without_another_endpoint() -> None:
    call = make({"endpoints": ENDPOINTS[:1]})
    first(call)
    assert call.hedge_wait(0.0) == pytest.approx(0.05)
    assert call.hedge_due(0.05) is None
    assert call.hedge_wait(0.05) is None and hedges(call, "sent") == 0
    assert call.upstream.budget.balance(0.05) == pytest.approx(100.0 + 0.2)  # nothing taken


def test_up_to_max_hedges_each_after_the_delay_from_the_latest() -> None:
    call = make({"hedge": {"delay": "50ms", "max": 2}})
    first(call)
    assert isinstance(call.hedge_due(0.05), Send)
    assert call.hedge_wait(0.05) == pytest.approx(0.05)  # from the hedge's own start
    assert isinstance(call.hedge_due(0.10), Send)
    assert {t.endpoint.url for t in call.inflight} == set(ENDPOINTS)
    assert [t.attempt for t in call.inflight] == [1, 2, 3]
    assert call.hedge_wait(0.10) is None


def test_p95_mode_waits_for_samples_then_uses_the_percentile() -> None:
    service = {"hedge": {"delay": "p95"}}
    up = Upstream(backend_config({"endpoints": ENDPOINTS, **service}), MeshMetrics("test"),
                  random.Random(1), 0.0)
    call = make(service, upstream=up)
    first(call)
    assert call.hedge_wait(0.0) is None  # no estimate yet: no hedge (not a guess)
    assert up.latency is not None
    for i in range(1, 101):
        up.latency.observe(i / 1000, 1.0)
    call = make(service, upstream=up, now=2.0)
    first(call, 2.0)
    assert call.hedge_wait(2.0) == pytest.approx(0.095)
    step = call.hedge_due(2.095)
    assert isinstance(step, Send) and call.latest is not None
    assert call.latest.hedge == pytest.approx(0.095)


def test_a_loser_feeds_the_window_its_elapsed_time() -> None:
    service = {"hedge": {"delay": "p95"}}
    up = Upstream(backend_config({"endpoints": ENDPOINTS, **service}), MeshMetrics("test"),
                  random.Random(1), 0.0)
    assert up.latency is not None
    call = make(service, upstream=up)
    one = first(call)
    call.cancelled(one, 0.4)
    assert up.latency._values[0] == pytest.approx(0.4)
    second = make(service, upstream=up)
    two = first(second)
    second.cancelled(two, 0.5, failed=True)  # a late error is no latency
    assert up.latency._count == 1 and two.endpoint.outstanding == 0


def test_a_retryable_answer_while_another_try_is_in_flight_waits_for_it() -> None:
    call = make()
    one = first(call)
    call.hedge_due(0.05)
    two = call.latest
    assert two is not None
    budget = call.upstream.budget.balance(0.06)
    assert call.try_answered(one, 503, None, 0.06) is WAIT  # not retried on top of the hedge
    assert call.upstream.budget.balance(0.06) == budget  # no retry withdrawn
    assert one.endpoint.failures == 1  # still the endpoint's failure
    call.release(one.endpoint)  # the driver closes that answer
    done = call.try_answered(two, 200, None, 0.07)
    assert isinstance(done, Done) and done.endpoint is two.endpoint
    call.release(two.endpoint)
    assert outstanding(call) == [0, 0, 0]


def test_the_last_try_standing_decides_as_a_plain_call_would() -> None:
    call = make()
    one = first(call)
    call.hedge_due(0.05)
    two = call.latest
    assert two is not None
    assert call.try_failed(one, "reset", 0.06) is WAIT
    assert one.endpoint.outstanding == 0 and one.endpoint.failures == 1
    step = call.try_answered(two, 503, None, 0.07)
    # Nothing else in flight: retried like any 503, to the one endpoint not yet tried.
    assert isinstance(step, Sleep)
    call.release(two.endpoint)
    send = call.slept(0.08)
    assert isinstance(send, Send) and send.endpoint not in (one.endpoint, two.endpoint)
    assert dict(send.headers)[b"mesh-attempt"] == b"3"


def test_hedges_do_not_use_up_the_retries() -> None:
    call = make({"retries": {"attempts": 1}})
    one = first(call)
    call.hedge_due(0.05)
    two = call.latest
    assert two is not None
    assert call.try_failed(one, "reset", 0.06) is WAIT
    # Two tries so far, one of them a hedge: the one retry allowed is still there.
    assert isinstance(call.try_failed(two, "reset", 0.07), Sleep)
    call.slept(0.08)
    three = call.latest
    assert three is not None and three.attempt == 3
    assert isinstance(call.try_failed(three, "reset", 0.09), Fail)  # now it is spent
    assert outstanding(call) == [0, 0, 0]


def test_abandoning_releases_every_try_in_flight_and_counts_once() -> None:
    call = make({"hedge": {"delay": "50ms", "max": 2}})
    first(call)
    call.hedge_due(0.05)
    call.hedge_due(0.10)
    assert outstanding(call) == [1, 1, 1]
    call.abandoned(0.2)
    call.abandoned(0.2)
    assert outstanding(call) == [0, 0, 0] and call.inflight == []
    registry = call.upstream.metrics._metrics.registry
    labels = {"service": "test", "upstream": "svc", "method": "GET", "status": "error"}
    assert registry.get_sample_value("mesh_outbound_requests_total", labels) == 1


def test_window_gives_its_estimate_as_soon_as_it_has_the_samples() -> None:
    window = LatencyWindow()
    for _ in range(MIN_SAMPLES):
        assert window.quantile(0.95, 1.0) is None  # asked at every call, as a call would
        window.observe(0.01, 1.0)
    assert window.quantile(0.95, 1.0) == 0.01  # not one refresh period later


def test_a_request_that_says_it_is_not_idempotent_is_not_hedged() -> None:
    call = make()
    step = call.start([], None, 0.0, {"idempotent": False})
    assert isinstance(step, Send)
    assert call.hedge_wait(0.0) is None and call.hedge_due(0.05) is None
    assert hedges(call, "sent") == 0


def test_a_zone_affine_call_hedges_with_its_zone_preference() -> None:
    doc = {"endpoints": [{"url": ENDPOINTS[0], "zone": "a"}, {"url": ENDPOINTS[1], "zone": "a"},
                         {"url": ENDPOINTS[2], "zone": "b"}],
           "zone_affinity": True, **HEDGE}
    up = Upstream(backend_config(doc), MeshMetrics("test"), random.Random(1), 0.0, zone="a")
    call = HedgedCall(up, call_config(doc), "GET", replayable=True, now=0.0,
                      rng=random.Random(2), by_zone=True)
    one = first(call)
    assert isinstance(call.hedge_due(0.05), Send)
    two = call.latest
    assert two is not None and {one.endpoint.url, two.endpoint.url} == set(ENDPOINTS[:2])
