"""The app's own OpenTelemetry instrumentation and the mesh: exactly the spans without the mesh.

Each app runs under a real server (uvicorn for ASGI, wsgiref for WSGI, in a thread of this process
so that the spans reach this test's in-memory exporter) and is called over a socket, once without
the mesh and once with it, in each order a user could write. The two span trees must be equal:
count, names, kinds, parents (the remote parent from ``traceparent``) and attributes; and the
mesh's own work (request id, deadline, trace context in ``current_context()``) goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ContribASGI
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as ContribWSGI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware as StarletteOTel
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgimesh import (
    AsyncMeshTransport,
    MeshContext,
    MeshMiddleware,
    MeshRuntime,
    MeshWSGIMiddleware,
    current_context,
)
from asgimesh.telemetry._instrumented import makes_server_spans
from asgimesh.testing import serve_in_thread

from .spantree import by_name, served, tree

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"
HEADERS = {"traceparent": TRACEPARENT, "x-request-id": "req-7", "mesh-deadline-ms": "5000"}

#: The mesh context each request's handler saw (the handlers answer a constant body, so that
#: nothing but the mesh differs between the runs compared).
seen: list[MeshContext | None] = []


async def item(request: Request) -> PlainTextResponse:
    with trace.get_tracer("app").start_as_current_span("work"):
        seen.append(current_context())
    return PlainTextResponse("ok")


def starlette_app(middleware: list[Middleware] | None = None) -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)], middleware=middleware)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    with trace.get_tracer("app").start_as_current_span("work"):
        seen.append(current_context())
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


Build = Callable[[MeshRuntime | None], Any]


def _mesh(runtime: MeshRuntime | None, app: Any) -> Any:
    return app if runtime is None else MeshMiddleware(app, runtime=runtime)


def _stack(runtime: MeshRuntime | None, otel_first: bool) -> Starlette:
    """Both in one Starlette middleware list (the first listed is the outermost)."""
    otel = Middleware(StarletteOTel)
    if runtime is None:
        return starlette_app([otel])
    mesh = Middleware(MeshMiddleware, runtime=runtime)
    return starlette_app([otel, mesh] if otel_first else [mesh, otel])


ASGI: dict[str, Build] = {
    "contrib-asgi inside the mesh": lambda rt: _mesh(rt, ContribASGI(starlette_app())),
    "contrib-asgi outside the mesh": lambda rt: ContribASGI(_mesh(rt, starlette_app())),
    "starlette's inside the mesh": lambda rt: _mesh(rt, StarletteOTel(starlette_app())),
    "starlette's outside the mesh": lambda rt: StarletteOTel(_mesh(rt, starlette_app())),
    "one middleware list, mesh first": lambda rt: _stack(rt, otel_first=False),
    "one middleware list, otel first": lambda rt: _stack(rt, otel_first=True),
}

WSGI: dict[str, Build] = {
    "contrib-wsgi inside the mesh": lambda rt: (
        ContribWSGI(wsgi_app) if rt is None else MeshWSGIMiddleware(ContribWSGI(wsgi_app), runtime=rt)
    ),
    "contrib-wsgi outside the mesh": lambda rt: ContribWSGI(
        wsgi_app if rt is None else MeshWSGIMiddleware(wsgi_app, runtime=rt)
    ),
}


def run(kind: str, app: Any, exporter: Any, headers: dict[str, str]) -> tuple[Any, Any, Any]:
    """One request to ``app`` over a socket: its span tree and the response."""
    exporter.clear()
    seen.clear()
    with served(kind, app) as port:
        response = httpx.get(f"http://127.0.0.1:{port}/items/42?q=1", headers=headers)
    # read once the server has stopped: a span may end just after the response went out
    spans = exporter.get_finished_spans()
    assert response.status_code == 200
    return tree(spans, port), response, spans


CASES = [("asgi", name, build) for name, build in ASGI.items()] + [
    ("wsgi", name, build) for name, build in WSGI.items()
]


@pytest.mark.parametrize(("kind", "name", "build"), CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("incoming", ["traceparent", "none"])
def test_the_apps_spans_are_exactly_those_without_the_mesh(
    kind, name, build, incoming, make_runtime, otel_spans
) -> None:
    headers = HEADERS if incoming == "traceparent" else {}
    without, _, _ = run(kind, build(None), otel_spans, headers)
    assert seen == [None]
    with_mesh, response, spans = run(kind, build(make_runtime(service="web")), otel_spans, headers)
    assert with_mesh == without

    # the tree itself: one SERVER span, the app's "work" under it, the caller's trace continued
    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.instrumentation_scope.name != "asgimesh"
    work = by_name(spans, "work")
    assert work.parent.span_id == server.context.span_id
    if incoming == "traceparent":
        assert f"{server.context.trace_id:032x}" == TRACE_ID
        assert server.parent.is_remote
        assert f"{server.parent.span_id:016x}" == PARENT
    else:
        assert server.parent is None
    if name.startswith("contrib"):
        # the contrib middlewares on a bare app know no route: named by method (and path)
        assert server.name in ("GET", "GET /items/42")
        assert "http.route" not in server.attributes
    else:
        assert server.name == "GET /items/{item_id}"
        assert server.attributes["http.route"] == "/items/{item_id}"

    # the mesh's own work goes on: request id, deadline, and the app's span in the context
    [context] = seen
    assert context is not None
    assert response.headers["x-request-id"] == context.request_id
    if incoming == "traceparent" or "outside" in name or "otel first" in name:
        # the caller's trace, or the span made outside the mesh: the same in both worlds
        # (a trace an instrumentation inside the mesh starts is not known to the mesh)
        assert context.trace_id == f"{server.context.trace_id:032x}"
    if "outside" in name or "otel first" in name:
        assert context.span_id == f"{server.context.span_id:016x}"
    if incoming == "traceparent":
        assert context.request_id == "req-7"
        assert context.deadline is not None
        assert context.parent_span_id == PARENT


def test_without_an_instrumentation_the_mesh_makes_the_server_span(
    make_runtime, otel_spans
) -> None:
    _, _, spans = run("asgi", _mesh(make_runtime(), starlette_app()), otel_spans, HEADERS)
    [server] = [span for span in spans if span.kind is SpanKind.SERVER]
    assert server.instrumentation_scope.name == "asgimesh"
    assert f"{server.parent.span_id:016x}" == PARENT
    assert by_name(spans, "work").parent.span_id == server.context.span_id
    [context] = seen
    assert context is not None and context.span_id == f"{server.context.span_id:016x}"


def test_detection_looks_through_the_chain() -> None:
    plain = starlette_app()
    assert not makes_server_spans(plain)
    assert not makes_server_spans(wsgi_app)
    assert makes_server_spans(ContribASGI(plain))
    assert makes_server_spans(StarletteOTel(plain))
    assert makes_server_spans(ContribWSGI(wsgi_app))
    assert makes_server_spans(starlette_app([Middleware(StarletteOTel)]))
    # through other middleware, a wrapper function, and a bound method's object

    class Wrapper:
        def __init__(self, app: Any) -> None:
            self.app = app

        def __call__(self, *args: Any) -> Any:
            return self.app(*args)

    def wrapped(*args: Any) -> Any:
        return None

    wrapped.__wrapped__ = ContribWSGI(wsgi_app)  # type: ignore[attr-defined]
    assert makes_server_spans(Wrapper(Wrapper(StarletteOTel(plain))))
    assert makes_server_spans(wrapped)
    assert not makes_server_spans(Wrapper(Wrapper(plain)))

    class Instrumented:
        _is_instrumented_by_opentelemetry = True

        def wsgi_app(self, *args: Any) -> Any:
            return None

    assert makes_server_spans(Instrumented().wsgi_app)


def test_detection_is_bounded_and_survives_hostile_objects() -> None:
    class Loop:
        def __init__(self) -> None:
            self.app = self

    class Raises:
        @property
        def app(self) -> Any:
            raise RuntimeError("no")

    class Deep:
        def __init__(self, depth: int) -> None:
            self.app = Deep(depth - 1) if depth else StarletteOTel(starlette_app())

    assert not makes_server_spans(Loop())
    assert not makes_server_spans(Raises())
    assert makes_server_spans(Deep(10))
    assert not makes_server_spans(Deep(200))  # past the bound: the mesh makes its span


#: The runtime the frontend's handler calls the backend with (set by the test).
frontend_runtime: list[MeshRuntime] = []


async def checkout(request: Request) -> PlainTextResponse:
    transport = AsyncMeshTransport(runtime=frontend_runtime[0])
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await client.get("http://backend/items/7")
    return PlainTextResponse(answer.text, status_code=answer.status_code)


def test_one_trace_through_an_instrumented_app_and_its_mesh_call(make_runtime, otel_spans) -> None:
    """frontend (contrib ASGI inside the mesh) -> its mesh CLIENT span -> backend (mesh only)."""
    backend_app = MeshMiddleware(starlette_app(), runtime=make_runtime(service="backend"))
    with serve_in_thread(backend_app) as backend:
        frontend_runtime[:] = [
            make_runtime(service="frontend", upstreams=f"backend=http://127.0.0.1:{backend.config.port}")
        ]
        app = Starlette(routes=[Route("/checkout", checkout)])
        frontend_app = MeshMiddleware(ContribASGI(app), runtime=frontend_runtime[0])
        with serve_in_thread(frontend_app) as frontend:
            response = httpx.get(f"http://127.0.0.1:{frontend.config.port}/checkout", headers=HEADERS)
    assert response.status_code == 200
    spans = otel_spans.get_finished_spans()
    assert {f"{span.context.trace_id:032x}" for span in spans} == {TRACE_ID}
    servers = {
        span.instrumentation_scope.name: span for span in spans if span.kind is SpanKind.SERVER
    }
    front = servers["opentelemetry.instrumentation.asgi"]
    back = servers["asgimesh"]
    [client] = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert f"{front.parent.span_id:016x}" == PARENT
    assert client.instrumentation_scope.name == "asgimesh"
    assert client.parent.span_id == front.context.span_id
    assert back.parent.span_id == client.context.span_id
    assert by_name(spans, "work").parent.span_id == back.context.span_id


def test_a_request_the_outer_instrumentation_sampled_out_gets_no_mesh_span(
    make_runtime, otel_spans
) -> None:
    """The outer span is current but not recording: the request is not to be traced, so the
    mesh starts no span of its own either (the app's, under an unsampled parent, are dropped)."""
    off = TracerProvider(sampler=ALWAYS_OFF)

    def build(runtime: MeshRuntime | None) -> Any:
        return ContribASGI(_mesh(runtime, starlette_app()), tracer_provider=off)

    without, _, _ = run("asgi", build(None), otel_spans, HEADERS)
    with_mesh, response, _ = run("asgi", build(make_runtime()), otel_spans, HEADERS)
    assert with_mesh == without == []
    [context] = seen
    assert context is not None and context.trace_id == TRACE_ID
    assert response.headers["x-request-id"] == "req-7"
