"""Per-request overrides: parsing and bounds without sockets, then through real upstreams."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from outbound_driver import sample
from outbound_support import backend_config, call_config

from asgimesh.outbound._call import Call
from asgimesh.outbound._overrides import Requested, apply, requested
from asgimesh.outbound._refusal import Refusal
from asgimesh.outbound._steps import Fail, Send
from asgimesh.outbound._upstream import Upstream
from asgimesh.policy import validate_document
from asgimesh.telemetry import MeshMetrics

ENDPOINTS = ["http://10.0.0.1:80", "http://10.0.0.2:80"]
POLICY = {"timeout": "2s", "per_try_timeout": "1s", "retries": {"attempts": 2}}


# ---- reading what a request asks for -------------------------------------------------------------


def test_the_extension_and_the_headers_are_read_and_the_extension_wins() -> None:
    asked = requested(
        {"timeout": 0.25, "retries": 0},
        {"timeout": "5s", "per_try_timeout": "100ms", "idempotent": "true"},
    )
    assert asked == Requested(timeout=0.25, per_try_timeout=0.1, retries=0, idempotent=True)
    assert requested(None, None) is None and requested({}, {}) is None
    assert requested({"timeout": "1.5s"}, None) == Requested(timeout=1.5)
    assert requested(None, {"retries": " 3 "}) == Requested(retries=3)


@pytest.mark.parametrize(
    ("extension", "headers", "message"),
    [
        (None, {"timeout": "fast"}, 'the mesh-timeout header: expected a duration ("250ms"'),
        (None, {"retries": "11"}, "the mesh-retries header: expected a number of retries from 0"),
        (None, {"retries": "-1"}, "mesh-retries header: expected a number of retries"),
        (None, {"idempotent": "maybe"}, "mesh-idempotent header: expected true or false, got 'maybe'"),
        (None, {"timeout": "9" * 40}, "mesh-timeout header: expected a duration, got '9999"),
        ({"timeout": True}, None, 'extensions["mesh"]["timeout"]: expected a duration, got True'),
        ({"timeout": -1}, None, "expected a duration of 0 or more seconds, got -1"),
        ({"timeout": float("nan")}, None, "expected a duration of 0 or more seconds, got nan"),
        ({"retries": 1.5}, None, 'extensions["mesh"]["retries"]: expected a number of retries'),
        ({"timout": 1}, None, "extensions[\"mesh\"]: unknown key 'timout' (expected idempotent, "),
        ("1s", None, 'extensions["mesh"]: expected a dict of idempotent, per_try_timeout, '),
    ],
)
def test_a_value_that_is_not_one_is_refused_naming_where_it_came_from(
    extension: object, headers: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(Refusal) as caught:
        requested(extension, headers)
    assert caught.value.kind == "override"
    assert message in str(caught.value), str(caught.value)


# ---- the policy's bounds -------------------------------------------------------------------------


def config(overrides: dict[str, Any] | None = None, method: str = "GET", **service: Any) -> Any:
    service = {**POLICY, **service}
    if overrides is not None:
        service["overrides"] = overrides
    return call_config(service, method=method)


def test_tightening_is_always_allowed() -> None:
    tightened, clamped = apply(
        config(), "GET", Requested(timeout=0.3, per_try_timeout=0.1, retries=0)
    )
    assert (tightened.timeout, tightened.per_try_timeout, tightened.attempts) == (0.3, 0.1, 0)
    assert not clamped
    off, clamped = apply(config(), "GET", Requested(idempotent=False))
    assert off.is_idempotent("GET") is False and not clamped


def test_loosening_stops_at_the_policy_unless_the_policy_allows_more() -> None:
    held, clamped = apply(config(), "POST", Requested(timeout=30, retries=5, idempotent=True))
    assert (held.timeout, held.attempts, held.is_idempotent("POST")) == (2.0, 2, False)
    assert clamped
    unlimited, _ = apply(config(), "GET", Requested(timeout=0))  # 0: no timeout, held to 2s
    assert unlimited.timeout == 2.0
    allowed = config({"max_timeout": "10s", "max_retries": 4, "idempotent": True})
    looser, clamped = apply(allowed, "POST", Requested(timeout=30, retries=3, idempotent=True))
    assert (looser.timeout, looser.attempts, looser.is_idempotent("POST")) == (10.0, 3, True)
    assert clamped  # 30 s was asked, 10 s given
    exact, clamped = apply(allowed, "POST", Requested(timeout=8, retries=4))
    assert (exact.timeout, exact.attempts, clamped) == (8.0, 4, False)


def test_a_floor_keeps_requests_from_setting_absurdly_tight_timeouts() -> None:
    floored, clamped = apply(config({"min_timeout": "50ms"}), "GET", Requested(timeout=0.001))
    assert floored.timeout == 0.05 and clamped
    # A policy whose own timeout is under the floor: the request can still ask for that.
    low, clamped = apply(config({"min_timeout": "5s"}), "GET", Requested(timeout=1))
    assert low.timeout == 2.0 and clamped


def test_a_policy_without_a_timeout_lets_a_request_set_any() -> None:
    free, clamped = apply(config({"max_timeout": "1s"}, timeout=0), "GET", Requested(timeout=60))
    assert free.timeout == 60 and not clamped


def test_routes_inherit_the_services_bounds_and_may_set_their_own() -> None:
    doc = validate_document({"services": {"svc": {
        "endpoints": ENDPOINTS, "overrides": {"max_retries": 5},
        "routes": [{"match": {"path": "/own"}, "overrides": {"max_retries": 1}},
                   {"match": {"path": "/inherit"}}],
    }}})  # fmt: skip
    from asgimesh.outbound._compile import compile_policy

    routes = compile_policy(doc).services["svc"]
    assert routes.config_for("GET", "/own").overrides.max_retries == 1
    assert routes.config_for("GET", "/inherit").overrides.max_retries == 5
    assert routes.config_for("GET", "/").overrides.max_retries == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_timeout": "2s", "max_timeout": "1s"}, "expected min_timeout <= max_timeout, got 2s > 1s"),
        ({"max_retries": 11}, "services.svc.overrides.max_retries"),
        ({"headers": "sometimes"}, "services.svc.overrides.headers"),
        ({"max_timout": "1s"}, "services.svc.overrides.max_timout: unknown field"),
    ],
)
def test_bad_bounds_are_refused_by_path(overrides: dict[str, Any], message: str) -> None:
    from asgimesh._errors import PolicyError

    with pytest.raises(PolicyError) as caught:
        validate_document({"services": {"svc": {"endpoints": ENDPOINTS, "overrides": overrides}}})
    assert message in str(caught.value), str(caught.value)


# ---- in the call ---------------------------------------------------------------------------------


def make_call(method: str = "GET", **service: Any) -> Call:
    service = {"endpoints": ENDPOINTS, **POLICY, **service}
    upstream = Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), 0.0)
    return Call(upstream, call_config(service, method=method), method, replayable=True,
                now=0.0, rng=random.Random(2))  # fmt: skip


def test_override_headers_set_the_call_and_never_go_on_the_wire() -> None:
    call = make_call()
    step = call.start(
        [(b"Mesh-Timeout", b"300ms"), (b"mesh-retries", b"0"), (b"x-app", b"1")], None, 0.0
    )
    assert isinstance(step, Send)
    assert step.headers == [(b"x-app", b"1"), (b"mesh-attempt", b"1"), (b"mesh-deadline-ms", b"300")]
    assert call.remaining(0.0) == pytest.approx(0.3) and call.config.attempts == 0
    registry = call.upstream.metrics._metrics.registry
    labels = {"service": "test", "upstream": "svc", "result": "applied"}
    assert registry.get_sample_value("mesh_outbound_overrides_total", labels) == 1


def test_the_policy_may_turn_the_headers_off_but_not_the_extension() -> None:
    call = make_call(overrides={"headers": False})
    step = call.start([(b"mesh-timeout", b"300ms")], None, 0.0, {"retries": 0})
    assert isinstance(step, Send) and all(name != b"mesh-timeout" for name, _ in step.headers)
    assert call.remaining(0.0) == 2.0 and call.config.attempts == 0


def test_an_invalid_override_fails_the_call_before_any_try() -> None:
    call = make_call()
    step = call.start([(b"mesh-timeout", b"fast")], None, 0.0)
    assert isinstance(step, Fail) and step.refusal is not None
    assert step.refusal.kind == "override" and call.attempt == 0
    registry = call.upstream.metrics._metrics.registry
    labels = {"service": "test", "upstream": "svc", "reason": "override"}
    assert registry.get_sample_value("mesh_outbound_refusals_total", labels) == 1


def test_a_longer_timeout_is_still_capped_by_the_inbound_deadline() -> None:
    from asgimesh import MeshContext

    context = MeshContext(request_id="r", trace_id="0" * 31 + "1", span_id="0" * 15 + "1",
                          deadline=0.5)  # fmt: skip
    service = {"endpoints": ENDPOINTS, **POLICY, "overrides": {"max_timeout": "10s"}}
    upstream = Upstream(backend_config(service), MeshMetrics("test"), random.Random(1), 0.0)
    call = Call(upstream, call_config(service), "GET", replayable=True, now=0.0,
                rng=random.Random(2), context=context)  # fmt: skip
    call.start([], None, 0.0, {"timeout": 5})
    assert call.remaining(0.0) == 0.5 and call.inbound_left == 0.5


# ---- through real upstreams, every transport -----------------------------------------------------


def test_a_shorter_timeout_from_the_extension_ends_a_slow_call_early(mesh: Any, fake_upstreams: Any) -> None:
    (slow,) = fake_upstreams.get(1)
    fake_upstreams.control(slow, "slow:1.5")
    d = mesh({"pay": {"endpoints": [slow]}}, defaults={"timeout": "5s", "per_try_timeout": "3s"})
    began = time.monotonic()
    with pytest.raises(d.mod.TimeoutException) as caught:
        d.request("GET", "http://pay/", extensions={"mesh": {"timeout": "150ms"}})
    assert time.monotonic() - began < 1.2  # the policy alone would wait 1.5 s for the answer
    assert "deadline passed" in str(caught.value)
    assert sample(d.runtime, "mesh_outbound_overrides_total", upstream="pay", result="applied") == 1


def test_retries_header_turns_retries_off_and_is_not_sent(mesh: Any, fake_upstreams: Any) -> None:
    bad, ok = fake_upstreams.get(2)
    fake_upstreams.control(bad, "fail:503")
    d = mesh({"pay": {"endpoints": [bad, ok], "load_balancer": "round_robin"}})
    plain = [d.request("GET", "http://pay/").status_code for _ in range(4)]
    assert plain == [200] * 4  # retried past the 503s on the other endpoint
    bare = [d.request("GET", "http://pay/", headers={"mesh-retries": "0"}).status_code
            for _ in range(4)]  # fmt: skip
    assert bare.count(503) == 2 and bare.count(200) == 2
    assert "mesh-retries" not in fake_upstreams.stats(ok)["last_headers"]


def test_a_request_marks_its_post_idempotent_only_where_the_policy_allows(
    mesh: Any, fake_upstreams: Any
) -> None:
    bad, ok = fake_upstreams.get(2)
    fake_upstreams.control(bad, "fail:503")
    headers = {"mesh-idempotent": "true"}
    held = mesh({"pay": {"endpoints": [bad, ok], "load_balancer": "round_robin"}})
    statuses = [held.request("POST", "http://pay/c", content=b"{}", headers=headers).status_code
                for _ in range(4)]  # fmt: skip
    assert statuses.count(503) == 2  # not allowed: a POST is not retried
    assert sample(held.runtime, "mesh_outbound_overrides_total", upstream="pay", result="clamped") == 4
    allowed = mesh({"pay": {"endpoints": [bad, ok], "load_balancer": "round_robin",
                            "overrides": {"idempotent": True}}})  # fmt: skip
    statuses = [allowed.request("POST", "http://pay/c", content=b"{}", headers=headers).status_code
                for _ in range(4)]  # fmt: skip
    assert statuses == [200] * 4


def test_an_invalid_override_is_a_clear_error_and_nothing_is_sent(mesh: Any, fake_upstreams: Any) -> None:
    (ok,) = fake_upstreams.get(1)
    d = mesh({"pay": {"endpoints": [ok]}})
    with pytest.raises(d.mod.LocalProtocolError) as caught:
        d.request("GET", "http://pay/", headers={"mesh-timeout": "fast"})
    assert "the mesh-timeout header: expected a duration" in str(caught.value)
    assert fake_upstreams.stats(ok)["requests"] == 0
