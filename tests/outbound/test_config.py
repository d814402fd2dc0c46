"""Policy resolution: defaults <- service <- route, folded into concrete configs."""

from __future__ import annotations

import pytest
from outbound_support import backend_config, call_config

from asgimesh._errors import PolicyError
from asgimesh.outbound._compile import compile_policy
from asgimesh.policy import validate_document


def test_defaults_are_the_contracts() -> None:
    config = call_config()
    assert config.timeout == 10.0
    assert config.per_try_timeout == 2.0
    assert config.attempts == 2
    assert config.retry_connect and config.retry_reset
    assert config.retry_statuses == frozenset({502, 503, 504})
    assert (config.backoff_base, config.backoff_max) == (0.025, 0.25)
    backend = backend_config()
    assert backend.load_balancer == "p2c_ewma"
    assert (backend.budget.ratio, backend.budget.min_per_second, backend.budget.ttl) == (0.2, 10, 10)
    assert backend.outlier.consecutive_failures == 5


def test_service_overrides_defaults_field_by_field() -> None:
    config = call_config(
        {"timeout": "1s", "retries": {"backoff": {"max": "1s"}}},
        defaults={"retries": {"attempts": 4, "backoff": {"base": "10ms"}}},
    )
    assert config.timeout == 1.0
    assert config.per_try_timeout == 2.0  # inherited
    assert config.attempts == 4  # from defaults
    assert (config.backoff_base, config.backoff_max) == (0.01, 1.0)


def test_matching_route_overrides_service() -> None:
    service = {
        "timeout": "1s",
        "routes": [
            {"match": {"method": "POST", "path": "/charge"}, "retries": {"attempts": 0}},
            {"match": {"path": "/reports/*"}, "timeout": "30s", "idempotent": True},
        ],
    }
    post = call_config(service, method="POST", path="/charge")
    assert post.attempts == 0 and post.timeout == 1.0
    get_charge = call_config(service, method="GET", path="/charge")
    assert get_charge.attempts == 2  # method did not match: service config
    reports = call_config(service, method="POST", path="/reports/2024")
    assert reports.timeout == 30.0 and reports.is_idempotent("POST")
    assert not call_config(service, method="POST", path="/reportsX").is_idempotent("POST")


def test_idempotency_from_method_unless_route_says_otherwise() -> None:
    config = call_config()
    assert config.is_idempotent("GET") and config.is_idempotent("PUT")
    assert not config.is_idempotent("POST") and not config.is_idempotent("PATCH")
    never = call_config({"routes": [{"match": {"path": "/x"}, "idempotent": False}]}, path="/x")
    assert not never.is_idempotent("GET")


def test_zero_timeout_means_none() -> None:
    config = call_config({"timeout": 0, "per_try_timeout": "0s"})
    assert config.timeout is None and config.per_try_timeout is None


def test_split_and_fault_from_route_or_service() -> None:
    doc = {
        "services": {
            "svc": {
                "endpoints": ["http://a:1"],
                "split": [{"service": "v2", "weight": 10}],
                "fault": {"abort": {"percent": 5, "status": 500}},
                "routes": [{"match": {"path": "/canary"}, "split": [{"service": "v2", "weight": 50}],
                            "fault": {"delay": {"percent": 100, "duration": "50ms"}}}],
            },
            "v2": {"endpoints": ["http://b:1"]},
        }
    }
    routes = compile_policy(validate_document(doc)).services["svc"]
    plain = routes.config_for("GET", "/")
    assert plain.split == (("v2", 10.0),)
    assert plain.fault is not None and plain.fault.abort_percent == 5 and plain.fault.abort_status == 500
    canary = routes.config_for("GET", "/canary")
    assert canary.split == (("v2", 50.0),)
    assert canary.fault is not None and canary.fault.delay == 0.05 and canary.fault.abort_percent == 0


def test_zero_percent_fault_compiles_to_none() -> None:
    assert call_config({"fault": {"abort": {"percent": 0}}}).fault is None


def test_service_outlier_and_budget_override() -> None:
    backend = backend_config(
        {"outlier_detection": {"consecutive_failures": 2}, "retries": {"budget": {"ratio": 0.5}},
         "load_balancer": "round_robin"}
    )
    assert backend.outlier.consecutive_failures == 2
    assert backend.outlier.base_ejection_time == 30.0
    assert backend.budget.ratio == 0.5 and backend.budget.ttl == 10.0
    assert backend.load_balancer == "round_robin"


@pytest.mark.parametrize(
    ("service", "problem"),
    [
        ({"dns": "no-port"}, 'services.svc.dns: expected "host:port"'),
        ({"dns": "db:5432"}, "services.svc: expected either endpoints or dns"),
        ({"routes": [{"retries": {"budget": {"ratio": 1}}}]}, "services.svc.routes.0.retries: expected no budget"),
    ],
)
def test_invalid_outbound_policy_is_refused_with_its_path(service: dict, problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        validate_document({"services": {"svc": {"endpoints": ["http://a:1"], **service}}})
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_dns_only_service_is_valid() -> None:
    policy = validate_document({"services": {"db": {"dns": "https://db.internal:8443"}}})
    assert compile_policy(policy).backends["db"].dns == "https://db.internal:8443"


def test_split_to_an_undefined_service_gets_a_backend_without_endpoints() -> None:
    policy = validate_document(
        {"services": {"svc": {"endpoints": ["http://a:1"], "split": [{"service": "ghost", "weight": 5}]}}}
    )
    compiled = compile_policy(policy)
    assert compiled.backends["ghost"].endpoints == () and "ghost" not in compiled.services
