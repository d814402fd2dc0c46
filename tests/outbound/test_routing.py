"""Header- and query-based routing (issue 13.2): route matches on headers and query
parameters, sending matching calls to another service or a split. The decision is the
compiled policy's, tested without sockets; then through every transport flavour."""

from __future__ import annotations

import json
from typing import Any

import pytest
from outbound_driver import VARIANTS, driver

from asgimesh import MeshRuntime, MeshSettings
from asgimesh._errors import PolicyError
from asgimesh.outbound._compile import compile_policy
from asgimesh.policy import validate_document

ROUTES: list[dict[str, Any]] = [
    {"match": {"headers": {"X-Canary": "1"}}, "service": "search-canary"},
    {"match": {"headers": {"x-tenant": {"prefix": "acme-"}}}, "service": "search-acme"},
    {"match": {"method": "POST", "headers": {"authorization": {"present": False}}}, "timeout": "1s"},
    {"match": {"query": {"beta": {"present": True}}}, "split": [{"service": "search-v2", "weight": 100}]},
    {"match": {"path": "/items", "query": {"region": "eu"}}, "service": "search-eu"},
]


def compiled(routes: list[dict[str, Any]] = ROUTES) -> Any:
    policy = validate_document({"services": {"search": {"endpoints": ["http://a:1"], "routes": routes}}})
    return compile_policy(policy)


def choose(headers: dict[str, str] | None = None, query: str = "", method: str = "GET",
           path: str = "/items") -> Any:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return compiled().services["search"].config_for(method, path, lowered.get, query.encode())


def test_headers_match_exact_prefix_present_and_absent() -> None:
    assert choose({"x-canary": "1"}).service == "search-canary"
    assert choose({"x-canary": "10"}).service is None  # exact is exact
    assert choose({"x-tenant": "acme-eu"}).service == "search-acme"
    assert choose({"x-tenant": "other"}).service is None
    anonymous_post = choose(method="POST")
    assert anonymous_post.timeout == 1.0 and anonymous_post.service is None
    assert choose({"authorization": "Bearer x"}, method="POST").timeout == 10.0


def test_query_parameters_match_the_first_value_and_presence() -> None:
    assert choose(query="beta").split == (("search-v2", 100.0),)
    assert choose(query="beta=&x=1").split == (("search-v2", 100.0),)
    assert choose(query="region=eu").service == "search-eu"
    assert choose(query="region=eu", path="/other").service is None  # every condition holds
    assert choose(query="region=us&region=eu").service is None  # the first value counts
    assert choose(query="region=%65u").service == "search-eu"  # percent-decoded
    # First match wins: the header route comes before the query one.
    assert choose({"x-canary": "1"}, query="region=eu").service == "search-canary"


def test_routes_without_header_or_query_conditions_never_ask() -> None:
    asked: list[str] = []

    def header(name: str) -> str | None:
        asked.append(name)
        return None

    config = compiled([{"match": {"path": "/x"}, "timeout": "3s"}]).services["search"]
    assert config.config_for("GET", "/x", header, b"a=1").timeout == 3.0
    assert asked == []


def test_route_targets_get_backends_even_if_undefined() -> None:
    backends = compiled().backends
    assert backends["search-canary"].endpoints == ()  # undefined: fails with NoHealthyEndpoints
    assert {"search-acme", "search-eu", "search-v2"} <= set(backends)


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"match": {"headers": {"x": {"exact": "1", "prefix": "2"}}}},
         "routes.0.match.headers.x: expected exactly one of exact, prefix or present"),
        ({"match": {"headers": {"x": {}}}}, "expected exactly one of exact, prefix or present"),
        ({"match": {"headers": {"bad header": "1"}}}, "expected header names of letters"),
        ({"match": {"headers": {"X-A": "1", "x-a": "2"}}}, "expected each header once"),
        ({"match": {"headers": {f"h{n}": "1" for n in range(17)}}}, "routes.0.match.headers"),
        ({"match": {"query": {"": "1"}}}, "routes.0.match.query"),
        ({"match": {"headers": {"x": {"prefix": ""}}}}, "routes.0.match.headers.x.prefix"),
        ({"service": "not a name"}, "routes.0.service"),
    ],
)
def test_bad_conditions_are_refused_with_their_path(route: dict[str, Any], problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_document({"services": {"search": {"endpoints": ["http://a:1"], "routes": [route]}}})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_canary_by_header_and_tenant_by_query_through_the_transport(
    variant: str, fake_upstreams: Any
) -> None:
    stable, canary, eu = fake_upstreams.get(3)
    policy = {
        "services": {
            "search": {
                "endpoints": [stable],
                "routes": [
                    {"match": {"headers": {"x-canary": "1"}}, "service": "search-canary"},
                    {"match": {"query": {"region": "eu"}}, "service": "search-eu"},
                ],
            },
            "search-canary": {"endpoints": [canary]},
            "search-eu": {"endpoints": [eu]},
        }
    }
    rt = MeshRuntime(MeshSettings(policy=json.dumps(policy)))
    with driver(variant, rt) as d:
        assert d.request("GET", "http://search/q").json()["upstream"] == "u0"
        assert d.request("GET", "http://search/q", headers={"X-Canary": "1"}).json()["upstream"] == "u1"
        tenant = d.request("GET", "http://search/q?region=eu")
        assert tenant.json()["upstream"] == "u2" and tenant.json()["path"] == "/q"
        # The callee sees the call as the app made it: its own Host, the canary header kept.
        seen = d.request("GET", "http://search/q", headers={"x-canary": "1"}).json()["headers"]
        assert seen["host"] == "search" and seen["x-canary"] == "1"
    # Metrics name the service actually called, so a canary's errors show under its own name.
    labels = {"service": "app", "method": "GET", "status": "200"}
    value = rt.metrics.registry.get_sample_value
    assert value("mesh_outbound_requests_total", {**labels, "upstream": "search-canary"}) == 2
    assert value("mesh_outbound_requests_total", {**labels, "upstream": "search-eu"}) == 1
    assert value("mesh_outbound_requests_total", {**labels, "upstream": "search"}) == 1
