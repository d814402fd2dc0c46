"""Issue 12's attacks on the control plane, replayed against a real one on a loopback port.

Each test fails without its fix: reports that blinded ``GET /v1/services`` (12.2), inputs that
answered 500 with a traceback where the contract promises a 4xx (12.7) and YAML alias bombs
(12.6). Parked long polls (12.3) are in test_parking.py.
"""

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgimesh import MeshRuntime, MeshSettings
from asgimesh._errors import PolicyError
from asgimesh.controlplane._rollup import MAX_LATENCY_MS, MAX_RATE, MAX_REQUESTS
from asgimesh.policy._load import MAX_DOCUMENT_BYTES, read_policy_file
from asgimesh.testing import ControlPlaneHandle, control_plane

#: The longest ``detail`` any refusal here may carry: the value is quoted, but cut short.
MAX_DETAIL = 400


@pytest.fixture(scope="module")
def cp() -> Iterator[ControlPlaneHandle]:
    with control_plane() as handle:
        yield handle


@pytest.fixture(scope="module")
def http(cp: ControlPlaneHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cp.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def service(cp: ControlPlaneHandle, http: httpx.Client) -> dict[str, str]:
    """Headers with a service token for ``payments``."""
    token = http.post("/v1/tokens", json={"service": "payments"}, headers=cp.admin_headers)
    return {"authorization": f"Bearer {token.json()['token']}"}


def assert_refused(response: httpx.Response, *, status: int | None = None) -> dict[str, Any]:
    """A 4xx in the API's shape, with a bounded detail; the body it carried."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert len(body["detail"]) <= MAX_DETAIL, body["detail"][:MAX_DETAIL]
    return body


def report(**fields: Any) -> dict[str, Any]:
    return {"service": "payments", "instance": "p-1", "policy_version": 0, **fields}


# -- 12.2: one report blinds the dashboard ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests_per_second", 1e308),
        ("requests_per_second", 10**400),
        ("requests", 10**400),
        ("requests", -1),
        ("policy_version", 10**23),
        ("success_rate", 1.5),
        ("p50_ms", 1e308),
        ("p99_ms", 10**400),
        ("instance", "i" * 201),
        ("instance", "tab\tin"),
        ("instance", "\ud800"),
        ("denied", -1),
        ("rate_limited", 10**400),
        ("pid", 2**40),
        ("address", "host with spaces:80"),
        ("address", "a" * 101),
    ],
)
def test_report_fields_are_bounded(
    http: httpx.Client, service: dict[str, str], field: str, value: object
) -> None:
    # json.dumps, not json=: it escapes the lone surrogate as the JSON text "\ud800".
    body = json.dumps(report(**{field: value})).encode()
    response = http.post(
        "/v1/reports", content=body, headers={**service, "content-type": "application/json"}
    )
    refused = assert_refused(response, status=422)
    assert refused["detail"].startswith(f"{field}: expected"), refused["detail"]


def _upstreams(count: int) -> dict[str, Any]:
    return {f"u-{n}": {"requests": 1} for n in range(count)}


@pytest.mark.parametrize(
    "outbound",
    [
        {"payments": {"requests_per_second": 1e308}},
        {"payments": {"requests": 10**400}},
        {"payments": {"p99_ms": -1}},
        {"payments": {"retries": {"503": -1}}},
        {"payments": {"retries": {"NOT A REASON": 1}}},
        {"payments": {"refusals": {f"r{n}": 1 for n in range(17)}}},
        {"bad name!": {"requests": 1}},
        {"payments": {"ejected": [{"endpoint": "a b", "since": 1, "seconds": 1, "failures": 1}]}},
        {"payments": {"ejected": [{"endpoint": "h:1", "since": 1e308, "seconds": 1, "failures": 1}]}},
        {"payments": {"ejected": [{"endpoint": "h:1", "since": 1, "seconds": 1, "failures": 1}] * 17}},
        _upstreams(65),
        [1, 2],
    ],
)
def test_report_edges_are_bounded(
    http: httpx.Client, service: dict[str, str], outbound: object
) -> None:
    response = http.post("/v1/reports", json=report(outbound=outbound), headers=service)
    refused = assert_refused(response, status=422)
    assert refused["detail"].startswith("outbound"), refused["detail"]


def test_two_instances_at_the_limits_still_roll_up(
    http: httpx.Client, service: dict[str, str]
) -> None:
    for instance in ("max-1", "max-2"):
        fields = {
            "requests": MAX_REQUESTS,
            "requests_per_second": MAX_RATE,
            "success_rate": 1.0,
            "p50_ms": MAX_LATENCY_MS,
            "p99_ms": MAX_LATENCY_MS,
        }
        edge = {**fields, "retries": {"503": MAX_REQUESTS}, "ejections": MAX_REQUESTS}
        body = report(instance=instance, outbound={"ledger": edge}, **fields)
        posted = http.post("/v1/reports", json=body, headers=service)
        assert posted.status_code == 200, posted.text
    services = http.get("/v1/services")
    assert services.status_code == 200, services.text
    (row,) = [s for s in services.json()["services"] if s["service"] == "payments"]
    assert row["requests_per_second"] == 2 * MAX_RATE
    (edge_row,) = [e for e in services.json()["edges"] if e["source"] == "payments"]
    assert edge_row["requests_per_second"] == 2 * MAX_RATE
    assert edge_row["retries"] == {"503": 2 * MAX_REQUESTS}


def test_the_roll_up_survives_any_stored_report(
    cp: ControlPlaneHandle, http: httpx.Client, service: dict[str, str]
) -> None:
    """What a store holds may predate today's checks (an older replica, a hand-edited file):
    rows no report could get past ``POST /v1/reports`` now, written straight into the file."""
    posted = http.post("/v1/reports", json=report(instance="good"), headers=service)
    assert posted.status_code == 200
    hostile = [
        report(instance="huge-1", requests_per_second=1e308, requests=10**400, success_rate=1),
        report(instance="huge-2", requests_per_second=1e308, p99_ms=float("inf")),
        report(instance="nan", success_rate=float("nan"), policy_version="7"),
        report(instance="\ud800", p50_ms=-1),
        report(instance="\udc00-stored"),  # sound numbers, but no Unicode name
        {"instance": "no-service"},
        report(instance="strings", requests="many", p50_ms=[1]),
    ]
    with sqlite3.connect(cp.state_dir / "controlplane.db") as db:
        db.executemany(
            "INSERT OR REPLACE INTO reports (service, instance, received, body) VALUES (?,?,?,?)",
            [("payments", f"raw-{n}", time.time(), json.dumps(r)) for n, r in enumerate(hostile)],
        )
    services = http.get("/v1/services")
    assert services.status_code == 200, services.text
    (row,) = [s for s in services.json()["services"] if s["service"] == "payments"]
    shown = {i["instance"] for i in row["instances"]}
    assert "good" in shown
    assert not {"huge-1", "huge-2", "nan", "no-service", "\udc00-stored"} & shown


# -- 12.7: 500s with tracebacks where a 4xx is due ----------------------------------------------

NESTED = b"[" * 100_000
ATTACKS: list[tuple[str, str, str, dict[str, Any], int]] = [
    # (name, method, path, request arguments, status)
    ("after-superscript", "GET", "/v1/policy?after=\u00b2&wait=1", {}, 400),
    ("after-arabic-digit", "GET", "/v1/policy?after=\u0661", {}, 400),
    ("after-5000-digits", "GET", "/v1/policy?after=" + "9" * 5000, {}, 400),
    ("wait-400-digits", "GET", "/v1/policy?after=1&wait=" + "9" * 400, {}, 400),
    ("wait-superscript", "GET", "/v1/policy?after=1&wait=\u00b2", {}, 400),
    ("history-superscript", "GET", "/v1/policy/history?limit=\u00b2", {"admin": True}, 400),
    ("history-5000-digits", "GET", "/v1/policy/history?limit=" + "9" * 5000, {"admin": True}, 400),
    ("report-nested", "POST", "/v1/reports", {"service": True, "content": NESTED}, 400),
    (
        "report-5000-digit-int",
        "POST",
        "/v1/reports",
        {"service": True, "content": b'{"requests": ' + b"9" * 5000 + b"}"},
        400,
    ),
    (
        "report-nan",
        "POST",
        "/v1/reports",
        {"service": True, "content": b'{"service": "payments", "requests_per_second": NaN}'},
        400,
    ),
    (
        "report-surrogate-service",
        "POST",
        "/v1/reports",
        {
            "service": True,
            "content": b'{"service": "\\ud800", "instance": "i", "policy_version": 0}',
        },
        422,
    ),
    ("csr-nested", "POST", "/v1/certificates", {"service": True, "json_body": NESTED}, 400),
    (
        "csr-not-a-string",
        "POST",
        "/v1/certificates",
        {"service": True, "json_body": b'{"csr": 1}'},
        400,
    ),
    (
        "csr-empty-service",
        "POST",
        "/v1/certificates",
        {"admin": True, "json_body": b'{"service": "", "csr": "x"}'},
        422,
    ),
    (
        "csr-path-in-namespace",
        "POST",
        "/v1/certificates",
        {"admin": True, "json_body": b'{"service": "cp", "namespace": "x/../a b", "csr": "x"}'},
        422,
    ),
    (
        "csr-surrogate-service",
        "POST",
        "/v1/certificates",
        {"admin": True, "json_body": b'{"service": "\\ud800", "csr": "x"}'},
        422,
    ),
    (
        "token-surrogate-service",
        "POST",
        "/v1/tokens",
        {"admin": True, "content": b'{"service": "\\udfff"}'},
        422,
    ),
    ("token-nested", "POST", "/v1/tokens", {"admin": True, "content": NESTED}, 400),
    (
        "rollback-10e23",
        "POST",
        "/v1/policy/rollback",
        {"admin": True, "content": b'{"version": 100000000000000000000000}'},
        422,
    ),
    (
        "rollback-5000-digits",
        "POST",
        "/v1/policy/rollback",
        {"admin": True, "content": b'{"version": ' + b"9" * 5000 + b"}"},
        400,
    ),
    ("policy-nested-json", "PUT", "/v1/policy", {"admin": True, "content": NESTED}, 422),
    (
        "policy-nested-yaml",
        "PUT",
        "/v1/policy",
        {"admin": True, "yaml": b"a: " + b"[" * 100_000},
        422,
    ),
    (
        "policy-400-digit-duration",
        "PUT",
        "/v1/policy",
        {"admin": True, "content": b'{"defaults": {"timeout": ' + b"9" * 400 + b"}}"},
        422,
    ),
    (
        "policy-400-digit-duration-yaml",
        "PUT",
        "/v1/policy",
        {"admin": True, "yaml": b"defaults: {timeout: " + b"9" * 400 + b"}"},
        422,
    ),
    (
        "policy-5000-digit-yaml-int",
        "PUT",
        "/v1/policy",
        {"admin": True, "yaml": b"defaults: {retries: {attempts: " + b"9" * 5000 + b"}}"},
        422,
    ),
    (
        "policy-superscript-duration",
        "PUT",
        "/v1/policy",
        {"admin": True, "content": '{"defaults": {"timeout": "\u00b2s"}}'.encode()},
        422,
    ),
    (
        "policy-surrogate-key",
        "PUT",
        "/v1/policy",
        {"admin": True, "content": b'{"services": {"\\ud800": {}}}'},
        422,
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "arguments", "status"),
    [pytest.param(*attack[1:], id=attack[0]) for attack in ATTACKS],
)
def test_hostile_input_is_a_4xx_in_the_api_shape(
    cp: ControlPlaneHandle,
    http: httpx.Client,
    service: dict[str, str],
    method: str,
    path: str,
    arguments: dict[str, Any],
    status: int,
) -> None:
    headers: dict[str, str] = {}
    if arguments.get("admin"):
        headers.update(cp.admin_headers)
    if arguments.get("service"):
        headers.update(service)
    content = arguments.get("content")
    if "json_body" in arguments:
        content = arguments["json_body"]
        headers["content-type"] = "application/json"
    elif "yaml" in arguments:
        content = arguments["yaml"]
        headers["content-type"] = "application/yaml"
    elif content is not None:
        headers["content-type"] = "application/json"
    response = http.request(method, path, content=content, headers=headers)
    assert_refused(response, status=status)
    # ... and the server is still there for the next caller.
    assert http.get("/v1/trust-bundle").status_code == 200


# -- 12.6: YAML alias bombs ---------------------------------------------------------------------

#: The classic "billion laughs": 9 levels of 10 aliases, a billion strings once expanded.
BILLION_LAUGHS = b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + b"".join(
    b"%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n" % ((c, c) + (c - 1,) * 9)
    for c in range(ord("b"), ord("j"))
)


def test_a_yaml_alias_bomb_is_refused_at_once(cp: ControlPlaneHandle, http: httpx.Client) -> None:
    assert len(BILLION_LAUGHS) < 600
    started = time.monotonic()
    response = http.put(
        "/v1/policy",
        content=BILLION_LAUGHS,
        headers={**cp.admin_headers, "content-type": "application/yaml"},
    )
    assert time.monotonic() - started < 2.0
    body = assert_refused(response, status=422)
    assert "anchors (&name) and aliases (*name) are not allowed" in body["problems"][0]
    assert "line 1 column 4" in body["problems"][0]  # where the first anchor is


@pytest.mark.parametrize(
    "document",
    [
        b"defaults: &d {timeout: 1s}\nservices: {a: {timeout: 2s}}\n",
        b"defaults: {timeout: 1s}\nservices:\n  a: *d\n",
        b"base: &b {timeout: 1s}\nservices: {a: {<<: *b}}\n",
    ],
    ids=["anchor-alone", "unknown-alias", "merge-key"],
)
def test_any_anchor_or_alias_is_refused(
    cp: ControlPlaneHandle, http: httpx.Client, document: bytes
) -> None:
    response = http.put(
        "/v1/policy", content=document, headers={**cp.admin_headers, "content-type": "text/yaml"}
    )
    body = assert_refused(response, status=422)
    assert "not allowed in policy documents" in body["problems"][0]


def test_a_large_yaml_document_is_parsed_off_the_event_loop(
    cp: ControlPlaneHandle, http: httpx.Client
) -> None:
    """A document near the size bound takes a while to parse in pure Python; meanwhile the
    server keeps answering others (the parse holds the GIL only between switches)."""
    document = b"services:\n" + b"".join(
        b"  s%d: {timeout: 1s, retries: {attempts: 2, on: [503]}}\n" % n for n in range(17_000)
    )
    assert len(document) < 1 << 20
    timings: dict[str, float] = {}

    def put() -> None:
        started = time.monotonic()
        with httpx.Client(base_url=cp.url, timeout=60) as client:
            client.put(
                "/v1/policy",
                content=document,
                headers={**cp.admin_headers, "content-type": "application/yaml"},
            )
        timings["put"] = time.monotonic() - started

    thread = threading.Thread(target=put)
    thread.start()
    time.sleep(0.3)  # the upload is in and the parse under way
    slowest = 0.0
    while thread.is_alive():
        started = time.monotonic()
        assert http.get("/v1/trust-bundle").status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    thread.join()
    assert timings["put"] > 1.0, "the document parsed too fast to show anything"
    assert slowest < timings["put"] / 3, (slowest, timings)


def test_policy_files_and_mesh_policy_share_the_rules(tmp_path: Path) -> None:
    """A policy file (``MESH_CONFIG=policy.yaml``, the file watcher, ``policy check``) and
    ``MESH_POLICY`` are read by the same loader as the server, and refused the same way."""
    bomb = tmp_path / "policy.yaml"
    bomb.write_bytes(BILLION_LAUGHS)
    with pytest.raises(PolicyError, match="aliases"):
        read_policy_file(bomb)
    with pytest.raises(PolicyError, match="aliases"):
        MeshRuntime(MeshSettings(config=str(bomb))).close()
    large = tmp_path / "large.json"
    large.write_bytes(b'{"a": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}')
    with pytest.raises(PolicyError, match="expected at most"):
        read_policy_file(large)
    for inline, problem in (
        ("[" * 100_000, "nested too deeply"),
        ('{"services": {"\\ud800": {}}}', "lone surrogate"),
        ('{"defaults": {"timeout": ' + "9" * 400 + "}}", "defaults.timeout: expected a duration"),
    ):
        with pytest.raises(PolicyError, match=problem):
            MeshRuntime(MeshSettings(policy=inline)).close()
