"""OpenTelemetry SERVER spans for inbound requests, only where a real tracer provider is set.

``opentelemetry-api`` is optional. Without it, or while the global tracer provider is the API's
no-op/proxy provider, :meth:`ServerSpans.tracer` answers ``None`` after one comparison and
nothing else happens per request. Once an SDK provider is installed (it
can only be installed once per process), the tracer is cached.

The span continues the caller's trace and *is* the request's server span: its ids replace those
the core made in the :class:`~asgimesh.MeshContext`, so the ``traceparent`` that outbound calls
send names a span the exporter really exports.

Where the app has OpenTelemetry instrumentation of its own, the request gets exactly the spans it
gets without the mesh: one instrumentation *outside* the mesh has made the SERVER span before the
mesh is called (the mesh takes that span's ids into the context and starts none); one *inside*
(:func:`~asgimesh.telemetry._instrumented.makes_server_spans`, looked up once) makes it after, from
the same ``traceparent``, so the mesh starts none and leaves the OpenTelemetry context alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..__version__ import __version__
from .._context import MeshContext
from .._wire import HTTP_METHODS
from ._instrumented import makes_server_spans

__all__ = ["ServerSpans", "SpanScope", "TracerGate"]

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        TraceState,
    )
except ImportError:  # pragma: no cover - exercised only without the optional dependency
    trace = None  # type: ignore[assignment]

#: (span, token of the attached OTel context) for one request.
SpanScope = tuple[Any, Any]

_Source = TypeVar("_Source")


class TracerGate:
    """The ``asgimesh`` tracer once a real provider is installed; ``None`` until then, cheaply."""

    #: Seconds between looks at the global provider while it is the no-op one.
    RECHECK = 1.0

    def __init__(self) -> None:
        self._tracer: Any = None
        #: ``now`` from which :meth:`tracer` may answer a tracer: minus infinity once it has
        #: one, else the next look at the provider. A hot path that sees ``now`` below it knows
        #: tracing is off without a call.
        self.next_check = float("-inf")

    def tracer(self, now: float) -> Any:
        """The tracer, or ``None`` while tracing is off (the common, cheap case).

        While no real provider is installed this costs one comparison: the global provider is
        looked up again only every :attr:`RECHECK` seconds (``now`` is ``time.monotonic``), so a
        provider installed after start-up (in a lifespan handler, say) is used within a second.
        """
        tracer = self._tracer
        if tracer is not None or now < self.next_check:
            return tracer
        self.next_check = now + self.RECHECK
        if trace is None:
            return None
        provider = trace.get_tracer_provider()
        if isinstance(provider, NoOpTracerProvider | ProxyTracerProvider):
            return None
        self._tracer = tracer = provider.get_tracer("asgimesh", __version__)
        self.next_check = float("-inf")
        return tracer


class ServerSpans(TracerGate):
    """Starts and ends the SERVER span of each request while a real provider is configured,
    unless the app's own instrumentation makes it (``app``: what the middleware wraps)."""

    def __init__(self, app: Any = None) -> None:
        super().__init__()
        self._app = app
        #: Whether ``app`` makes its own SERVER spans: looked up at the first traced request
        #: (an instrumentor may be applied to the app after the mesh wrapped it).
        self._app_traces: bool | None = None

    def start(
        self,
        tracer: Any,
        context: MeshContext,
        method: str,
        attributes: Callable[[_Source], dict[str, Any]],
        source: _Source,
    ) -> SpanScope | None:
        """Start the span as a child of the caller's, take its ids into ``context`` and make it
        the current OTel span for the app (so the app's own spans nest under it); its
        attributes are ``attributes(source)`` (the scope's or environ's).

        ``None``, no span: an instrumentation outside the mesh made the request's SERVER span
        (it is current; ``context`` takes its ids), or one inside the app will make it.
        """
        current = trace.get_current_span()
        ids = current.get_span_context()
        if (
            ids.is_valid
            and not ids.is_remote
            and (not current.is_recording() or getattr(current, "kind", None) is SpanKind.SERVER)
        ):
            context.trace_id = f"{ids.trace_id:032x}"
            context.span_id = f"{ids.span_id:016x}"
            context.trace_flags = f"{int(ids.trace_flags):02x}"
            return None
        app_traces = self._app_traces
        if app_traces is None:
            app_traces = self._app_traces = makes_server_spans(self._app)
        if app_traces:
            return None
        if context.parent_span_id is not None:
            parent = SpanContext(
                int(context.trace_id, 16),
                int(context.parent_span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(context.trace_flags, 16)),
                trace_state=TraceState.from_header([context.tracestate])
                if context.tracestate
                else None,
            )
            parent_context = trace.set_span_in_context(NonRecordingSpan(parent))
        else:
            # An empty context: a trace the caller did not start must not nest under whatever
            # span happens to be current in the server.
            parent_context = otel_context.Context()
        span = tracer.start_span(
            method, context=parent_context, kind=SpanKind.SERVER, attributes=attributes(source)
        )
        ids = span.get_span_context()
        if ids.is_valid:
            context.trace_id = f"{ids.trace_id:032x}"
            context.span_id = f"{ids.span_id:016x}"
            context.trace_flags = f"{int(ids.trace_flags):02x}"
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def detach(scope: SpanScope) -> None:
        """Stop making the span current (in the context it was attached in)."""
        otel_context.detach(scope[1])

    @staticmethod
    def end(scope: SpanScope, status: int, error: BaseException | None) -> None:
        span = scope[0]
        span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.record_exception(error)
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif status >= 500:
            # Semantic conventions: for SERVER spans only 5xx is an error.
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def _method_attributes(method: str, attributes: dict[str, Any]) -> None:
    if method in HTTP_METHODS:
        attributes["http.request.method"] = method
    else:
        attributes["http.request.method"] = "_OTHER"
        attributes["http.request.method_original"] = method


def scope_attributes(scope: Any) -> dict[str, Any]:
    """Semantic-convention request attributes of an ASGI ``http`` scope."""
    attributes: dict[str, Any] = {
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    _method_attributes(scope["method"], attributes)
    query = scope.get("query_string")
    if query:
        attributes["url.query"] = query.decode("latin-1")
    host = None
    for name, value in scope.get("headers", ()):
        if name == b"host" and host is None:
            host = value.decode("latin-1")
        elif name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    _server_attributes(host, scope.get("server"), attributes)
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        if len(client) > 1 and client[1]:
            attributes["client.port"] = int(client[1])
    return attributes


def environ_attributes(environ: Any) -> dict[str, Any]:
    """Semantic-convention request attributes of a WSGI ``environ``."""
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    attributes: dict[str, Any] = {
        "url.scheme": environ.get("wsgi.url_scheme", "http"),
        "url.path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") or "/",
        "network.protocol.version": protocol.partition("/")[2] or protocol,
    }
    _method_attributes(environ.get("REQUEST_METHOD", "GET"), attributes)
    if environ.get("QUERY_STRING"):
        attributes["url.query"] = environ["QUERY_STRING"]
    if environ.get("HTTP_USER_AGENT"):
        attributes["user_agent.original"] = environ["HTTP_USER_AGENT"]
    server = (environ.get("SERVER_NAME"), environ.get("SERVER_PORT"))
    _server_attributes(environ.get("HTTP_HOST"), server, attributes)
    if environ.get("REMOTE_ADDR"):
        attributes["client.address"] = environ["REMOTE_ADDR"]
        if str(environ.get("REMOTE_PORT", "")).isdigit():
            attributes["client.port"] = int(environ["REMOTE_PORT"])
    return attributes


def _port(text: str) -> int | None:
    """A TCP port from the caller's ``Host`` header, else ``None``. ``isascii()`` first:
    ``str.isdigit()`` also accepts ``"²"``, which ``int()`` refuses."""
    if not text or len(text) > 5 or not text.isascii() or not text.isdigit():
        return None
    port = int(text)
    return port if port <= 65535 else None


def _server_attributes(host: str | None, server: Any, attributes: dict[str, Any]) -> None:
    if host:
        # The caller's header: anything may be in it. A port that is not one stays part of
        # the address, as written (the span is not where to judge it).
        name, _, text = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        port = _port(text)
        if name and port is not None:
            attributes["server.address"] = name
            attributes["server.port"] = port
        else:
            attributes["server.address"] = host
    elif server and server[0]:
        attributes["server.address"] = str(server[0])
        if server[1] and str(server[1]).isdigit():
            attributes["server.port"] = int(server[1])
