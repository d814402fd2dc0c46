"""Django with ``DjangoInstrumentor``, without and with the mesh plugin: prints the span trees.

Run as ``python -m tests.integrations.django_otel`` (Django's settings and the instrumentor are
per process, so the test runs this in a process of its own). For WSGI (wsgiref) and ASGI
(uvicorn), each served on a loopback port, one request with a ``traceparent`` and one without;
the output is one JSON object: ``{"wsgi": {"plain": ..., "mesh": ...}, "asgi": ...}``, each a list
of runs, each run ``{"tree": [...], "seen": {...}, "request_id": ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import django
import httpx
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgimesh import MeshRuntime, MeshSettings, current_context
from tests.telemetry.spantree import served, tree

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="asgimesh-test-only",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
DjangoInstrumentor().instrument()
django.setup()

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
seen: list[dict[str, Any] | None] = []


def item(request: Any, item_id: int) -> HttpResponse:
    with trace.get_tracer("app").start_as_current_span("work"):
        context = current_context()
        span = trace.get_current_span().get_span_context()
        seen.append(
            None
            if context is None
            else {
                "trace_id": context.trace_id,
                "request_id": context.request_id,
                "has_deadline": context.deadline is not None,
                "otel_trace_id": f"{span.trace_id:032x}",
            }
        )
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [path("items/<int:item_id>", item)]


def build(kind: str, mesh: bool) -> Any:
    runtime = MeshRuntime(MeshSettings.from_env(service="web")) if mesh else None
    if kind == "wsgi":
        if runtime is None:
            from django.core.wsgi import get_wsgi_application

            return get_wsgi_application()
        from asgimesh_django import get_wsgi_application as mesh_wsgi

        return mesh_wsgi(runtime=runtime)
    if runtime is None:
        from django.core.asgi import get_asgi_application

        return get_asgi_application()
    from asgimesh_django import get_asgi_application as mesh_asgi

    return mesh_asgi(runtime=runtime)


def with_lifespan(app: Any) -> Any:
    """Django's ASGI app does not speak ``lifespan``; uvicorn's test server asks for it."""

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return None

    return serve


def runs(kind: str, mesh: bool) -> list[dict[str, Any]]:
    out = []
    for headers in (
        {"traceparent": TRACEPARENT, "x-request-id": "req-7", "mesh-deadline-ms": "5000"},
        {},
    ):
        exporter.clear()
        seen.clear()
        app = build(kind, mesh)
        with served(kind, app if kind == "wsgi" else with_lifespan(app)) as port:
            response = httpx.get(f"http://127.0.0.1:{port}/items/42?q=1", headers=headers)
        assert response.status_code == 200, response.text
        out.append(
            {
                "tree": tree(exporter.get_finished_spans(), port),
                "seen": seen[0],
                "request_id": response.headers.get("x-request-id"),
            }
        )
    return out


def main() -> None:
    result = {
        kind: {"plain": runs(kind, False), "mesh": runs(kind, True)} for kind in ("wsgi", "asgi")
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
