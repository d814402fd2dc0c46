"""What the mesh costs beside the app's own OpenTelemetry instrumentation, per inbound request.

For each instrumentation (contrib ASGI and WSGI middleware, Starlette's
``OpenTelemetryMiddleware``, ``FastAPIInstrumentor``, ``FlaskInstrumentor``,
``DjangoInstrumentor``), the same app is called in-process without the mesh and with it (the
mesh cooperating: the app's span is the request's one SERVER span), and the CPU time per request
is measured with ``time.process_time`` (it does not move with the load of a shared machine the
way wall time does). A real SDK tracer provider is installed, its spans exported synchronously
to an exporter that counts and drops them. Variants alternate round by round; the figures are
medians over rounds. ``mesh only`` is the mesh's own SERVER span with no instrumentation in the
app, against the bare app, for reference.

Before measuring, every pair is checked: status 200, and the same number of spans per request
with and without the mesh (the benchmark fails rather than report otherwise).

    python bench/bench_otel.py [--rounds 7] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import median, write_section
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class CountSpans(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


exporter = CountSpans()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ContribASGI  # noqa: E402
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: E402
from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: E402
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as ContribWSGI  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.middleware.opentelemetry import OpenTelemetryMiddleware as StarletteOTel  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from asgimesh import MeshMiddleware, MeshRuntime, MeshSettings, MeshWSGIMiddleware  # noqa: E402

runtime = MeshRuntime(MeshSettings.from_env(service="bench"))


async def item(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item)])


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


def fastapi_app(mesh: bool) -> Any:
    from asgimesh_fastapi import install
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def fastapi_item(item_id: int) -> PlainTextResponse:
        return PlainTextResponse("ok")

    if mesh:
        install(app, runtime=runtime)
    FastAPIInstrumentor.instrument_app(app)
    return app


def flask_app(mesh: bool) -> Any:
    from asgimesh_flask import Mesh
    from flask import Flask

    app = Flask("bench")
    app.get("/items/<int:item_id>")(lambda item_id: "ok")
    FlaskInstrumentor().instrument_app(app)
    if mesh:
        Mesh(app, runtime=runtime)
    return app


urlpatterns: list[Any] = []


def django_app(mesh: bool) -> Any:
    """Django's WSGI handler with ``DjangoInstrumentor`` (settings made once, in this process)."""
    import django
    from django.conf import settings

    if not settings.configured:
        from django.http import HttpResponse
        from django.urls import path
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            SECRET_KEY="asgimesh-bench-only",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        DjangoInstrumentor().instrument()
        django.setup()
        urlpatterns.append(path("items/<int:item_id>", lambda request, item_id: HttpResponse("ok")))
    if mesh:
        from asgimesh_django import get_wsgi_application as mesh_wsgi

        return mesh_wsgi(runtime=runtime)
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def mesh_asgi(app: Any) -> Any:
    return MeshMiddleware(app, runtime=runtime)


#: name: (kind, without the mesh, with it)
PAIRS: dict[str, tuple[str, Callable[[], Any], Callable[[], Any]]] = {
    "mesh only (its own SERVER span), Starlette": (
        "asgi",
        starlette_app,
        lambda: mesh_asgi(starlette_app()),
    ),
    "contrib ASGI middleware": (
        "asgi",
        lambda: ContribASGI(starlette_app()),
        lambda: mesh_asgi(ContribASGI(starlette_app())),
    ),
    "Starlette's OpenTelemetryMiddleware": (
        "asgi",
        lambda: StarletteOTel(starlette_app()),
        lambda: mesh_asgi(StarletteOTel(starlette_app())),
    ),
    "FastAPIInstrumentor": ("asgi", lambda: fastapi_app(False), lambda: fastapi_app(True)),
    "contrib WSGI middleware": (
        "wsgi",
        lambda: ContribWSGI(wsgi_app),
        lambda: MeshWSGIMiddleware(ContribWSGI(wsgi_app), runtime=runtime),
    ),
    "FlaskInstrumentor": ("wsgi", lambda: flask_app(False), lambda: flask_app(True)),
    "DjangoInstrumentor (WSGI)": ("wsgi", lambda: django_app(False), lambda: django_app(True)),
}


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench.test"), (b"traceparent", TRACEPARENT)],
        "client": ("127.0.0.1", 40000),
        "server": ("bench.test", 80),
    }


def environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items/42",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench.test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench.test",
        "HTTP_TRACEPARENT": TRACEPARENT.decode(),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def asgi_requests(app: Any, count: int) -> tuple[float, int]:
    """CPU seconds for ``count`` requests; the last status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def run() -> float:
        start = time.process_time()
        for _ in range(count):
            await app(scope(), receive, send)
        return time.process_time() - start

    return asyncio.run(run()), status


def wsgi_requests(app: Any, count: int) -> tuple[float, int]:
    import io

    status = ""

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        nonlocal status
        status = line
        return lambda data: None

    start = time.process_time()
    for _ in range(count):
        env = environ()
        env["wsgi.input"] = io.BytesIO(b"")
        body = app(env, start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.process_time() - start, int(status[:3] or 0)


def measure(kind: str, app: Any, count: int) -> tuple[float, int, float]:
    """µs of CPU per request, the status, and spans per request."""
    before = exporter.count
    seconds, status = (asgi_requests if kind == "asgi" else wsgi_requests)(app, count)
    return seconds / count * 1e6, status, (exporter.count - before) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    apps = {name: (kind, plain(), mesh()) for name, (kind, plain, mesh) in PAIRS.items()}
    for name, (kind, plain, mesh) in apps.items():  # check the answers first, and warm up
        _, plain_status, plain_spans = measure(kind, plain, 50)
        _, mesh_status, mesh_spans = measure(kind, mesh, 50)
        if plain_status != 200 or mesh_status != 200:
            sys.exit(f"{name}: status {plain_status} without the mesh, {mesh_status} with it")
        expected = 1.0 if name.startswith("mesh only") else plain_spans
        if name.startswith("mesh only") and plain_spans != 0:
            sys.exit(f"{name}: the bare app made {plain_spans} spans per request")
        if mesh_spans != expected:
            sys.exit(f"{name}: {mesh_spans} spans per request with the mesh, {expected} expected")

    times: dict[str, dict[str, list[float]]] = {n: {"plain": [], "mesh": []} for n in apps}
    for round_ in range(args.rounds):
        for name, (kind, plain, mesh) in apps.items():
            order = (("plain", plain), ("mesh", mesh))
            for variant, app in order if round_ % 2 == 0 else order[::-1]:
                times[name][variant].append(measure(kind, app, args.requests)[0])

    rows = [
        "| instrumentation in the app | without the mesh, µs CPU/request "
        "| with the mesh | the mesh's cost |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, series in times.items():
        plain, mesh = median(series["plain"]), median(series["mesh"])
        rows.append(f"| {name} | {plain:.1f} | {mesh:.1f} | {mesh - plain:+.1f} |")
    table = "\n".join(rows)
    print(table)
    if args.no_write:
        return
    body = (
        "## OpenTelemetry: the mesh beside the app's own instrumentation\n\n"
        "In-process, CPU time per request (`time.process_time`), median of "
        f"{args.rounds} alternating rounds of {args.requests} requests each; a real SDK "
        "provider, spans exported synchronously to an exporter that drops them; each request "
        "carries a `traceparent`. With an instrumentation in the app the mesh makes no span of "
        "its own (checked: the same spans per request with and without it), so its cost is "
        "its usual work (request id, deadline, metrics) plus one look at the current span. "
        "`mesh only` is the mesh's own SERVER span against the bare app.\n\n" + table
    )
    write_section(
        "otel",
        body,
        f"python bench/bench_otel.py --rounds {args.rounds} --requests {args.requests}",
    )


if __name__ == "__main__":
    main()
