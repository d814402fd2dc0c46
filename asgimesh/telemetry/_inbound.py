"""What happens once per inbound request after the app answered: metrics, access log, span end.

Each request's exchange calls :meth:`InboundTelemetry.finish` exactly once (the app's answer,
the mesh's own 504/403/429, or a crash counted as 500), whichever shell handled it. The
request is counted with one call (:class:`~asgimesh.telemetry._tally.InboundTally`); unknown
methods are counted as ``_OTHER`` so that a client cannot grow the label set without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .._context import MeshContext
from .._log import bounded, describe_error, get_logger
from .._wire import HTTP_METHODS
from ._otel import ServerSpans, SpanScope

if TYPE_CHECKING:
    from .._runtime import MeshRuntime

__all__ = ["InboundTelemetry", "asgi_route"]


#: Status labels made once: ``str(200)`` allocates a new string on every call.
_STATUS = {status: str(status) for status in range(100, 600)}

access_log = get_logger("asgimesh.access")
error_log = get_logger("asgimesh.inbound")


def asgi_route(scope: Any) -> str | None:
    """The route template the app matched (Starlette and FastAPI put the route in the scope),
    or ``None``."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class Exchange(Protocol):
    """What telemetry reads of a finished request (the inbound exchange)."""

    @property
    def context(self) -> MeshContext | None: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def client(self) -> str | None: ...


class InboundTelemetry:
    """Per-middleware telemetry state: precomputed metric children, the span helper."""

    def __init__(self, runtime: MeshRuntime, app: Any = None) -> None:
        metrics = runtime.metrics
        self.service = metrics.service
        self._record = metrics.inbound.record
        self.access_log = runtime.settings.access_log
        self.spans = ServerSpans(app)

    def finish(
        self,
        exchange: Exchange,
        status: int,
        duration: float,
        span: SpanScope | None = None,
        error: BaseException | None = None,
        route: str | None = None,
    ) -> None:
        """Record one finished request of mesh traffic (``duration`` in seconds); called by
        :meth:`InboundExchange.finish <asgimesh.inbound._exchange.InboundExchange.finish>`.

        ``route`` is the app's route template where the framework tells (Starlette's
        ``scope["route"]``): logged instead of the path, which may hold ids or secrets.
        """
        context = exchange.context
        assert context is not None
        method = exchange.method
        label = method if method in HTTP_METHODS else "_OTHER"
        self._record(label, _STATUS.get(status) or str(status), duration)
        if span is not None:
            self.spans.end(span, status, error)
        if error is not None:
            # One line, no traceback: the server prints the re-raised exception's traceback
            # once, and a traceback rendered here (with locals, under rich) would cost
            # milliseconds and copy the request's headers into the log (see asgimesh._log).
            kind, message = describe_error(error)
            error_log.error(
                "app_error",
                error_type=kind,
                message=message,
                method=label,
                **({"route": route} if route is not None else {"path": bounded(exchange.path)}),
                status=status,
                request_id=context.request_id,
                trace_id=context.trace_id,
            )
        if self.access_log:
            access_log.info(
                "request",
                trace_id=context.trace_id,
                span_id=context.span_id,
                request_id=context.request_id,
                method=label,
                path=bounded(exchange.path, 1000),
                status=status,
                duration_ms=round(duration * 1000, 3),
                caller=context.caller,
                client=exchange.client,
            )
