"""Inbound telemetry for both shells: metrics values, the access log, OpenTelemetry SERVER spans."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from asgimesh import MeshMiddleware, MeshWSGIMiddleware, current_context
from asgimesh.telemetry import environ_attributes, scope_attributes
from asgimesh.telemetry._otel import ServerSpans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


def sample(shell, name: str, **labels: str) -> float | None:
    return shell.runtime.metrics.registry.get_sample_value(
        name, {"service": shell.runtime.settings.service, **labels}
    )


# ---- metrics ----------------------------------------------------------------------------------


def test_duration_histogram_counts_every_request(make_shell) -> None:
    shell = make_shell(service="orders")
    shell.get("/whoami")
    shell.get("/status/503")
    shell.get("/whoami", headers={"mesh-deadline-ms": "0"})
    assert sample(shell, "mesh_inbound_request_duration_seconds_count") == 3
    total = sample(shell, "mesh_inbound_request_duration_seconds_sum")
    assert total is not None
    assert 0 < total < 5
    assert sample(shell, "mesh_inbound_request_duration_seconds_bucket", le="+Inf") == 3
    assert sample(shell, "mesh_inbound_requests_total", method="GET", status="503") == 1
    assert sample(shell, "mesh_inbound_requests_total", method="GET", status="504") == 1


# ---- access log -------------------------------------------------------------------------------


def test_access_log_is_off_by_default(make_shell) -> None:
    shell = make_shell()
    with capture_logs() as logs:
        shell.get("/whoami")
    assert [e for e in logs if e["event"] == "request"] == []


def test_access_log_has_one_event_per_request(make_shell) -> None:
    shell = make_shell(access_log=True)
    with capture_logs() as logs:
        shell.get("/whoami", headers={"traceparent": TRACEPARENT, "x-request-id": "req-5"})
        shell.request("POST", "/status/201", client="10.9.8.7")
        shell.get("/_mesh/health")  # admin calls are not logged
    events = [e for e in logs if e["event"] == "request"]
    assert len(events) == 2
    first, second = events
    duration = first.pop("duration_ms")
    assert 0 <= duration < 5000
    span_id = first.pop("span_id")
    assert len(span_id) == 16
    assert first == {
        "event": "request",
        "log_level": "info",
        "trace_id": TRACE_ID,
        "request_id": "req-5",
        "method": "GET",
        "path": "/whoami",
        "status": 200,
        "caller": None,
        "client": "127.0.0.1",
    }
    assert second["method"] == "POST"
    assert second["status"] == 201
    assert second["client"] == "10.9.8.7"
    assert len(second["request_id"]) == 32


def test_access_log_records_504_and_crash(make_shell) -> None:
    shell = make_shell(access_log=True)
    with capture_logs() as logs:
        shell.get("/whoami", headers={"mesh-deadline-ms": "0"})
        with pytest.raises(RuntimeError):
            shell.get("/boom")
    statuses = [(e["path"], e["status"]) for e in logs if e["event"] == "request"]
    assert statuses == [("/whoami", 504), ("/boom", 500)]
    [crash] = [e for e in logs if e["event"] == "app_error"]
    assert (crash["error_type"], crash["message"]) == ("RuntimeError", "boom from the app")
    # The route template where the framework tells (Starlette puts it in the ASGI scope).
    where = "route" if shell.kind == "asgi" else "path"
    assert (crash["method"], crash[where], crash["status"]) == ("GET", "/boom", 500)
    # One line, never a traceback: the server prints the re-raised exception's own.
    assert "exc_info" not in crash and "exception" not in crash


# ---- OpenTelemetry ----------------------------------------------------------------------------


def test_no_provider_means_no_tracer() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another part of this process installed a tracer provider")
    assert ServerSpans().tracer(0.0) is None


def test_a_provider_installed_later_is_used_within_a_second() -> None:
    from .conftest import installed_provider

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another part of this process installed a tracer provider")
    spans = ServerSpans()
    assert spans.tracer(100.0) is None
    with installed_provider():
        assert spans.tracer(100.5) is None  # not looked up again yet: one comparison
        assert spans.tracer(101.0) is not None


def test_server_span_continues_the_callers_trace(make_shell, otel_spans) -> None:
    shell = make_shell()
    response = shell.get(
        "/whoami?x=1",
        headers={"traceparent": TRACEPARENT, "tracestate": "rojo=1", "user-agent": "probe/1.0"},
    )
    seen = response.json()
    [span] = otel_spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "GET"
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert f"{span.parent.span_id:016x}" == PARENT
    assert span.parent.is_remote
    # the span the exporter has is the one the app (and its outbound calls) sees
    assert seen["span_id"] == f"{span.context.span_id:016x}"
    assert seen["trace_id"] == TRACE_ID
    attributes = dict(span.attributes)
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/whoami"
    assert attributes["url.query"] == "x=1"
    assert attributes["url.scheme"] == "http"
    assert attributes["server.address"] == "mesh.test"
    assert attributes["client.address"] == "127.0.0.1"
    assert attributes["user_agent.original"] == "probe/1.0"
    assert attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.UNSET
    assert span.context.trace_state.get("rojo") == "1"


def test_server_span_starts_a_trace_when_none_came(make_shell, otel_spans) -> None:
    seen = make_shell().get("/whoami", headers={"traceparent": "junk"}).json()
    [span] = otel_spans.get_finished_spans()
    assert span.parent is None
    assert seen["trace_id"] == f"{span.context.trace_id:032x}"
    assert seen["parent_span_id"] is None


def test_server_errors_mark_the_span(make_shell, otel_spans) -> None:
    shell = make_shell()
    shell.get("/status/503")
    with pytest.raises(RuntimeError):
        shell.get("/boom")
    unavailable, crash = otel_spans.get_finished_spans()
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.attributes["error.type"] == "503"
    assert crash.status.status_code is StatusCode.ERROR
    assert crash.attributes["error.type"] == "RuntimeError"
    assert crash.attributes["http.response.status_code"] == 500
    assert crash.events[0].name == "exception"


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        ("mesh.test:8080", "mesh.test", 8080),
        ("[::1]:80", "[::1]", 80),
        # The caller's Host header: a port that is none stays in the address, never a 500
        # (found by tests/inbound/test_fuzz.py: "²" passes str.isdigit(), not int()).
        ("a:\u00b2", "a:\u00b2", None),
        ("a:\u00b9\u00b2", "a:\u00b9\u00b2", None),
        ("a:99999999999999999999", "a:99999999999999999999", None),
        ("a:65536", "a:65536", None),
        (":80", ":80", None),
        ("a:-1", "a:-1", None),
    ],
)
def test_the_span_reads_any_host_header(host, address, port) -> None:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [
        (b"host", host.encode("latin-1"))]}  # fmt: skip
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": host}  # latin-1, as PEP 3333
    for attributes in (scope_attributes(scope), environ_attributes(environ)):
        assert attributes["server.address"] == address
        assert attributes.get("server.port") == port


def test_client_errors_do_not_mark_a_server_span(make_shell, otel_spans) -> None:
    make_shell().get("/status/404")
    [span] = otel_spans.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in span.attributes


def test_app_spans_nest_under_the_server_span_asgi(make_runtime, otel_spans) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        with trace.get_tracer("app").start_as_current_span("work"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def call() -> None:
        transport = httpx.ASGITransport(app=MeshMiddleware(app, runtime=make_runtime()))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/", headers={"traceparent": TRACEPARENT})

    anyio.run(call)
    work, server = otel_spans.get_finished_spans()
    assert work.name == "work"
    assert work.parent.span_id == server.context.span_id
    assert work.context.trace_id == int(TRACE_ID, 16)


def test_app_spans_nest_under_the_server_span_wsgi(make_runtime, otel_spans) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        with trace.get_tracer("app").start_as_current_span("work"):
            context = current_context()
            start_response("200 OK", [])
            return [context.span_id.encode() if context else b""]

    transport = httpx.WSGITransport(app=MeshWSGIMiddleware(app, runtime=make_runtime()))
    with httpx.Client(transport=transport, base_url="http://t") as client:
        body = client.get("/", headers={"traceparent": TRACEPARENT}).text
    work, server = otel_spans.get_finished_spans()
    assert work.parent.span_id == server.context.span_id
    assert body == f"{server.context.span_id:016x}"
    assert server.attributes["network.protocol.version"] == "1.1"
