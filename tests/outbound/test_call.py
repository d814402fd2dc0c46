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
from asgimesh.outbound._steps import Done, Fail, Resolve, Respond, Send, Sleep, Step
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


def refused(step: Step | Done) -> Refusal:
    """The refusal a :class:`Fail` carries (the test fails on any other step)."""
    assert isinstance(step, Fail) and step.refusal is not None, step
    return step.refusal


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
    assert caught.value.kind == "deadline"
    assert str(caught.value).endswith(
        "deadline passed after 1 try (the inbound request's deadline, 200ms left at the call)"
    )


def test_deadline_error_names_the_limit_that_ran_out() -> None:
    """A 1 ms service timeout inside a request with 10 s left is the call timeout's doing."""
    context = MeshContext(request_id="r", trace_id="a" * 32, span_id="b" * 16, deadline=10.0)
    short = make_call(service={"timeout": "1ms"}, context=context)
    short.begin_try(0.0)
    message = str(refused(short.failed("timeout", 0.001, timed_out=True)))
    assert message == "GET to 'svc': deadline passed after 1 try (the call timeout, 1ms)"
    alone = make_call(service={"timeout": "2s", "per_try_timeout": "5s"})
    with pytest.raises(Refusal, match=r"after 0 tries \(the call timeout, 2s\)$"):
        alone.begin_try(2.0)


def test_per_try_timeout_that_ends_the_call_is_named() -> None:
    post = make_call("POST", service={"timeout": "5s", "per_try_timeout": "250ms"})
    post.begin_try(0.0)
    refusal = refused(post.failed("timeout", 0.25, timed_out=True))  # POST: not retried
    assert refusal.kind == "per-try"
    assert str(refusal) == "POST to 'svc': timed out after 1 try (the per-try timeout, 250ms)"
    # Any other failure that ends the call leaves the transport's own error as it is.
    reset = make_call("POST")
    reset.begin_try(0.0)
    assert reset.failed("reset", 0.01) == Fail(None)


def test_503_on_get_is_retried_elsewhere_post_is_not() -> None:
    call = make_call("GET")
    first = call.begin_try(0.0)
    step = call.answered(503, None, 0.01)
    assert isinstance(step, Sleep) and 0 <= step.seconds <= 0.025
    call.release(first)
    second = call.begin_try(0.02)
    assert second is not first and call.attempt == 2
    assert dict(call.headers(0.02))[b"mesh-attempt"] == b"2"
    assert sample(call, "mesh_outbound_retries_total", reason="503") == 1.0
    post = make_call("POST")
    tried = post.begin_try(0.0)
    assert post.answered(503, None, 0.01) == Done(tried)


def test_connect_failure_is_retried_for_post_reset_is_not() -> None:
    call = make_call("POST")
    call.begin_try(0.0)
    assert isinstance(call.failed("connect-failure", 0.001), Sleep)
    call.begin_try(0.01)
    assert call.failed("reset", 0.02) == Fail(None)  # the transport's own error stands
    assert sample(call, "mesh_outbound_retries_total", reason="connect-failure") == 1.0


def test_attempts_are_bounded() -> None:
    call = make_call(service={"retries": {"attempts": 2}})
    for expected in (True, True, False):
        call.begin_try(0.0)
        step = call.failed("connect-failure", 0.0)
        assert isinstance(step, Sleep) is expected
        assert isinstance(step, Fail) is not expected
    assert call.attempt == 3


def test_retry_after_is_respected_and_capped_by_deadline() -> None:
    call = make_call(service={"timeout": "5s"})
    call.begin_try(0.0)
    assert call.answered(503, "2", 0.01) == Sleep(2.0)
    call.begin_try(2.0)
    # Past the deadline: the answer is returned.
    assert isinstance(call.answered(503, "10", 2.01), Done)


def test_budget_spent_returns_answer_or_refuses() -> None:
    service = {"retries": {"budget": {"ratio": 0, "min_per_second": 0.1, "ttl": "10s"}}}
    up = Upstream(backend_config({"endpoints": ENDPOINTS, **service}), MeshMetrics("test"), random.Random(1), 0.0)
    first = make_call(service=service, upstream=up)
    first.begin_try(0.0)
    assert isinstance(first.answered(503, None, 0.0), Sleep)  # the one retry the floor allows
    second = make_call(service=service, upstream=up)
    second.begin_try(0.0)
    assert isinstance(second.answered(503, None, 0.0), Done)  # spent: the last answer stands
    third = make_call(service=service, upstream=up)
    third.begin_try(0.0)
    assert refused(third.failed("connect-failure", 0.0)).kind == "budget"


def test_each_decision_notes_what_it_did_for_the_tries_span() -> None:
    service = {"retries": {"budget": {"ratio": 0, "min_per_second": 0.1, "ttl": "10s"}}}
    up = Upstream(backend_config({"endpoints": ENDPOINTS, **service}), MeshMetrics("test"), random.Random(1), 0.0)
    call = make_call(service=service, upstream=up)
    call.begin_try(0.0)
    assert call.note is None
    call.answered(503, None, 0.0)
    assert call.note == ("retry", "503")
    spent = make_call(service=service, upstream=up)
    spent.begin_try(0.0)
    spent.answered(503, None, 0.0)
    assert spent.note == ("budget", "503")
    refused_call = make_call(service=service, upstream=up)
    refused_call.begin_try(0.0)
    refused_call.failed("connect-failure", 0.0)
    assert refused_call.note == ("budget", "connect-failure")
    plain = make_call()
    plain.begin_try(0.0)
    plain.answered(200, None, 0.0)
    assert plain.note is None


def test_timeout_bound_by_deadline_refuses() -> None:
    call = make_call(service={"timeout": "100ms", "per_try_timeout": "1s"})
    call.begin_try(0.0)
    assert refused(call.failed("timeout", 0.1, timed_out=True)).kind == "deadline"
    # A connect timeout at the deadline is the deadline too, not a connect failure to retry.
    connect = make_call(service={"timeout": "100ms", "per_try_timeout": "1s"})
    connect.begin_try(0.0)
    assert refused(connect.failed("connect-failure", 0.1, timed_out=True)).kind == "deadline"
    # A per-try timeout well before the deadline is retried (GET).
    early = make_call(service={"timeout": "5s", "per_try_timeout": "100ms"})
    early.begin_try(0.0)
    assert isinstance(early.failed("timeout", 0.1, timed_out=True), Sleep)


def test_failures_penalise_and_release() -> None:
    call = make_call(service={"per_try_timeout": "2s"})
    endpoint = call.begin_try(0.0)
    call.failed("connect-failure", 0.001)
    assert endpoint.outstanding == 0
    assert endpoint.rtt == 2.0  # a fast failure must not look like a fast endpoint


def test_finish_counts_status_and_duration() -> None:
    call = make_call()
    call.begin_try(0.0)
    assert isinstance(call.answered(200, None, 0.004), Done)  # the answer counts the call once
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="200") == 1.0
    assert sample(call, "mesh_outbound_request_duration_seconds_sum") == pytest.approx(0.004)
    other = make_call(upstream=call.upstream)
    other.finish("error", 1.0)
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="error") == 1.0


def runtime(policy: dict[str, Any]) -> MeshRuntime:
    return MeshRuntime(MeshSettings(policy=json.dumps(policy)))


def test_planner_passes_other_hosts_and_applies_a_new_policy_to_the_next_call() -> None:
    rt = runtime({})
    rt.policy.apply({"services": {"pay": {"endpoints": ENDPOINTS[:1], "timeout": "1s"}}}, source="test")
    clock = FakeClock(0.0)
    planner = CallPlanner(rt, clock=clock, rng=random.Random(1))
    assert planner.plan("GET", "example.com", "/", replayable=True) is None
    call = planner.plan("GET", "pay", "/", replayable=True)
    assert call is not None and call.config.timeout == 1.0
    endpoint = call.begin_try(0.0)
    endpoint.observe(0.5, 0.0)
    rt.policy.apply({"services": {"pay": {"endpoints": ENDPOINTS[:2], "timeout": "2s"}}}, source="test")
    call = planner.plan("GET", "pay", "/", replayable=True)
    assert call is not None and call.config.timeout == 2.0
    assert [e.url for e in planner.upstreams["pay"].endpoints] == ENDPOINTS[:2]
    assert planner.upstreams["pay"].endpoints[0] is endpoint  # what was learnt survives the change
    rt.policy.apply({"services": {}}, source="test")
    assert planner.plan("GET", "pay", "/", replayable=True) is None


def test_planner_splits_and_injects_faults() -> None:
    rt = runtime({"services": {
        "pay": {"endpoints": ENDPOINTS[:1], "split": [{"service": "pay-v2", "weight": 100}]},
        "pay-v2": {"endpoints": ENDPOINTS[1:2], "fault": {"abort": {"percent": 100, "status": 418}}},
        "slow": {"endpoints": ENDPOINTS[2:], "fault": {"delay": {"percent": 100, "duration": "50ms"}}},
    }})
    planner = CallPlanner(rt, clock=FakeClock(0.0), rng=random.Random(1))
    call = planner.plan("GET", "pay", "/", replayable=True)
    assert call is not None and call.upstream.name == "pay-v2"
    assert call.abort is None  # the fault of the called service (pay) applies, not the target's
    direct = planner.plan("GET", "pay-v2", "/", replayable=True)
    assert direct is not None and direct.abort == 418
    slow = planner.plan("GET", "slow", "/", replayable=True)
    assert slow is not None and slow.delay == 0.05 and slow.abort is None


def test_planner_reads_the_current_context() -> None:
    rt = runtime({"services": {"pay": {"endpoints": ENDPOINTS}}})
    planner = CallPlanner(rt, clock=FakeClock(0.0))
    token = _current.set(MeshContext(request_id="r", trace_id="c" * 32, span_id="d" * 16, deadline=0.5))
    try:
        call = planner.plan("GET", "pay", "/", replayable=True)
    finally:
        _current.reset(token)
    assert call is not None and call.deadline == 0.5


def test_service_names_match_hosts_case_insensitively() -> None:
    rt = runtime({"services": {"Payments": {"endpoints": ENDPOINTS[:1]}}})
    planner = CallPlanner(rt, clock=FakeClock(0.0))
    call = planner.plan("GET", "payments", "/", replayable=True)
    assert call is not None and call.upstream.name == "Payments"


def test_pool_timeout_at_the_deadline_is_the_deadline() -> None:
    call = make_call(service={"timeout": "100ms"})
    call.begin_try(0.0)
    assert refused(call.failed(None, 0.1, timed_out=True)).kind == "deadline"


def test_split_to_an_undefined_service_is_refused_for_its_share() -> None:
    rt = runtime({"services": {"pay": {"endpoints": ENDPOINTS[:1], "split": [{"service": "ghost", "weight": 100}]}}})
    planner = CallPlanner(rt, clock=FakeClock(0.0))
    call = planner.plan("GET", "pay", "/", replayable=True)
    assert call is not None
    with pytest.raises(Refusal) as caught:
        call.begin_try(0.0)
    assert caught.value.kind == "no-endpoints" and "'ghost'" in str(caught.value)


# The protocol a driver follows: steps out, reports in (no sockets, no sleeping).


def test_a_call_starts_with_its_first_try_headers_merged_and_timeouts_capped() -> None:
    context = MeshContext(request_id="rid-1", trace_id="a" * 32, span_id="b" * 16)
    call = make_call(service={"timeout": "1s", "per_try_timeout": "300ms"}, context=context)
    app = [(b"Mesh-Attempt", b"7"), (b"X-Request-ID", b"mine"), (b"accept", b"*/*")]
    step = call.start(app, {"connect": 5.0, "read": 0.1, "write": None, "pool": 0.3}, 0.25)
    assert isinstance(step, Send) and step.endpoint is call.endpoint and call.attempt == 1
    names = [name.lower() for name, _ in step.headers]
    # The app's per-try mesh header goes (the mesh sets it), its own request id stays, and the
    # inbound trace context is added once.
    assert names == [b"x-request-id", b"accept", b"traceparent", b"mesh-attempt", b"mesh-deadline-ms"]
    assert dict(step.headers)[b"X-Request-ID"] == b"mine"
    assert dict(step.headers)[b"mesh-attempt"] == b"1"
    assert dict(step.headers)[b"mesh-deadline-ms"] == b"750"
    # Each of httpx's timeouts is capped by the try's limit; shorter ones of the app's stay.
    assert step.timeout == {"connect": 0.3, "read": 0.1, "write": 0.3, "pool": 0.3}


def test_a_try_without_a_limit_keeps_the_request_timeouts() -> None:
    call = make_call(service={"timeout": 0, "per_try_timeout": 0})
    step = call.start([], {"connect": 5.0}, 0.0)
    assert isinstance(step, Send) and step.timeout is None


def test_a_retry_is_sleep_then_send_elsewhere_with_the_next_attempt() -> None:
    call = make_call()
    first = call.start([], None, 0.0)
    assert isinstance(first, Send)
    backoff = call.answered(503, None, 0.01)
    assert isinstance(backoff, Sleep)
    call.release(first.endpoint)
    second = call.slept(0.02)
    assert isinstance(second, Send) and second.endpoint is not first.endpoint
    assert dict(second.headers)[b"mesh-attempt"] == b"2"
    assert isinstance(call.answered(200, None, 0.03), Done)
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="200") == 1.0


def test_injected_delay_then_abort() -> None:
    up = Upstream(backend_config({"endpoints": ENDPOINTS}), MeshMetrics("test"), random.Random(1), 0.0)
    call = Call(up, call_config({"endpoints": ENDPOINTS}), "GET", replayable=True, now=0.0,
                rng=random.Random(2), delay=0.05, abort=418)
    assert call.start([], None, 0.0) == Sleep(0.05)
    assert call.slept(0.05) == Respond(418)
    assert call.endpoint is None  # nothing was sent
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="418") == 1.0


def test_injected_delay_past_the_deadline_waits_what_is_left_then_refuses() -> None:
    up = Upstream(backend_config({"endpoints": ENDPOINTS}), MeshMetrics("test"), random.Random(1), 0.0)
    call = Call(up, call_config({"endpoints": ENDPOINTS, "timeout": "100ms"}), "GET",
                replayable=True, now=0.0, rng=random.Random(2), delay=1.0)
    step = call.start([], None, 0.02)
    assert isinstance(step, Sleep) and step.seconds == pytest.approx(0.08)
    assert refused(call.slept(0.1)).kind == "deadline"
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="error") == 1.0


def test_a_due_lookup_comes_first_and_its_answer_becomes_the_endpoints() -> None:
    call = make_call(service={"endpoints": [], "dns": "pay.internal:8080"})
    step = call.start([], None, 0.0)
    assert step == Resolve("pay.internal", 8080)
    infos = [(2, 1, 6, "", ("10.0.0.9", 8080)), (2, 1, 6, "", ("10.0.0.8", 8080))]
    sent = call.resolved(infos, 0.0)
    assert isinstance(sent, Send) and sent.endpoint.url in {"http://10.0.0.8:8080", "http://10.0.0.9:8080"}
    # The next call does not look up again before the answer is due for a refresh.
    again = make_call(upstream=call.upstream)
    assert isinstance(again.start([], None, 0.5), Send)
    # A failed lookup with no answer before it: nothing to call.
    lost = make_call(service={"endpoints": [], "dns": "pay.internal:8080"})
    assert lost.start([], None, 0.0) == Resolve("pay.internal", 8080)
    assert refused(lost.resolved(None, 0.0)).kind == "no-endpoints"


def test_no_endpoints_is_a_refusal_and_the_call_is_counted_once() -> None:
    call = make_call(service={"endpoints": []})
    assert refused(call.start([], None, 0.0)).kind == "no-endpoints"
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="error") == 1.0


def test_an_abandoned_try_releases_its_endpoint_and_counts_an_error() -> None:
    call = make_call()
    step = call.start([], None, 0.0)
    assert isinstance(step, Send) and step.endpoint.outstanding == 1
    call.abandoned(0.01)
    assert step.endpoint.outstanding == 0
    assert sample(call, "mesh_outbound_requests_total", method="GET", status="error") == 1.0


def test_strict_mtls_refuses_a_plain_http_endpoint_naming_it() -> None:
    service = {"endpoints": ["http://10.0.0.1:80"]}
    up = Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), 0.0)
    call = Call(up, call_config(service), "GET", replayable=True, now=0.0,
                rng=random.Random(2), strict=True)
    refusal = refused(call.start([], None, 0.0))
    assert refusal.kind == "plaintext"
    assert "'svc'" in str(refusal) and "http://10.0.0.1:80" in str(refusal)
    assert "MESH_MTLS=strict" in str(refusal)
    assert up.endpoints[0].outstanding == 0  # nothing was sent, nothing is owed


def test_strict_mtls_lets_an_https_endpoint_through() -> None:
    service = {"endpoints": ["https://10.0.0.1:8443"]}
    up = Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), 0.0)
    call = Call(up, call_config(service), "GET", replayable=True, now=0.0,
                rng=random.Random(2), strict=True)
    step = call.start([], None, 0.0)
    assert isinstance(step, Send) and step.endpoint.url == "https://10.0.0.1:8443"
