"""Outbound CLIENT spans: one per try, with the endpoint, the answer and the mesh's decisions, and
no duplicate beside ``opentelemetry-instrumentation-httpx``.

The upstream is a real uvicorn server (in a thread, see :func:`asgimesh.testing.serve_in_thread`)
that answers 503 to the first try of each request id and records the ``traceparent`` of every try.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgimesh import AsyncMeshTransport, MeshTransport, RetryBudgetExhausted
from asgimesh.telemetry import ClientSpans
from asgimesh.testing import serve_in_thread

from ..conftest import free_port as free_tcp_port

tries: Counter[str] = Counter()
received: list[str] = []


async def flaky(request: Request) -> PlainTextResponse:
    """503 to the first try of each ``x-request-id``, then 200."""
    received.append(request.headers.get("traceparent", ""))
    key = request.headers.get("x-test-key", "")
    tries[key] += 1
    return PlainTextResponse("ok", status_code=503 if tries[key] == 1 else 200)


async def slow_first(request: Request) -> PlainTextResponse:
    """The first try of each ``x-test-key`` answers after 500 ms, the others at once."""
    received.append(request.headers.get("traceparent", ""))
    key = request.headers.get("x-test-key", "")
    tries[key] += 1
    if tries[key] == 1:
        await anyio.sleep(0.5)
    return PlainTextResponse("ok")


ROUTES = [Route("/flaky", flaky), Route("/slow-first", slow_first)]


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_in_thread(Starlette(routes=ROUTES)) as server:
        yield f"http://127.0.0.1:{server.config.port}"


@pytest.fixture(scope="module")
def twin() -> Iterator[str]:
    """A second server of the same app: a hedge goes to another endpoint."""
    with serve_in_thread(Starlette(routes=ROUTES)) as server:
        yield f"http://127.0.0.1:{server.config.port}"


@pytest.fixture
def client(upstream, make_runtime) -> Iterator[httpx.Client]:
    received.clear()
    runtime = make_runtime(service="web", upstreams=f"flaky={upstream}")
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http:
        yield http


def _ids(span: Any) -> str:
    ids = span.context
    return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"


def _client_spans(exporter: Any) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]


def test_one_client_span_per_try_with_the_retry_as_an_event(client, upstream, otel_spans) -> None:
    with trace.get_tracer("app").start_as_current_span("checkout") as parent:
        response = client.get("http://flaky/flaky?x=1", headers={"x-test-key": "one"})
    assert response.status_code == 200
    first, second = _client_spans(otel_spans)
    port = int(upstream.rsplit(":", 1)[1])
    for span in (first, second):
        assert span.name == "GET"
        assert span.instrumentation_scope.name == "asgimesh"
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == port
        assert span.attributes["url.full"] == f"{upstream}/flaky?x=1"
        assert span.attributes["mesh.upstream"] == "flaky"
    assert "http.request.resend_count" not in first.attributes
    assert second.attributes["http.request.resend_count"] == 1
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    [retry] = first.events
    assert retry.name == "mesh.retry"
    assert retry.attributes["mesh.retry.reason"] == "503"
    assert retry.attributes["mesh.retry.backoff_s"] >= 0
    assert not second.events
    # each try's traceparent names that try's span
    assert received == [_ids(first), _ids(second)]


def test_a_refused_connection_is_the_spans_error(make_runtime, otel_spans) -> None:
    free_port = free_tcp_port()
    runtime = make_runtime(
        service="web", upstreams=f"gone=http://user:secret@127.0.0.1:{free_port}", retries="0"
    )
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http, pytest.raises(
        httpx.ConnectError
    ):
        http.get("http://gone/x")
    [span] = _client_spans(otel_spans)
    assert span.attributes["error.type"] == "ConnectError"
    assert span.status.status_code is StatusCode.ERROR
    assert "secret" not in span.attributes["url.full"]
    assert span.attributes["url.full"] == f"http://127.0.0.1:{free_port}/x"
    assert span.parent is None  # no current span, no inbound request: a trace of its own


def test_global_httpx_instrumentation_makes_no_second_span(client, otel_spans) -> None:
    HTTPXClientInstrumentor().instrument()
    try:
        client.get("http://flaky/flaky", headers={"x-test-key": "global"})
    finally:
        HTTPXClientInstrumentor().uninstrument()
    spans = _client_spans(otel_spans)
    assert [span.instrumentation_scope.name for span in spans] == ["asgimesh", "asgimesh"]
    assert received == [_ids(span) for span in spans]


def test_an_instrumented_client_keeps_its_span_and_gets_the_mesh_events(
    client, otel_spans
) -> None:
    HTTPXClientInstrumentor.instrument_client(client)
    try:
        response = client.get("http://flaky/flaky", headers={"x-test-key": "client"})
    finally:
        HTTPXClientInstrumentor.uninstrument_client(client)
    assert response.status_code == 200
    [span] = _client_spans(otel_spans)
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.httpx"
    assert [event.name for event in span.events] == ["mesh.retry"]
    # both tries carry the instrumentation's span: it is the call's one CLIENT span
    assert received == [_ids(span), _ids(span)]


def test_no_spans_without_a_provider(client) -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another part of this process installed a tracer provider")
    client.get("http://flaky/flaky", headers={"x-test-key": "none"})
    # no inbound request, no tracing: the tries carry no trace context at all
    assert received == ["", ""]


def test_the_gate_is_one_comparison_until_a_provider_is_installed() -> None:
    from .conftest import installed_provider

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("another part of this process installed a tracer provider")
    spans = ClientSpans()
    assert spans.tracer(100.0) is None
    assert spans.next_check == 101.0  # a try before then skips the span code entirely
    with installed_provider():
        assert spans.tracer(101.0) is not None
        assert spans.next_check == float("-inf")  # every try goes in


async def always_503(request: Request) -> PlainTextResponse:
    received.append(request.headers.get("traceparent", ""))
    return PlainTextResponse("no", status_code=503)


@pytest.fixture(scope="module")
def failing() -> Iterator[str]:
    with serve_in_thread(Starlette(routes=[Route("/x", always_503)])) as server:
        yield f"http://127.0.0.1:{server.config.port}"


def _runtime(make_runtime: Any, service: dict[str, Any]) -> Any:
    return make_runtime(service="web", policy=json.dumps({"services": {"up": service}}))


def test_budget_refusal_and_ejection_are_events(failing, make_runtime, otel_spans) -> None:
    received.clear()
    runtime = _runtime(
        make_runtime,
        {
            "endpoints": [failing],
            "retries": {"budget": {"ratio": 0, "min_per_second": 0}},
            "outlier_detection": {"consecutive_failures": 1, "max_ejection_percent": 100},
        },
    )
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http:
        assert http.get("http://up/x").status_code == 503
    [span] = _client_spans(otel_spans)
    assert span.attributes["http.response.status_code"] == 503
    assert [event.name for event in span.events] == [
        "mesh.retry_budget_exhausted",
        "mesh.endpoint_ejected",
    ]
    assert span.events[0].attributes["mesh.retry.reason"] == "503"
    assert span.events[1].attributes["mesh.endpoint"] == failing
    assert received == [_ids(span)]


def test_an_injected_fault_is_a_span_with_its_events(failing, make_runtime, otel_spans) -> None:
    received.clear()
    fault = {"abort": {"percent": 100, "status": 418}, "delay": {"percent": 100, "duration": "5ms"}}
    runtime = _runtime(make_runtime, {"endpoints": [failing], "fault": fault})
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http:
        assert http.post("http://up/x", content=b"{}").status_code == 418
    [span] = _client_spans(otel_spans)
    assert span.name == "POST"
    assert span.attributes["http.response.status_code"] == 418
    assert span.attributes["error.type"] == "418"
    assert [event.name for event in span.events] == ["mesh.fault.delay", "mesh.fault.abort"]
    assert span.events[0].attributes["mesh.fault.delay_s"] == pytest.approx(0.005)
    assert received == []  # nothing was sent


def test_a_refusal_ends_the_call_with_an_event(make_runtime, otel_spans) -> None:
    gone = f"http://127.0.0.1:{free_tcp_port()}"
    runtime = _runtime(
        make_runtime, {"endpoints": [gone], "retries": {"budget": {"ratio": 0, "min_per_second": 0}}}
    )
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http, pytest.raises(
        RetryBudgetExhausted
    ):
        http.get("http://up/x")
    [span] = _client_spans(otel_spans)
    assert span.attributes["error.type"] == "ConnectError"
    names = [event.name for event in span.events]
    assert names == ["mesh.retry_budget_exhausted", "mesh.refused"]
    assert span.events[1].attributes["mesh.refusal"] == "budget"


@pytest.mark.anyio
async def test_async_tries_have_their_spans_too(upstream, make_runtime, otel_spans) -> None:
    received.clear()
    runtime = make_runtime(service="web", upstreams=f"flaky={upstream}")
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=runtime)) as http:
        with trace.get_tracer("app").start_as_current_span("checkout") as parent:
            response = await http.get("http://flaky/flaky", headers={"x-test-key": f"a{id(http)}"})
        # the try's span is no longer current once the call returned
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert response.status_code == 200
    first, second = _client_spans(otel_spans)
    assert [span.parent.span_id for span in (first, second)] == [parent.get_span_context().span_id] * 2
    assert second.attributes["http.request.resend_count"] == 1
    assert [event.name for event in first.events] == ["mesh.retry"]
    assert received == [_ids(first), _ids(second)]


def _hedged_runtime(make_runtime: Any, urls: list[str]) -> Any:
    service = {"endpoints": urls, "load_balancer": "round_robin", "hedge": {"delay": "20ms"}}
    return _runtime(make_runtime, service)


def _race_spans(exporter: Any) -> tuple[Any, Any]:
    """The loser's and the hedge's spans (a sync loser's span ends when its thread does)."""
    deadline = time.monotonic() + 5
    while len(_client_spans(exporter)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    spans = _client_spans(exporter)
    assert len(spans) == 2, spans
    hedge = next(span for span in spans if span.attributes.get("http.request.resend_count"))
    lost = next(span for span in spans if span is not hedge)
    return lost, hedge


def _check_race(lost: Any, hedge: Any, parent: Any) -> None:
    assert [event.name for event in hedge.events] == ["mesh.hedge"]
    assert hedge.events[0].attributes["mesh.hedge.delay_s"] == pytest.approx(0.02)
    assert hedge.attributes["http.response.status_code"] == 200
    assert [event.name for event in lost.events] == ["mesh.hedge.lost"]
    assert "error.type" not in lost.attributes  # losing is not an error
    assert lost.attributes["server.port"] != hedge.attributes["server.port"]
    assert {span.parent.span_id for span in (lost, hedge)} == {parent.get_span_context().span_id}
    assert sorted(received) == sorted([_ids(lost), _ids(hedge)])


def test_a_hedge_and_its_loser_have_their_spans(upstream, twin, make_runtime, otel_spans) -> None:
    received.clear()
    runtime = _hedged_runtime(make_runtime, [upstream, twin])
    with httpx.Client(transport=MeshTransport(runtime=runtime)) as http:
        with trace.get_tracer("app").start_as_current_span("checkout") as parent:
            response = http.get("http://up/slow-first", headers={"x-test-key": "hedge-sync"})
        assert response.status_code == 200
        lost, hedge = _race_spans(otel_spans)
    _check_race(lost, hedge, parent)


@pytest.mark.anyio
async def test_async_hedge_spans(upstream, twin, make_runtime, otel_spans) -> None:
    received.clear()
    runtime = _hedged_runtime(make_runtime, [upstream, twin])
    async with httpx.AsyncClient(transport=AsyncMeshTransport(runtime=runtime)) as http:
        with trace.get_tracer("app").start_as_current_span("checkout") as parent:
            response = await http.get(
                "http://up/slow-first", headers={"x-test-key": f"hedge-{id(http)}"}
            )
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert response.status_code == 200
    lost, hedge = _race_spans(otel_spans)  # the loser was cancelled: its span ended at once
    _check_race(lost, hedge, parent)
