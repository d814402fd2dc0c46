"""Zone-aware routing: the choice without sockets, then calls through real upstreams."""

from __future__ import annotations

import random
from typing import Any

import pytest
from outbound_support import FakeClock, backend_config

from asgimesh._errors import PolicyError
from asgimesh.outbound._balancer import make_balancer
from asgimesh.outbound._endpoint import Endpoint
from asgimesh.outbound._upstream import Upstream
from asgimesh.outbound._zones import pick_by_zone
from asgimesh.policy import validate_document
from asgimesh.telemetry import MeshMetrics

LOCAL = ["http://10.0.0.1:80", "http://10.0.0.2:80"]
REMOTE = ["http://10.1.0.1:80", "http://10.1.0.2:80"]
ZONED = [{"url": u, "zone": "a"} for u in LOCAL] + [{"url": u, "zone": "b"} for u in REMOTE]


def upstream(zone: str | None = "a", **service: Any) -> Upstream:
    config = backend_config({"endpoints": ZONED, "zone_affinity": True, **service})
    return Upstream(config, MeshMetrics("test"), random.Random(3), 0.0, zone)


def picks(up: Upstream, count: int = 200, now: float = 0.0, by_zone: bool = True) -> set[str]:
    return {up.pick(now, (), by_zone).url for _ in range(count)}


# ---- the choice --------------------------------------------------------------------------------


def test_calls_stay_in_the_callers_zone_while_it_is_healthy() -> None:
    up = upstream()
    assert [e.zone for e in up.endpoints] == ["a", "a", "b", "b"]
    assert picks(up) == set(LOCAL)
    assert picks(up, by_zone=False) == set(LOCAL + REMOTE)  # a route may turn it off
    registry = up.metrics._metrics.registry
    local = {"service": "test", "upstream": "svc", "locality": "local"}
    assert registry.get_sample_value("mesh_outbound_zone_tries_total", local) == 200


def test_without_a_zone_or_a_local_endpoint_there_is_nothing_to_prefer() -> None:
    assert picks(upstream(zone=None)) == set(LOCAL + REMOTE)
    assert picks(upstream(zone="c")) == set(LOCAL + REMOTE)


def test_a_zone_with_half_its_endpoints_ejected_keeps_its_calls_and_below_that_spills() -> None:
    clock = FakeClock(0.0)
    up = upstream(outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 100},
                  endpoints=[*ZONED, {"url": "http://10.0.0.3:80", "zone": "a"}])  # fmt: skip
    first, second, third = up.endpoints[0], up.endpoints[1], up.endpoints[4]
    up.failed(first, 0.01, 1.0, clock.now)
    assert picks(up, now=clock.now) == {second.url, third.url}  # 2 of 3 in rotation: stays
    up.failed(second, 0.01, 1.0, clock.now)
    # 1 of 3 left: the zone is failing; its survivor and the other zone share the calls.
    assert picks(up, now=clock.now) == {third.url, *REMOTE}


def test_an_overloaded_zone_spills_to_the_others() -> None:
    balancer = make_balancer("p2c_ewma", random.Random(1))
    near = [Endpoint(u, 0.0) for u in LOCAL]
    far = [Endpoint(u, 0.0) for u in REMOTE]
    for endpoint in near + far:
        endpoint.zone = "a" if endpoint in near else "b"
        endpoint.observe(0.010, 0.0)
    chosen, local = pick_by_zone(balancer, near, far, 2, 0.0)
    assert local and chosen in near
    for endpoint in near:  # queues in the zone: 3 tries waiting on each
        endpoint.outstanding = 3
    chosen, local = pick_by_zone(balancer, near, far, 2, 0.0)
    assert not local and chosen in far
    for endpoint in far:  # the other zone is slower still (it is far, and busy too)
        endpoint.observe(0.025, 0.0)
        endpoint.outstanding = 1
    chosen, local = pick_by_zone(balancer, near, far, 2, 0.0)
    assert local and chosen in near


def test_a_round_robin_stays_a_round_robin_in_the_zone() -> None:
    up = upstream(load_balancer="round_robin")
    urls = [up.pick(0.0, (), True).url for _ in range(6)]
    assert set(urls[0::2]) == {urls[0]} and set(urls[1::2]) == {urls[1]} and urls[0] != urls[1]
    assert set(urls) == set(LOCAL)


def test_a_retry_tries_the_rest_of_the_zone_then_the_others() -> None:
    up = upstream()
    first = up.pick(0.0, (), True)
    second = up.pick(0.0, [first], True)
    assert {first.url, second.url} == set(LOCAL)
    assert up.pick(0.0, [first, second], True).url in REMOTE


def test_zones_follow_a_new_policy_version() -> None:
    up = upstream()
    moved = [{"url": u, "zone": "b"} for u in LOCAL] + [{"url": u, "zone": "a"} for u in REMOTE]
    up.configure(backend_config({"endpoints": moved, "zone_affinity": True}), 1.0)
    assert picks(up, now=1.0) == set(REMOTE)


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"url": "http://a:1", "zone": "us east"}, "expected a zone name (letters, digits"),
        ({"url": "ftp://a:1", "zone": "a"}, "expected http:// or https:// URLs, got 'ftp://a:1'"),
        ({"url": "http://a:1"}, "services.svc.endpoints.0"),
        ({"url": "http://a:1", "zone": "a", "weight": 2}, "unknown field"),
    ],
)
def test_bad_zoned_endpoints_are_refused_by_path(endpoint: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_document({"services": {"svc": {"endpoints": [endpoint]}}})
    assert message in str(caught.value), str(caught.value)


def test_zoned_endpoints_round_trip_through_the_document() -> None:
    doc = {"services": {"svc": {"endpoints": ["http://plain:1", {"url": "http://z:1/", "zone": "a"}],
                                "zone_affinity": True}}}  # fmt: skip
    policy = validate_document(doc)
    dumped = policy.model_dump(mode="json", exclude_defaults=True)
    assert dumped["services"]["svc"]["endpoints"] == ["http://plain:1", {"url": "http://z:1", "zone": "a"}]
    assert validate_document(dumped) == policy


# ---- through real upstreams --------------------------------------------------------------------


def served_by(d: Any, count: int) -> list[str]:
    return [d.request("GET", "http://pay/").json()["upstream"] for _ in range(count)]


def test_calls_stay_in_zone_and_spill_over_when_the_zone_fails(mesh: Any, fake_upstreams: Any) -> None:
    near1, near2, far = fake_upstreams.get(3)
    endpoints = [{"url": near1, "zone": "z1"}, {"url": near2, "zone": "z1"},
                 {"url": far, "zone": "z2"}]  # fmt: skip
    service = {"endpoints": endpoints, "zone_affinity": True, "load_balancer": "round_robin",
               "outlier_detection": {"consecutive_failures": 2, "max_ejection_percent": 100}}  # fmt: skip
    d = mesh({"pay": service}, zone="z1")
    assert set(served_by(d, 30)) == {"u0", "u1"}
    assert fake_upstreams.stats(far)["requests"] == 0
    fake_upstreams.control(near1, "fail:503")
    fake_upstreams.control(near2, "fail:503")
    # Retries and ejection move the calls to the other zone; every call still succeeds.
    assert [d.request("GET", "http://pay/").status_code for _ in range(20)] == [200] * 20
    assert fake_upstreams.stats(far)["requests"] >= 15
    registry = d.runtime.metrics.registry
    remote = {"service": "app", "upstream": "pay", "locality": "remote"}
    assert (registry.get_sample_value("mesh_outbound_zone_tries_total", remote) or 0) >= 15


def test_a_caller_in_another_zone_is_kept_in_its_own(mesh: Any, fake_upstreams: Any) -> None:
    near1, near2, far = fake_upstreams.get(3)
    endpoints = [{"url": near1, "zone": "z1"}, {"url": near2, "zone": "z1"},
                 {"url": far, "zone": "z2"}]  # fmt: skip
    d = mesh({"pay": {"endpoints": endpoints, "zone_affinity": True}}, zone="z2")
    assert set(served_by(d, 20)) == {"u2"}
