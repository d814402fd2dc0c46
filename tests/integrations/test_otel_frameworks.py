"""FastAPI, Flask and Django instrumented by OpenTelemetry's instrumentors, with the mesh plugins:
each request yields exactly the spans it yields without the mesh, in either order of setup.

FastAPI (uvicorn) and Flask (wsgiref) are served in a thread of this process, so that their spans
reach the in-memory exporter; Django (settings and ``DjangoInstrumentor`` are per process) runs
in a process of its own (``tests/integrations/django_otel.py``), which prints its span trees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from flask import Flask
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.trace import SpanKind

from asgimesh import MeshContext, MeshRuntime, current_context

from ..conftest import subprocess_env
from ..inbound import shells
from ..telemetry import conftest as telemetry_fixtures
from ..telemetry.spantree import by_name, served, tree

#: The fixtures of tests/inbound and tests/telemetry, used here too.
make_runtime = shells.make_runtime
otel_spans = telemetry_fixtures.otel_spans

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HEADERS = {
    "traceparent": f"00-{TRACE_ID}-{PARENT}-01",
    "x-request-id": "req-7",
    "mesh-deadline-ms": "5000",
}

seen: list[MeshContext | None] = []


def fastapi_app(runtime: MeshRuntime | None, instrument_first: bool) -> FastAPI:
    from asgimesh_fastapi import install

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> PlainTextResponse:
        with trace.get_tracer("app").start_as_current_span("work"):
            seen.append(current_context())
        return PlainTextResponse("ok")

    if instrument_first:
        FastAPIInstrumentor.instrument_app(app)
    if runtime is not None:
        install(app, runtime=runtime)
    if not instrument_first:
        FastAPIInstrumentor.instrument_app(app)
    return app


def flask_app(runtime: MeshRuntime | None, instrument_first: bool) -> Any:
    from asgimesh_flask import Mesh

    app = Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        with trace.get_tracer("app").start_as_current_span("work"):
            seen.append(current_context())
        return "ok"

    if instrument_first:
        FlaskInstrumentor().instrument_app(app)
    if runtime is not None:
        Mesh(app, runtime=runtime)
    if not instrument_first:
        FlaskInstrumentor().instrument_app(app)
    return app


FRAMEWORKS: dict[str, tuple[str, Callable[..., Any], str]] = {
    "fastapi": ("asgi", fastapi_app, "/items/{item_id}"),
    "flask": ("wsgi", flask_app, "/items/<int:item_id>"),
}


def run(kind: str, app: Any, exporter: Any, headers: dict[str, str]) -> tuple[Any, Any, Any]:
    exporter.clear()
    seen.clear()
    with served(kind, app) as port:
        response = httpx.get(f"http://127.0.0.1:{port}/items/42?q=1", headers=headers)
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    return tree(spans, port), response, spans


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("order", ["instrumented first", "mesh first"])
@pytest.mark.parametrize("incoming", ["traceparent", "none"])
def test_instrumented_framework_spans_are_those_without_the_mesh(
    framework, order, incoming, make_runtime, otel_spans
) -> None:
    kind, make, route = FRAMEWORKS[framework]
    first = order == "instrumented first"
    headers = HEADERS if incoming == "traceparent" else {}
    without, _, _ = run(kind, make(None, first), otel_spans, headers)
    with_mesh, response, spans = run(kind, make(make_runtime(service="web"), first), otel_spans, headers)
    assert with_mesh == without

    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.instrumentation_scope.name.startswith("opentelemetry.instrumentation.")
    assert server.name == f"GET {route}"
    assert server.attributes["http.route"] == route
    assert by_name(spans, "work").parent.span_id == server.context.span_id
    if incoming == "traceparent":
        assert f"{server.context.trace_id:032x}" == TRACE_ID
        assert f"{server.parent.span_id:016x}" == PARENT
    else:
        assert server.parent is None
    [context] = seen
    assert context is not None
    assert response.headers["x-request-id"] == context.request_id
    if incoming == "traceparent":
        assert context.request_id == "req-7"
        assert context.deadline is not None
        assert context.trace_id == TRACE_ID


@pytest.fixture(scope="module")
def django_runs() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integrations.django_otel"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_instrumented_django_spans_are_those_without_the_mesh(kind, django_runs) -> None:
    plain, mesh = django_runs[kind]["plain"], django_runs[kind]["mesh"]
    assert [run["tree"] for run in mesh] == [run["tree"] for run in plain]
    continued, started = mesh
    servers = [node for node in continued["tree"] if node[1] == "SERVER"]
    assert len(servers) == 1
    name, _, parent, attributes = servers[0]
    assert name == "GET items/<int:item_id>"
    assert attributes["http.route"] == "items/<int:item_id>"
    assert parent == f"remote:{PARENT}"
    [work] = [node for node in continued["tree"] if node[0] == "work"]
    assert continued["tree"][work[2]][1] == "SERVER"
    assert continued["seen"] == {
        "trace_id": TRACE_ID,
        "request_id": "req-7",
        "has_deadline": True,
        "otel_trace_id": TRACE_ID,
    }
    assert continued["request_id"] == "req-7"
    assert [node[2] for node in started["tree"] if node[1] == "SERVER"] == [None]
    assert started["request_id"] == started["seen"]["request_id"]
    assert all(run["seen"] is None for run in plain)
