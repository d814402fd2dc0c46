"""The shop's frontend as a Lambda function (``examples/shop/lambda_handler.py``), driven the way
the Lambda runtime drives it: a fresh process imports the handler, then calls it with real
API Gateway HTTP API (v2) and ALB event payloads and a Lambda context object. No AWS is
involved; everything else is real: the frontend's outbound calls reach a real upstream on
loopback, and in serverless mode the policy comes from a real control plane."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ControlPlaneStarter, FakeUpstreams, subprocess_env

pytest.importorskip("mangum")

SHOP = ROOT / "examples" / "shop"
DRIVER = Path(__file__).parent / "apps" / "lambda_driver.py"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def http_api_event(path: str, headers: dict[str, str], method: str = "GET") -> dict[str, Any]:
    """An API Gateway HTTP API payload, format version 2.0, as AWS documents it."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "cookies": [],
        "headers": {
            "host": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            "x-amzn-trace-id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
            **headers,
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "04/Dec/2026:19:03:58 +0000",
            "timeEpoch": 1796497438000,
        },
        "isBase64Encoded": False,
    }


def alb_event(path: str, headers: dict[str, str], method: str = "GET") -> dict[str, Any]:
    """An Application Load Balancer target-group event (multi-value headers off)."""
    return {
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                "targetgroup/shop-frontend/6d0ecf831eec9f09"
            }
        },
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {},
        "headers": {
            "accept": "*/*",
            "host": "shop-1234567890.eu-west-1.elb.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-amzn-trace-id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-port": "80",
            "x-forwarded-proto": "http",
            **headers,
        },
        "body": "",
        "isBase64Encoded": False,
    }


class LambdaProcess:
    """A fresh interpreter holding the handler, as one Lambda sandbox does."""

    def __init__(self, env: dict[str, str], handler: str = "lambda_handler.handler") -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER)],
            env=subprocess_env(
                {
                    "LAMBDA_HANDLER": handler,
                    "PYTHONPATH": f"{SHOP}{os.pathsep}{subprocess_env()['PYTHONPATH']}",
                    **env,
                }
            ),
            cwd=SHOP,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.init = self._read()

    def _read(self, timeout: float = 60.0) -> dict[str, Any]:
        """The next answer line; log lines the library printed meanwhile are skipped."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no answer from the handler in {timeout} s: {self.stderr()}")
            line = self.proc.stdout.readline().decode()
            if not line:
                raise AssertionError(f"the handler's process ended: {self.stderr()}")
            if line.startswith("@@ "):
                return dict(json.loads(line[3:]))

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """``handler(event, context)``: the response dict, and ``threads`` alive after it."""
        answer = self.send({"event": event})
        response = dict(answer["response"])
        response["threads"] = answer["threads"]
        return response

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """Start Lambda sandboxes with ``sandbox(env)``; each is ended when the test ends."""
    started: list[LambdaProcess] = []

    def start(env: dict[str, str]) -> LambdaProcess:
        process = LambdaProcess(env)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()


def body(response: dict[str, Any]) -> Any:
    text = response["body"]
    if response.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    return json.loads(text)


def headers(response: dict[str, Any]) -> dict[str, str]:
    """Response headers, from either shape (``headers`` or ALB's ``multiValueHeaders``)."""
    found = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        found[key.lower()] = values[-1]
    return found


@pytest.fixture
def orders(fake_upstreams: FakeUpstreams) -> str:
    """A real upstream standing in for the orders service; it answers with what it received."""
    return fake_upstreams.get(1)[0]


@pytest.mark.parametrize("shape", [http_api_event, alb_event], ids=["http-api-v2", "alb"])
def test_an_event_goes_through_the_mesh_to_the_upstream_and_back(shape, orders, sandbox) -> None:
    lam = sandbox({"MESH_SERVICE": "frontend", "MESH_UPSTREAMS": f"orders={orders}",
                   "MESH_TIMEOUT": "2s"})
    assert lam.init["threads"] == ["MainThread"]

    kept = lam.invoke(shape("/", {"traceparent": TRACEPARENT, "x-request-id": "req-lambda-1"}))
    assert kept["statusCode"] == 200, kept
    assert headers(kept)["x-request-id"] == "req-lambda-1"
    answer = body(kept)
    assert answer["frontend"] == "ok" and answer["trace_id"] == TRACE_ID
    seen = answer["orders"]["headers"]  # what the upstream received
    assert answer["orders"]["method"] == "POST" and answer["orders"]["path"] == "/orders"
    assert seen["x-request-id"] == "req-lambda-1"
    version, trace, parent, _flags = seen["traceparent"].split("-")
    assert (version, trace) == ("00", TRACE_ID) and parent != "00f067aa0ba902b7"
    assert 0 < int(seen["mesh-deadline-ms"]) <= 2000
    assert seen["mesh-attempt"] == "1"

    made = lam.invoke(shape("/", {}))
    assert made["statusCode"] == 200
    request_id = headers(made)["x-request-id"]
    assert request_id and request_id != "req-lambda-1"
    assert body(made)["orders"]["headers"]["x-request-id"] == request_id
    assert re.fullmatch(r"[0-9a-f]{32}", body(made)["trace_id"])
    assert body(made)["trace_id"] != TRACE_ID
    # Nothing of the mesh or of the app outlives an event: a frozen sandbox loses nothing.
    assert made["threads"] == ["MainThread"]


def test_the_invocations_time_limit_bounds_the_outbound_calls(
    fake_upstreams: FakeUpstreams, sandbox
) -> None:
    """A 2 s function with the mesh's timeout at 30 s: calls get the invocation's time left (less
    LambdaDeadline's margin), and a hanging upstream ends as the frontend's 502 in time, not as
    Lambda stopping the function."""
    url = fake_upstreams.get(1)[0]
    lam = sandbox({"MESH_SERVICE": "frontend", "MESH_UPSTREAMS": f"orders={url}",
                   "MESH_TIMEOUT": "30s", "LAMBDA_TIMEOUT_MS": "2000"})
    ok = lam.invoke(http_api_event("/", {}))
    assert ok["statusCode"] == 200
    assert 0 < int(body(ok)["orders"]["headers"]["mesh-deadline-ms"]) <= 1750
    fake_upstreams.control(url, "hang")
    started = time.monotonic()
    late = lam.invoke(http_api_event("/", {"mesh-deadline-ms": "60000"}))
    took = time.monotonic() - started
    assert late["statusCode"] == 502, late
    assert body(late)["detail"].startswith("DeadlineExceeded")
    assert took < 5.0  # the 2 s invocation's deadline, not the caller's minute nor 30 s


def test_metrics_count_the_events_and_health_answers(orders, sandbox) -> None:
    lam = sandbox({"MESH_SERVICE": "frontend", "MESH_UPSTREAMS": f"orders={orders}"})
    for _ in range(3):
        assert lam.invoke(http_api_event("/", {}))["statusCode"] == 200
    health = lam.invoke(alb_event("/_mesh/health", {}))
    assert health["statusCode"] == 200
    assert body(health)["status"] == "ok" and body(health)["service"] == "frontend"
    metrics = lam.invoke(http_api_event("/_mesh/metrics", {}))
    assert metrics["statusCode"] == 200
    text = metrics["body"]
    if metrics.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    inbound = re.search(
        r'^mesh_inbound_requests_total\{(?=[^}]*method="GET")(?=[^}]*service="frontend")'
        r'(?=[^}]*status="200")[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert inbound is not None, text[:2000]
    assert float(inbound.group(1)) >= 3  # the three orders (health may count too)
    outbound = re.search(
        r'^mesh_outbound_requests_total\{(?=[^}]*upstream="orders")(?=[^}]*status="200")'
        r'[^}]*\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert outbound is not None and float(outbound.group(1)) == 3


def test_serverless_mode_refreshes_the_policy_inside_events_without_a_thread(
    control_plane_process: ControlPlaneStarter, orders: str, sandbox
) -> None:
    cp = control_plane_process.start()
    admin = {"Authorization": f"Bearer {control_plane_process.admin_token}"}
    put = lambda timeout: httpx.put(  # noqa: E731
        cp.url + "/v1/policy", json={"defaults": {"timeout": timeout}}, headers=admin, timeout=10
    ).raise_for_status()
    put("3s")
    lam = sandbox({"MESH_SERVICE": "frontend", "MESH_UPSTREAMS": f"orders={orders}",
                   "MESH_CONFIG": cp.url + "?refresh=200ms"})
    assert lam.init["threads"] == ["MainThread"]  # loaded at init, no watcher started
    first = lam.invoke(http_api_event("/_mesh/health", {}))
    assert body(first)["policy_version"] == 1
    deadline = int(body(lam.invoke(http_api_event("/", {})))["orders"]["headers"]["mesh-deadline-ms"])
    assert 2000 < deadline <= 3000

    put("9s")
    time.sleep(0.5)
    # The first event after the refresh interval starts the refresh and is answered at once;
    # the helper that fetches the new version ends by itself.
    lam.invoke(http_api_event("/_mesh/health", {}))
    assert lam.send({"settle": 15})["threads"] == ["MainThread"]
    after = lam.invoke(http_api_event("/_mesh/health", {}))
    assert body(after)["policy_version"] == 2, after
    answer = lam.invoke(http_api_event("/", {}))
    assert 3000 < int(body(answer)["orders"]["headers"]["mesh-deadline-ms"]) <= 9000
    assert lam.send({"settle": 15})["threads"] == ["MainThread"]


def test_a_bad_mesh_setting_fails_the_init_with_one_clear_line(sandbox) -> None:
    lam = sandbox({"MESH_SERVICE": "frontend", "MESH_TIMEOUT": "fast"})
    assert lam.init["errorType"] == "ConfigError"
    message = lam.init["errorMessage"]
    assert "MESH_TIMEOUT='fast': expected a duration" in message
    assert "\n" not in message and "Traceback" not in message
    assert lam.proc.wait(timeout=30) == 1
