"""What both shells do alike, asserted for each (in-process; real servers in test_servers.py)."""

from __future__ import annotations

import pytest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


def counted(shell, method: str, status: str) -> float:
    value = shell.runtime.metrics.registry.get_sample_value(
        "mesh_inbound_requests_total",
        {"service": shell.runtime.settings.service, "method": method, "status": status},
    )
    return value or 0.0


def test_request_id_is_made_echoed_and_seen_by_the_app(make_shell) -> None:
    response = make_shell().get("/whoami")
    assert response.status_code == 200
    made = response.headers["x-request-id"]
    assert len(made) == 32
    assert int(made, 16)
    assert response.json()["request_id"] == made


def test_request_id_is_kept_and_echoed(make_shell) -> None:
    response = make_shell().get("/whoami", headers={"x-request-id": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert response.json()["request_id"] == "req-42"


def test_absurd_request_id_is_replaced(make_shell) -> None:
    response = make_shell().get("/whoami", headers={"x-request-id": "a" * 201})
    made = response.headers["x-request-id"]
    assert made != "a" * 201
    assert len(made) == 32
    assert response.json()["request_id"] == made


def test_trace_is_continued(make_shell) -> None:
    seen = make_shell().get("/whoami", headers={"traceparent": TRACEPARENT}).json()
    assert seen["trace_id"] == TRACE_ID
    assert seen["parent_span_id"] == PARENT
    assert len(seen["span_id"]) == 16
    assert seen["span_id"] != PARENT


@pytest.mark.parametrize("bad", ["garbage", f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID}"])
def test_bad_traceparent_starts_a_trace(make_shell, bad: str) -> None:
    response = make_shell().get("/whoami", headers={"traceparent": bad})
    assert response.status_code == 200
    seen = response.json()
    assert seen["trace_id"] != TRACE_ID
    assert len(seen["trace_id"]) == 32
    assert seen["parent_span_id"] is None


def test_deadline_is_visible_to_the_app(make_shell) -> None:
    seen = make_shell().get("/whoami", headers={"mesh-deadline-ms": "5000"}).json()
    assert 4.0 < seen["remaining"] <= 5.0


@pytest.mark.parametrize(
    "headers",
    [
        {"mesh-deadline-ms": "soon"},
        {"mesh-deadline-ms": "-1"},
        {"grpc-timeout": "5 seconds"},
        {"x-envoy-expected-rq-timeout-ms": "0"},
    ],
)
def test_bad_deadline_headers_are_ignored(make_shell, headers: dict[str, str]) -> None:
    response = make_shell().get("/whoami", headers=headers)
    assert response.status_code == 200
    assert response.json()["remaining"] is None


def test_non_ascii_digits_in_deadline_are_ignored_asgi(make_runtime) -> None:
    # httpx's WSGITransport cannot send this byte; test_wsgi.py sends it in the environ.
    from .shells import Shell

    shell = Shell("asgi", make_runtime())
    response = shell.get("/whoami", headers={"mesh-deadline-ms": "\xb2".encode("latin-1")})
    assert response.status_code == 200
    assert response.json()["remaining"] is None


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        ({"mesh-deadline-ms": "0"}, "mesh-deadline-ms: 0"),
        ({"grpc-timeout": "0S"}, "grpc-timeout: 0S"),
    ],
)
def test_expired_deadline_is_a_counted_504(make_shell, headers, shown: str) -> None:
    shell = make_shell()
    response = shell.get("/whoami", headers={**headers, "x-request-id": "late-1"})
    assert response.status_code == 504
    assert response.headers["x-request-id"] == "late-1"
    assert response.json() == {
        "error": "deadline_exceeded",
        "detail": f"the caller's deadline had passed when the request arrived ({shown})",
    }
    assert counted(shell, "GET", "504") == 1


def test_requests_are_counted_by_method_and_status(make_shell) -> None:
    shell = make_shell(service="orders")
    for _ in range(3):
        shell.get("/whoami")
    shell.request("POST", "/status/201")
    shell.get("/status/404")
    assert counted(shell, "GET", "200") == 3
    assert counted(shell, "POST", "201") == 1
    assert counted(shell, "GET", "404") == 1
    duration = shell.runtime.metrics.registry.get_sample_value(
        "mesh_inbound_request_duration_seconds_count", {"service": "orders"}
    )
    assert duration == 5


def test_unknown_methods_share_one_label(make_shell) -> None:
    shell = make_shell()
    shell.request("BREW", "/status/418")
    assert counted(shell, "_OTHER", "418") == 1


def test_made_up_methods_do_not_grow_the_metric_series(make_shell) -> None:
    shell = make_shell()
    for n in range(20):
        shell.request(f"X{n}", "/status/405")
    assert counted(shell, "_OTHER", "405") == 20
    assert 'method="X' not in shell.get("/_mesh/metrics").text


def test_app_exception_is_counted_and_reraised(make_shell) -> None:
    shell = make_shell()
    with pytest.raises(RuntimeError, match="boom from the app"):
        shell.get("/boom")
    assert counted(shell, "GET", "500") == 1


def test_admin_calls_are_not_counted(make_shell) -> None:
    shell = make_shell()
    shell.get("/_mesh/health")
    shell.get("/_mesh/metrics")
    assert "status=" not in "".join(
        line
        for line in shell.get("/_mesh/metrics").text.splitlines()
        if line.startswith("mesh_inbound_requests_total")
    )


def test_each_request_gives_the_config_source_its_refresh_hook(shell_kind, make_runtime) -> None:
    """Serverless mode refreshes policy from requests: both shells call the runtime's hook."""
    from .shells import Shell

    runtime = make_runtime()
    calls: list[None] = []
    runtime.on_request = lambda: calls.append(None)
    shell = Shell(shell_kind, runtime)
    for _ in range(3):
        assert shell.get("/whoami").status_code == 200
    assert len(calls) == 3
