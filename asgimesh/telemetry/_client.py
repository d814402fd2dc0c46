"""OpenTelemetry CLIENT spans for outbound mesh calls: one per try, with the mesh's decisions.

Each try the transport sends is a CLIENT span (HTTP semantic conventions, stable names): a retry
is a new span with ``http.request.resend_count``, ``server.address``/``server.port`` name the
endpoint the balancer chose, and the ``traceparent`` the try sends carries that span's id, so
the callee's server span is its child. The span is a child of the current span (the request's
server span, the app's own spans), or, where none is current, of the inbound request's caller.
What the mesh decided shows as events: ``mesh.retry`` (and why), ``mesh.retry_budget_exhausted``,
``mesh.endpoint_ejected``, ``mesh.fault.delay`` and ``mesh.fault.abort``, ``mesh.refused``, and
for hedged calls ``mesh.hedge`` (this try is a hedge) and ``mesh.hedge.lost``.

While a try is sent its span is current and HTTP instrumentation is suppressed (the context key
OpenTelemetry's instrumentations honour), so ``opentelemetry-instrumentation-httpx`` instrumenting
httpx's transports globally makes no second span per try. Where a CLIENT span is already current
(``HTTPXClientInstrumentor.instrument_client`` wraps the client's transport, so its span is
current when the mesh's transport is called), that span is the call's: the mesh makes none and
puts its events on that span, and its ``traceparent`` (which the instrumentation set) is sent.

Only while a real tracer provider is installed (:class:`~._otel.TracerGate`): otherwise the
transport pays one comparison per try (with :attr:`~._otel.TracerGate.next_check`).
"""

from __future__ import annotations

from typing import Any

from .._wire import HTTP_METHODS
from ._otel import TracerGate

__all__ = ["ClientSpans", "TrySpan"]

#: The outbound call (``asgimesh.outbound._call.Call``) and its ``Send`` step: telemetry reads
#: them but, below ``outbound`` in the layering, does not import them.
Call = Any
Send = Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError:  # pragma: no cover - without the optional dependency no tracer is found
    pass

_TRACEPARENT = b"traceparent"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _method(method: str, attributes: dict[str, Any]) -> str:
    if method in HTTP_METHODS:
        attributes["http.request.method"] = method
        return method
    attributes["http.request.method"] = "_OTHER"
    attributes["http.request.method_original"] = method
    return "HTTP"


def _parent(call: Call) -> Any:
    """The context a try's span is a child of: the current one where a span is current, else
    the inbound request's caller (a remote parent), else none (a new trace)."""
    if trace.get_current_span().get_span_context().is_valid:
        return otel_context.get_current()
    context = call.context
    if context is None or context.parent_span_id is None:
        return otel_context.Context()
    parent = SpanContext(
        int(context.trace_id, 16),
        int(context.parent_span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(context.trace_flags, 16)),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


class ClientSpans(TracerGate):
    """Starts a span for each try of a mesh call while a real provider is configured."""

    def begin(self, call: Call, send: Send) -> TrySpan | None:
        """The span of the try ``send`` is about to make, or ``None`` (tracing is off)."""
        tracer = self.tracer(call.try_started)
        if tracer is None:
            return None
        current = trace.get_current_span()
        if current.is_recording() and getattr(current, "kind", None) is SpanKind.CLIENT:
            return TrySpan(current, send, call, own=False)
        endpoint = send.endpoint
        attributes: dict[str, Any] = {
            "server.address": endpoint.host,
            "server.port": endpoint.port or _DEFAULT_PORTS.get(endpoint.scheme, 80),
            "mesh.upstream": call.upstream.name,
        }
        name = _method(call.method, attributes)
        if call.attempt > 1:
            attributes["http.request.resend_count"] = call.attempt - 1
        span = tracer.start_span(
            name, context=_parent(call), kind=SpanKind.CLIENT, attributes=attributes
        )
        if call.attempt == 1 and call.delay:
            span.add_event("mesh.fault.delay", {"mesh.fault.delay_s": call.delay})
        if call.hedged and call.latest.hedge is not None:
            span.add_event("mesh.hedge", {"mesh.hedge.delay_s": call.latest.hedge})
        ids = span.get_span_context()
        headers = [item for item in send.headers if item[0].lower() != _TRACEPARENT]
        headers.append(
            (_TRACEPARENT, b"00-%032x-%016x-%02x" % (ids.trace_id, ids.span_id, ids.trace_flags))
        )
        sent = type(send)(endpoint, headers, send.timeout)
        return TrySpan(span, sent, call, own=True)

    def fault(self, call: Call, status: int) -> None:
        """A call answered by an injected fault (abort) instead of a try: a span of its own."""
        tracer = self.tracer(call.try_started)
        if tracer is None:
            return
        attributes: dict[str, Any] = {
            "server.address": call.upstream.name,
            "mesh.upstream": call.upstream.name,
            "http.response.status_code": status,
        }
        name = _method(call.method, attributes)
        span = tracer.start_span(
            name, context=_parent(call), kind=SpanKind.CLIENT, attributes=attributes
        )
        if call.delay:
            span.add_event("mesh.fault.delay", {"mesh.fault.delay_s": call.delay})
        span.add_event("mesh.fault.abort", {"http.response.status_code": status})
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class TrySpan:
    """One try's span (or, ``own`` false, the CLIENT span someone else made for the call)."""

    __slots__ = ("_ejected", "_endpoint", "_own", "send", "span")

    def __init__(self, span: Any, send: Send, call: Call, *, own: bool) -> None:
        self.span = span
        #: The try to send: with this span's ``traceparent`` where the span is the mesh's.
        self.send = send
        self._own = own
        self._endpoint = send.endpoint
        self._ejected = send.endpoint.ejected_until

    def sync_inner(self, inner: Any) -> Any:
        return _SyncTraced(inner, self) if self._own else inner

    def async_inner(self, inner: Any) -> Any:
        return _AsyncTraced(inner, self) if self._own else inner

    def attach(self) -> Any:
        """Make the span current, with HTTP instrumentation suppressed, while the try is sent."""
        context = trace.set_span_in_context(self.span)
        return otel_context.attach(
            otel_context.set_value(_SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, context)
        )

    def _decided(self, step: Any, call: Call) -> None:
        """Events for what the call decided after this try, then the span's end."""
        span = self.span
        note = call.note
        if note is not None:
            call.note = None
            kind, reason = note
            if kind == "retry":
                attributes: dict[str, Any] = {"mesh.retry.reason": reason}
                seconds = getattr(step, "seconds", None)
                if seconds is not None:
                    attributes["mesh.retry.backoff_s"] = seconds
                span.add_event("mesh.retry", attributes)
            else:
                span.add_event("mesh.retry_budget_exhausted", {"mesh.retry.reason": reason})
        refusal = getattr(step, "refusal", None)
        if refusal is not None:
            span.add_event(
                "mesh.refused", {"mesh.refusal": refusal.kind, "message": str(refusal)[:500]}
            )
        if not self._ejected and self._endpoint.ejected_until:
            span.add_event("mesh.endpoint_ejected", {"mesh.endpoint": self._endpoint.url})
        if self._own:
            span.end()

    def lost(self) -> None:
        """A hedged call's other try answered first: this one was cancelled (async) or its
        late answer closed (sync). Not an error: the call got its answer."""
        self.span.add_event("mesh.hedge.lost")
        if self._own:
            self.span.end()

    def answered(self, status: int, step: Any, call: Call) -> None:
        if self._own:
            span = self.span
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                # Semantic conventions: for CLIENT spans 4xx is an error too.
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        self._decided(step, call)

    def failed(self, error: BaseException, step: Any, call: Call) -> None:
        if self._own:
            span = self.span
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
        self._decided(step, call)


def _url_full(request: Any) -> str:
    """The URL the try went to, without credentials."""
    url = request.url
    if url.userinfo:
        url = url.copy_with(username=None, password=None)
    return str(url)


class _SyncTraced:
    """The inner transport of one traced try: the span current while it sends."""

    __slots__ = ("_inner", "_try")

    def __init__(self, inner: Any, traced: TrySpan) -> None:
        self._inner = inner
        self._try = traced

    def handle_request(self, request: Any) -> Any:
        self._try.span.set_attribute("url.full", _url_full(request))
        token = self._try.attach()
        try:
            return self._inner.handle_request(request)
        finally:
            otel_context.detach(token)


class _AsyncTraced(_SyncTraced):
    async def handle_async_request(self, request: Any) -> Any:
        self._try.span.set_attribute("url.full", _url_full(request))
        token = self._try.attach()
        try:
            return await self._inner.handle_async_request(request)
        finally:
            otel_context.detach(token)
