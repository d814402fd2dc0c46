"""The per-call state machine, driven by a fake clock: tries, retries, budget, deadline, headers."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from outbound_support import FakeClock, backend_config, call_config

from asgimesh import MeshContext, MeshRuntime, MeshSettings
from asgimesh._context import _current
from asgimesh._wire import parse_traceparent
from asgimesh.outbound._call import Call
from asgimesh.outbound._planner import CallPlanner
from asgimesh.outbound._refusal import Refusal
from asgimesh.outbound._upstream import Upstream
from asgimesh.telemetry import MeshMetrics

ENDPOINTS = ["http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80"]


def make_call(method: str = "GET", service: dict[str, Any] | None = None, *, now: float = 0.0,
              context: MeshContext | None = None, replayable: bool = True,
              upstream: Upstream | None = None) -> Call:
    service = {"endpoints": ENDPOINTS, **(service or {})}
    up = upstream or Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), now)
    return Call(up, call_config(service, method=method), method, replayable=replayable,
                now=now, rng=random.Random(2), context=context)


def sample(call: Call, name: str, **labels: str) -> float:
    registry = call.upstream.metrics._metrics.registry
    return registry.get_sample_value(name, {"service": "test", "upstream": "svc", **labels}) or 0.0


def test_first_try_headers_and_limit() -> None:
    call = make_call(service={"timeout": "1s", "per_try_timeout": "300ms"})
    endpoint = call.begin_try(0.0)
    assert endpoint.url in ENDPOINTS and endpoint.outstanding == 1
    assert call.limit == 0.3 and not call.deadline_bound
    assert dict(call.headers(0.25)) == {b"mesh-attempt": b"1", b"mesh-deadline-ms": b"750"}
    assert call.trace_headers() == []  # no inbound request: nothing to propagate


def test_per_try_limit_is_capped_by_what_is_left() -> None:
    call = make_call(service={"timeout": "1s", "per_try_timeout": "800ms"})
    call.begin_try(0.0)
    call.failed("connect-failure", 0.5)
    call.begin_try(0.5)
    assert call.limit == pytest.approx(0.5) and call.deadline_bound


def test_inbound_deadline_caps_the_call() -> None:
    context = MeshContext(request_id="rid-1", trace_id="a" * 32, span_id="b" * 16,
                          tracestate="k=v", deadline=0.2)
    call = make_call(context=context)
    assert call.deadline == 0.2
    call.begin_try(0.0)
    assert dict(call.headers(0.05))[b"mesh-deadline-ms"] == b"150"
    headers = {k.decode(): v.decode() for k, v in call.trace_headers()}
    trace_id, parent, flags = parse_traceparent(headers["traceparent"])  # type: ignore[misc]
    assert trace_id == "a" * 32 and parent != "b" * 16 and parent == call.span_id and flags == "01"
    assert headers["x-request-id"] == "rid-1" and headers["tracestate"] == "k=v"
    assert make_call(context=context).span_id != call.span_id  # one child span per call
    with pytest.raises(Refusal) as caught:
        call.begin_try(0.2)
    assert caught.value.kind == "deadline" and "inbound request's deadline" in str(caught.value)


def test_503_on_get_is_retried_elsewhere_post_is_not() -> None:
    call = make_call("GET")
    first = call.begin_try(0.0)
    delay = call.answered(503, None, 0.01)
    assert delay is not None and 0 <= delay <= 0.025
    call.release(first)
    second = call.begin_try(0.02)
    assert second is not first and call.attempt == 2
    assert dict(call.headers(0.02))[b"mesh-attempt"] == b"2"
    assert sample(call, "mesh_outbound_retries_total", reason="503") == 1.0
    post = make_call("POST")
    post.begin_try(0.0)
    assert post.answered(503, None, 0.01) is None


def test_connect_failure_is_retried_for_post_reset_is_not() -> None:
    call = make_call("POST")
    call.begin_try(0.0)
    assert call.failed("connect-failure", 0.001) is not None
    call.begin_try(0.01)
    assert call.failed("reset", 0.02) is None
    assert sample(call, "mesh_outbound_retries_total", reason="connect-failure") == 1.0


def test_attempts_are_bounded() -> None:
    call = make_call(service={"retries": {"attempts": 2}})
    for expected in (True, True, False):
        call.begin_try(0.0)
        assert (call.failed("connect-failure", 0.0) is not None) is expected
    assert call.attempt == 3


def test_retry_after_is_respected_and_capped_by_deadline() -> None:
    call = make_call(service={"timeout": "5s"})
    call.begin_try(0.0)
    assert call.answered(503, "2", 0.01) == 2.0
    call.begin_try(2.0)
    assert call.answered(503, "10", 2.01) is None  # past the deadline: the answer is returned


def test_budget_spent_returns_answer_or_refuses() -> None:
    service = {"retries": {"budget": {"ratio": 0, "min_per_second": 0.1, "ttl": "10s"}}}
    up = Upstream(backend_config({"endpoints": ENDPOINTS, **service}), MeshMetrics("test"), random.Random(1), 0.0)
    first = make_call(service=service, upstream=up)
    first.begin_try(0.0)
    assert first.answered(503, None, 0.0) is not None  # the one retry the floor allows
    second = make_call(service=service, upstream=up)
    second.begin_try(0.0)
    assert second.answered(503, None, 0.0) is None  # spent: the last answer stands
    third = make_call(service=service, upstream=up)
    third.begin_try(0.0)
    with pytest.raises(Refusal) as caught:
        third.failed("connect-failure", 0.0)
    assert caught.value.kind == "budget"


def test_timeout_bound_by_deadline_refuses() -> None:
    call = make_call(service={"timeout": "100ms", "per_try_timeout": "1s"})
    call.begin_try(0.0)
    with pytest.raises(Refusal) as caught:
        call.failed("timeout", 0.1, timed_out=True)
    assert caught.value.kind == "deadline"
    # A connect timeout at the deadline is the deadline too, not a connect failure to retry.
    connect = make_call(service={"timeout": "100ms", "per_try_timeout": "1s"})
    connect.begin_try(0.0)
    with pytest.raises(Refusal):
        connect.failed("connect-failure", 0.1, timed_out=True)
    # A per-try timeout well before the deadline is retried (GET).
    early = make_call(service={"timeout": "5s", "per_try_timeout": "100ms"})
    early.begin_try(0.0)
    assert early.failed("timeout", 0.1, timed_out=True) is not None


def test_failures_penalise_and_release() -> None:
    call = make_call(service={"per_try_timeout": "2s"})
    endpoint = call.begin_try(0.0)
    call.failed("connect-failure", 0.001)
    assert endpoint.outstanding == 0
    assert endpoint.rtt == 2.0  # a fast failure must not look like a fast endpoint


def test_finish_counts_status_and_duration() -> None:
    call = make_call()
    call.begin_try(0.0)
    call.answered(200, None, 0.004)
    call.finish(200, 0.004)
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="200") == 1.0
    assert sample(call, "mesh_outbound_request_duration_seconds_sum") == pytest.approx(0.004)
    other = make_call(upstream=call.upstream)
    other.finish("error", 1.0)
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="error") == 1.0


def runtime(policy: dict[str, Any]) -> MeshRuntime:
    return MeshRuntime(MeshSettings(policy=json.dumps(policy)))


def test_core_passes_other_hosts_and_applies_a_new_policy_to_the_next_call() -> None:
    rt = runtime({})
    rt.policy.apply({"services": {"pay": {"endpoints": ENDPOINTS[:1], "timeout": "1s"}}}, source="test")
    clock = FakeClock(0.0)
    core = CallPlanner(rt, clock=clock, rng=random.Random(1))
    assert core.plan("GET", "example.com", "/", replayable=True) is None
    plan = core.plan("GET", "pay", "/", replayable=True)
    assert plan is not None and plan.call.config.timeout == 1.0
    endpoint = plan.call.begin_try(0.0)
    endpoint.observe(0.5, 0.0)
    rt.policy.apply({"services": {"pay": {"endpoints": ENDPOINTS[:2], "timeout": "2s"}}}, source="test")
    plan = core.plan("GET", "pay", "/", replayable=True)
    assert plan is not None and plan.call.config.timeout == 2.0
    assert [e.url for e in core.upstreams["pay"].endpoints] == ENDPOINTS[:2]
    assert core.upstreams["pay"].endpoints[0] is endpoint  # what was learnt survives the change
    rt.policy.apply({"services": {}}, source="test")
    assert core.plan("GET", "pay", "/", replayable=True) is None


def test_core_splits_and_injects_faults() -> None:
    rt = runtime({"services": {
        "pay": {"endpoints": ENDPOINTS[:1], "split": [{"service": "pay-v2", "weight": 100}]},
        "pay-v2": {"endpoints": ENDPOINTS[1:2], "fault": {"abort": {"percent": 100, "status": 418}}},
        "slow": {"endpoints": ENDPOINTS[2:], "fault": {"delay": {"percent": 100, "duration": "50ms"}}},
    }})
    core = CallPlanner(rt, clock=FakeClock(0.0), rng=random.Random(1))
    plan = core.plan("GET", "pay", "/", replayable=True)
    assert plan is not None and plan.call.upstream.name == "pay-v2"
    assert plan.abort is None  # the fault of the called service (pay) applies, not the target's
    direct = core.plan("GET", "pay-v2", "/", replayable=True)
    assert direct is not None and direct.abort == 418
    slow = core.plan("GET", "slow", "/", replayable=True)
    assert slow is not None and slow.delay == 0.05 and slow.abort is None


def test_core_reads_the_current_context() -> None:
    rt = runtime({"services": {"pay": {"endpoints": ENDPOINTS}}})
    core = CallPlanner(rt, clock=FakeClock(0.0))
    token = _current.set(MeshContext(request_id="r", trace_id="c" * 32, span_id="d" * 16, deadline=0.5))
    try:
        plan = core.plan("GET", "pay", "/", replayable=True)
    finally:
        _current.reset(token)
    assert plan is not None and plan.call.deadline == 0.5


def test_service_names_match_hosts_case_insensitively() -> None:
    rt = runtime({"services": {"Payments": {"endpoints": ENDPOINTS[:1]}}})
    core = CallPlanner(rt, clock=FakeClock(0.0))
    plan = core.plan("GET", "payments", "/", replayable=True)
    assert plan is not None and plan.call.upstream.name == "Payments"


def test_pool_timeout_at_the_deadline_is_the_deadline() -> None:
    call = make_call(service={"timeout": "100ms"})
    call.begin_try(0.0)
    with pytest.raises(Refusal) as caught:
        call.failed(None, 0.1, timed_out=True)
    assert caught.value.kind == "deadline"


def test_split_to_an_undefined_service_is_refused_for_its_share() -> None:
    rt = runtime({"services": {"pay": {"endpoints": ENDPOINTS[:1], "split": [{"service": "ghost", "weight": 100}]}}})
    core = CallPlanner(rt, clock=FakeClock(0.0))
    plan = core.plan("GET", "pay", "/", replayable=True)
    assert plan is not None
    with pytest.raises(Refusal) as caught:
        plan.call.begin_try(0.0)
    assert caught.value.kind == "no-endpoints" and "'ghost'" in str(caught.value)
