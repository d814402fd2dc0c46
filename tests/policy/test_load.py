import json

import pytest

from asgimesh import PolicyError
from asgimesh.policy import merge_layers, parse_policy, read_policy_file

CONTRACT_SKETCH = """
version: 1
defaults:
  timeout: 10s
  per_try_timeout: 2s
  retries:
    attempts: 2
    on: [connect-failure, reset, 502, 503, 504]
    backoff: {base: 25ms, max: 250ms}
    budget: {ratio: 0.2, min_per_second: 10, ttl: 10s}
  load_balancer: p2c_ewma
  outlier_detection: {consecutive_failures: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50}
services:
  payments:
    endpoints: [http://127.0.0.1:8001, http://127.0.0.1:8002]
    timeout: 1s
    routes:
      - match: {method: POST, path: /charge}
        retries: {attempts: 0}
    split: [{service: payments-v2, weight: 10}]
    fault: {abort: {percent: 0, status: 503}, delay: {percent: 0, duration: 100ms}}
inbound:
  payments:
    authorization:
      - allow: {from: [spiffe://mesh.local/ns/default/sa/orders], methods: [POST], paths: [/charge]}
    rate_limit: {requests_per_second: 100, burst: 200}
    concurrency_limit: 64
"""


def test_contract_sketch_is_valid_and_its_defaults_are_the_builtin_ones() -> None:
    policy = parse_policy(CONTRACT_SKETCH, "yaml")
    assert policy.defaults == parse_policy("{}").defaults
    payments = policy.services["payments"]
    assert payments.timeout == 1.0 and payments.endpoints[1] == "http://127.0.0.1:8002"
    assert payments.routes[0].match.method == "POST" and payments.routes[0].retries.attempts == 0
    assert policy.inbound["payments"].authorization[0].allow.from_ == (
        "spiffe://mesh.local/ns/default/sa/orders",
    )


def test_json_yaml_and_toml_give_the_same_policy(tmp_path) -> None:
    doc = {"defaults": {"timeout": "3s"}, "services": {"a": {"endpoints": ["http://127.0.0.1:1"]}}}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    (tmp_path / "p.yaml").write_text(
        "defaults: {timeout: 3s}\nservices: {a: {endpoints: ['http://127.0.0.1:1']}}\n"
    )
    (tmp_path / "p.toml").write_text(
        '[defaults]\ntimeout = "3s"\n[services.a]\nendpoints = ["http://127.0.0.1:1"]\n'
    )
    policies = [
        parse_policy(json.dumps(read_policy_file(tmp_path / n)))
        for n in ("p.json", "p.yaml", "p.toml")
    ]
    assert policies[0] == policies[1] == policies[2]
    assert policies[0].defaults.timeout == 3.0


def test_every_problem_listed_by_path() -> None:
    doc = {
        "defaults": {"timeout": "fast", "load_balancer": "fastest", "retries": {"on": ["bogus"]}},
        "services": {
            "payments": {
                "timout": "1s",
                "endpoints": ["ftp://x"],
                "split": [{"service": "a", "weight": 80}, {"service": "b", "weight": 30}],
            }
        },
        "inbound": {"payments": {"rate_limit": {}, "trusted_proxies": ["not-an-ip"]}},
    }
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc))
    assert info.value.problems == [
        'defaults.timeout: expected a duration ("250ms", "2s", "1m" or a number of seconds), got "fast"',
        'defaults.retries.on.0: expected "connect-failure", "reset" or a status from 400 to 599, got \'bogus\'',
        "defaults.load_balancer: expected one of 'p2c_ewma', 'round_robin', 'least_request' or 'random', got \"fastest\"",
        "services.payments.endpoints: expected http:// or https:// URLs, got 'ftp://x'",
        "services.payments.split: expected weights that add up to at most 100, got 110",
        "services.payments.timout: unknown field",
        "inbound.payments.rate_limit.requests_per_second: required",
        "inbound.payments.trusted_proxies: expected IP addresses or networks, got 'not-an-ip'",
    ]


@pytest.mark.parametrize(
    ("text", "fmt", "problem"),
    [
        ("{", "json", "(document): invalid JSON at line 1 column 2"),
        ("a: [", "yaml", "(document): invalid YAML at line 1 column 5"),
        ("a = ", "toml", "(document): invalid TOML"),
        ("[1, 2]", "json", "(document): expected a mapping at the top, got list"),
        # Found by the randomized PUTs: JSON null was taken for an empty policy.
        ("null", "json", "(document): expected a mapping at the top, got null"),
        (b"\xff\xfe", "json", "(document): expected UTF-8 text"),
        ('{"version": 2}', "json", "version: expected one of 1, got 2"),
    ],
)
def test_unparseable_documents_say_where(text, fmt: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, fmt)
    assert info.value.problems[0].startswith(problem)


def test_missing_file_is_a_policy_error(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        read_policy_file(tmp_path / "absent.yaml")


def test_merge_layers_records_origin_and_replaces_lists() -> None:
    merged, origin = merge_layers(
        [
            (
                "env",
                {
                    "defaults": {"timeout": 1, "retries": {"attempts": 1}},
                    "services": {"a": {"endpoints": ["http://x:1"]}},
                },
            ),
            (
                "file",
                {
                    "defaults": {"retries": {"attempts": 3}},
                    "services": {"a": {"endpoints": ["http://y:2"]}},
                },
            ),
        ]
    )
    assert merged == {
        "defaults": {"timeout": 1, "retries": {"attempts": 3}},
        "services": {"a": {"endpoints": ["http://y:2"]}},
    }
    assert origin == {
        "defaults.timeout": "env",
        "defaults.retries.attempts": "file",
        "services.a.endpoints": "file",
    }


def test_yaml_on_and_yes_stay_strings_as_in_yaml_1_2() -> None:
    policy = parse_policy("defaults:\n  retries:\n    on: [reset, 503]\n", "yaml")
    assert policy.defaults.retries.on == ("reset", 503)
    with pytest.raises(
        PolicyError, match=r"defaults.retries.attempts: expected a valid integer.*\"yes\""
    ):
        parse_policy("defaults:\n  retries:\n    attempts: yes\n", "yaml")
