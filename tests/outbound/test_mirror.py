"""Traffic mirroring's decisions without sockets: the policy, the draw, the cap, the copy's
headers and time limit, and how each copy is counted (tests/outbound/test_mirror_transport.py
runs the same through real servers)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from outbound_support import FakeClock

from asgimesh import MeshContext, MeshRuntime, MeshSettings
from asgimesh._context import _current
from asgimesh._wire import parse_traceparent
from asgimesh.outbound._compile import MirrorConfig, compile_policy
from asgimesh.outbound._mirror import DEFAULT_MIRROR_TIMEOUT, Mirror, MirrorGate, shadow_host
from asgimesh.outbound._planner import CallPlanner
from asgimesh.outbound._steps import Fail
from asgimesh.outbound._traffic import draw_mirror
from asgimesh.policy import validate_document
from asgimesh.policy._load import PolicyError

ENDPOINTS = ["http://10.0.0.1:80", "http://10.0.0.2:80"]
SHADOW = ["http://10.0.1.1:80"]


def planner(services: dict[str, Any], *, seed: int = 1, defaults: dict[str, Any] | None = None,
            clock: FakeClock | None = None) -> CallPlanner:
    doc = {"defaults": defaults or {}, "services": services}
    rt = MeshRuntime(MeshSettings(policy=json.dumps(doc)))
    return CallPlanner(rt, clock=clock or FakeClock(0.0), rng=random.Random(seed))


def searches(mirror: dict[str, Any] | None = None, **service: Any) -> dict[str, Any]:
    return {
        "search": {"endpoints": ENDPOINTS, **({"mirror": mirror} if mirror else {}), **service},
        "search-v2": {"endpoints": SHADOW},
    }


def mirrors(p: CallPlanner, result: str, upstream: str = "search-v2") -> float:
    registry = p.runtime.metrics.registry
    labels = {"service": "app", "upstream": upstream, "result": result}
    return registry.get_sample_value("mesh_outbound_mirrors_total", labels) or 0.0


def mirrored(p: CallPlanner, method: str = "GET", path: str = "/", *, replayable: bool = True,
             headers: list[tuple[bytes, bytes]] | None = None) -> Mirror | None:
    call = p.plan(method, "search", path, replayable=replayable)
    assert call is not None
    call.start(headers or [(b"host", b"search")], None, p.clock())
    return call.mirror


def copy_of(p: CallPlanner, method: str = "GET", path: str = "/", **kwargs: Any) -> Mirror:
    """The mirror of one call that must be mirrored."""
    mirror = mirrored(p, method, path, **kwargs)
    assert mirror is not None
    return mirror


# ---- the policy -------------------------------------------------------------------------------


def test_policy_accepts_the_issue_shape_and_compiles_it() -> None:
    policy = validate_document({"services": {"search": {
        "mirror": {"service": "search-v2", "percent": 5},
        "routes": [{"match": {"path": "/write"}, "mirror": {"percent": 0}},
                   {"match": {"path": "/all"}, "mirror": {"service": "search-v3"}}],
    }}})
    compiled = compile_policy(policy)
    routes = compiled.services["search"]
    assert routes.default.mirror == MirrorConfig("search-v2", 5.0)
    assert routes.config_for("GET", "/write").mirror is None  # {percent: 0} spares the route
    assert routes.config_for("GET", "/all").mirror == MirrorConfig("search-v3", 100.0)
    # Mirror targets are services with their own state, even when the policy defines none.
    assert {"search-v2", "search-v3"} <= set(compiled.backends)
    assert compiled.backends["search-v2"].endpoints == ()


@pytest.mark.parametrize(("mirror", "route", "problem"), [
    ({"service": "search v2"}, None,
     "services.search.mirror.service: expected a service name (letters, digits, '.', '_' and '-', "
     "starting and ending with a letter or digit), got 'search v2'"),
    ({"service": "search-v2", "percent": 101}, None,
     "services.search.mirror.percent: expected less than or equal to 100, got 101"),
    ({"service": "search-v2", "percent": -1}, None,
     "services.search.mirror.percent: expected greater than or equal to 0, got -1"),
    ({"percent": 5}, None,
     "services.search.mirror: expected service, the mesh service to mirror to "
     "(or percent: 0, to mirror none of these calls)"),
    ({"service": "search-v2", "pct": 5}, None, "services.search.mirror.pct: unknown field"),
    ({"service": "search"}, None,
     "services.search.mirror.service: expected another service than 'search', "
     "where these calls go already, got 'search'"),
    (None, {"service": "canary", "mirror": {"service": "canary"}},
     "services.search.routes.0.mirror.service: expected another service than 'canary', "
     "where these calls go already, got 'canary'"),
    (None, {"mirror": {"service": "search"}},
     "services.search.routes.0.mirror.service: expected another service than 'search', "
     "where these calls go already, got 'search'"),
])
def test_bad_mirrors_are_refused_with_their_path(mirror: Any, route: Any, problem: str) -> None:
    service: dict[str, Any] = {}
    if mirror is not None:
        service["mirror"] = mirror
    if route is not None:
        service["routes"] = [route]
    with pytest.raises(PolicyError) as info:
        validate_document({"services": {"search": service}})
    assert info.value.problems == [problem]


def test_a_route_may_mirror_to_the_service_it_does_not_go_to() -> None:
    policy = validate_document({"services": {"search": {"routes": [
        {"service": "search-canary", "mirror": {"service": "search"}}]}}})
    route = compile_policy(policy).services["search"].config_for("GET", "/")
    assert route.mirror == MirrorConfig("search", 100.0) and route.service == "search-canary"


# ---- the draw ---------------------------------------------------------------------------------


def test_draw_by_percent() -> None:
    rng = random.Random(7)
    assert all(draw_mirror(MirrorConfig("x", 100.0), rng) for _ in range(1000))
    assert sum(draw_mirror(MirrorConfig("x", 5.0), rng) for _ in range(20_000)) in range(850, 1150)
    before = rng.getstate()
    draw_mirror(MirrorConfig("x", 100.0), rng)
    assert rng.getstate() == before  # 100% draws nothing: the other draws' sequence is unchanged


def test_planner_mirrors_every_call_none_and_a_seeded_share() -> None:
    every = planner(searches({"service": "search-v2"}))
    assert all(mirrored(every) is not None for _ in range(50))
    none = planner(searches({"service": "search-v2", "percent": 0}))
    assert all(mirrored(none) is None for _ in range(50))
    assert none.mirrors.in_flight == 0
    share = planner(searches({"service": "search-v2", "percent": 30}), seed=3)
    share.mirrors.cap = 10_000  # none of these copies is sent, so none ends
    drawn = [mirrored(share) for _ in range(2000)]
    assert 500 < sum(m is not None for m in drawn) < 700
    assert share.mirrors.in_flight == sum(m is not None for m in drawn)
    again = planner(searches({"service": "search-v2", "percent": 30}), seed=3)
    assert [m is not None for m in drawn][:200] == [mirrored(again) is not None for _ in range(200)]


def test_route_mirror_overrides_the_services() -> None:
    p = planner(searches({"service": "search-v2"}, routes=[
        {"match": {"path": "/write"}, "mirror": {"percent": 0}},
        {"match": {"path": "/v3"}, "mirror": {"service": "search-v3"}},
    ]))
    assert mirrored(p, "GET", "/write") is None
    other = mirrored(p, "GET", "/v3")
    assert other is not None and other.upstream.name == "search-v3"
    assert copy_of(p, "GET", "/").upstream.name == "search-v2"


def test_streaming_body_is_skipped_and_counted() -> None:
    p = planner(searches({"service": "search-v2"}))
    assert mirrored(p, "POST", replayable=False) is None
    assert mirrors(p, "skipped") == 1 and p.mirrors.in_flight == 0


def test_aborted_calls_and_calls_to_the_target_itself_are_not_mirrored() -> None:
    p = planner(searches({"service": "search-v2"}, fault={"abort": {"percent": 100}}))
    assert mirrored(p) is None
    split = planner(searches({"service": "search-v2"}, split=[{"service": "search-v2", "weight": 100}]))
    call = split.plan("GET", "search", "/", replayable=True)
    assert call is not None and call.upstream.name == "search-v2" and call.mirror is None


def test_no_mirror_in_policy_leaves_calls_without_one() -> None:
    p = planner({"search": {"endpoints": ENDPOINTS}})
    call = p.plan("GET", "search", "/", replayable=True)
    assert call is not None and call.mirror is None and call.config.mirror is None


# ---- the cap ----------------------------------------------------------------------------------


def test_past_the_cap_mirrors_are_dropped_and_counted_until_one_ends() -> None:
    p = planner(searches({"service": "search-v2"}))
    p.mirrors.cap = 3
    held = [mirrored(p) for _ in range(5)]
    assert [m is not None for m in held] == [True, True, True, False, False]
    assert p.mirrors.in_flight == 3 and mirrors(p, "dropped") == 2
    first = held[0]
    assert first is not None
    first.answered(200, 0.0)
    first.failed("reset", 0.0)  # ending twice counts once and frees one place only
    assert p.mirrors.in_flight == 2 and mirrors(p, "sent") == 1 and mirrors(p, "failed") == 0
    assert mirrored(p) is not None


def test_gate_alone() -> None:
    gate = MirrorGate(2)
    assert [gate.acquire() for _ in range(3)] == [True, True, False]
    gate.release()
    assert gate.acquire() and gate.in_flight == 2


# ---- one copy ---------------------------------------------------------------------------------


def test_copy_headers_mark_the_shadow_and_keep_the_apps() -> None:
    p = planner(searches({"service": "search-v2"}))
    context = MeshContext(request_id="req-1", trace_id="a" * 32, span_id="b" * 16)
    token = _current.set(context)
    try:
        call = p.plan("POST", "search", "/q", replayable=True)
    finally:
        _current.reset(token)
    assert call is not None and call.mirror is not None
    app = [(b"Host", b"search"), (b"x-tenant", b"acme"), (b"mesh-shadow", b"0"),
           (b"mesh-attempt", b"7"), (b"content-length", b"3")]
    call.start(app, None, 0.0)
    send = call.mirror.begin(0.0)
    assert send is not None and send.endpoint.url == SHADOW[0]
    headers = dict(send.headers)
    assert headers[b"Host"] == b"search-shadow" and headers[b"x-tenant"] == b"acme"
    assert headers[b"content-length"] == b"3" and headers[b"x-request-id"] == b"req-1"
    assert headers[b"mesh-shadow"] == b"1" and headers[b"mesh-attempt"] == b"1"
    assert [k for k, _ in send.headers].count(b"mesh-shadow") == 1
    trace = parse_traceparent(headers[b"traceparent"].decode())
    primary = parse_traceparent(dict(call.base_headers)[b"traceparent"].decode())
    assert trace is not None and primary is not None
    assert trace[0] == primary[0] == "a" * 32  # the same trace
    assert trace[1] != primary[1] and trace[1] == call.mirror.span_id  # a span of its own


def test_apps_own_traceparent_is_kept() -> None:
    p = planner(searches({"service": "search-v2"}))
    own = b"00-" + b"c" * 32 + b"-" + b"d" * 16 + b"-01"
    token = _current.set(MeshContext(request_id="r", trace_id="a" * 32, span_id="b" * 16))
    try:
        mirror = copy_of(p, headers=[(b"host", b"search"), (b"traceparent", own)])
    finally:
        _current.reset(token)
    send = mirror.begin(0.0)
    assert send is not None and dict(send.headers)[b"traceparent"] == own


@pytest.mark.parametrize(("host", "shadow"), [
    (b"search", b"search-shadow"), (b"search:8080", b"search-shadow:8080"),
    (b"[::1]:80", b"[::1]-shadow:80"), (b"search.ns.svc", b"search.ns.svc-shadow"),
])
def test_shadow_host(host: bytes, shadow: bytes) -> None:
    assert shadow_host(host) == shadow


def test_copy_time_limit_is_the_per_try_timeout_within_the_calls_deadline() -> None:
    clock = FakeClock(0.0)
    p = planner(searches({"service": "search-v2"}), clock=clock,
                defaults={"timeout": "1s", "per_try_timeout": "300ms"})
    mirror = copy_of(p)
    clock.advance(0.1)
    send = mirror.begin(clock())
    assert send is not None and send.timeout == dict.fromkeys(("connect", "read", "write", "pool"), pytest.approx(0.2))
    assert int(dict(send.headers)[b"mesh-deadline-ms"]) in (199, 200)
    # The inbound deadline caps it: the copy never outlives the caller's deadline.
    token = _current.set(MeshContext(request_id="r", trace_id="a" * 32, span_id="b" * 16, deadline=0.15))
    try:
        capped = copy_of(p)
    finally:
        _current.reset(token)
    assert capped.expires() == pytest.approx(0.15)
    assert capped.begin(clock()) is not None and capped.limit == pytest.approx(0.05)
    unbounded = planner(searches({"service": "search-v2"}), defaults={"timeout": 0, "per_try_timeout": 0})
    assert copy_of(unbounded).expires() == DEFAULT_MIRROR_TIMEOUT


def test_a_requests_own_shorter_timeout_binds_its_copy() -> None:
    p = planner(searches({"service": "search-v2"}), defaults={"timeout": "5s", "per_try_timeout": "2s"})
    mirror = copy_of(p, headers=[(b"host", b"search"), (b"mesh-timeout", b"300ms")])
    send = mirror.begin(0.0)
    assert send is not None and mirror.limit == pytest.approx(0.3)
    assert b"mesh-timeout" not in dict(send.headers)  # an instruction to this mesh, not sent on


def test_a_call_refused_before_its_first_try_sends_no_copy() -> None:
    p = planner(searches({"service": "search-v2"}))
    call = p.plan("GET", "search", "/", replayable=True)
    assert call is not None and call.mirror is not None
    step = call.start([(b"host", b"search"), (b"mesh-timeout", b"fast")], None, 0.0)
    assert isinstance(step, Fail) and call.mirror is None
    assert mirrors(p, "dropped") == 1 and p.mirrors.in_flight == 0


def test_copy_queued_past_its_limit_is_dropped_unsent() -> None:
    clock = FakeClock(0.0)
    p = planner(searches({"service": "search-v2"}), clock=clock, defaults={"per_try_timeout": "1s"})
    mirror = copy_of(p)
    assert mirror.begin(1.0) is None
    assert mirrors(p, "dropped") == 1 and p.mirrors.in_flight == 0


def test_copy_to_a_target_without_endpoints_fails_at_once() -> None:
    p = planner({"search": {"endpoints": ENDPOINTS, "mirror": {"service": "nowhere"}}})
    mirror = copy_of(p)
    assert mirror.begin(0.0) is None
    assert mirrors(p, "failed", "nowhere") == 1 and p.mirrors.in_flight == 0


def test_copy_outcomes_feed_the_targets_outlier_detection() -> None:
    services = searches({"service": "search-v2"})
    services["search-v2"]["outlier_detection"] = {"consecutive_failures": 2, "max_ejection_percent": 100}
    p = planner(services)
    p.compiled()
    target = p.upstreams["search-v2"]
    for _ in range(2):
        mirror = copy_of(p)
        send = mirror.begin(0.0)
        assert send is not None and send.endpoint.outstanding == 1
        mirror.answered(503, 0.01)
        assert send.endpoint.outstanding == 0
    assert target.endpoints[0].ejected_until > 0  # two 5xx in a row: ejected
    mirror = copy_of(p)
    assert mirror.begin(0.02) is None  # circuit open: failed without a try
    assert mirrors(p, "sent") == 2 and mirrors(p, "failed") == 1
    assert p.upstreams["search"].endpoints[0].ejected_until == 0  # the primary's state untouched


def test_abandoned_copy_is_dropped_and_frees_its_place() -> None:
    p = planner(searches({"service": "search-v2"}))
    mirror = copy_of(p)
    send = mirror.begin(0.0)
    assert send is not None and mirror.call.mirror is mirror
    mirror.abandoned(0.5)
    assert mirror.call.mirror is None  # no cycle left for the collector
    assert mirrors(p, "dropped") == 1 and p.mirrors.in_flight == 0 and send.endpoint.outstanding == 0
