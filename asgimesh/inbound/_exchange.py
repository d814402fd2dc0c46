"""One inbound request's way through the mesh, from the decision to its one end.

:meth:`~asgimesh.inbound._decide.InboundCore.decide` makes an :class:`InboundExchange` per
request, and the exchange owns everything both shells would otherwise each repeat: the status
(500 until the app starts a response: an app that returns without one has failed), the headers
the mesh adds to the response, the concurrency slot, the span, the
:class:`~asgimesh.MeshContext` being current while the app runs, and :meth:`finish`, which
releases the slot, ends the span and records telemetry exactly once. The ASGI and WSGI shells
keep only their protocol's plumbing: reading the request, wrapping ``send`` or
``start_response``, and calling :meth:`finish` on their own way of knowing the response is done.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any, TypeVar

from .._context import MeshContext, _current

if TYPE_CHECKING:
    from ..telemetry import InboundTelemetry, SpanScope
    from ._answers import Answer
    from ._limits import ConcurrencyGate

__all__ = ["RESPONSE_HEADER", "InboundExchange"]

#: The one header the mesh adds to every response of mesh traffic: the request id, echoed.
RESPONSE_HEADER = "x-request-id"

_Source = TypeVar("_Source")


class InboundExchange:
    """One request: what the mesh decided, and the bookkeeping until its response is done.

    ``answer`` set: the shell sends it instead of calling the app, then calls :meth:`finish`.
    ``context`` set: the request is mesh traffic (counted, logged, traced); it is ``None`` only
    for the admin paths, which are operators' calls and stay out of the request metrics.
    """

    __slots__ = (
        "_clock",
        "_done",
        "_span",
        "_telemetry",
        "_token",
        "answer",
        "client",
        "context",
        "gate",
        "method",
        "path",
        "started",
        "status",
    )

    def __init__(
        self,
        method: str,
        path: str,
        client: str | None,
        started: float,
        context: MeshContext | None,
        answer: Answer | None = None,
        gate: ConcurrencyGate | None = None,
        *,
        telemetry: InboundTelemetry | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.client = client
        self.started = started
        self.context = context
        self.answer = answer
        #: The concurrency slot this request holds, released by :meth:`finish`; ``None``
        #: without a concurrency limit (or when the request was refused).
        self.gate = gate
        #: The response's status as far as the mesh knows: the mesh's own answer's, else 500
        #: until the app starts a response.
        self.status = answer.status if answer is not None else 500
        self._telemetry = telemetry
        self._clock = clock
        self._span: SpanScope | None = None
        self._token: Token[MeshContext | None] | None = None
        self._done = False

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the mesh adds to the response, the app's or its own: the request id."""
        if self.context is None:
            return ()
        return ((RESPONSE_HEADER, self.context.request_id),)

    def enter(self, attributes: Callable[[_Source], dict[str, Any]], source: _Source) -> None:
        """Before the app runs: start the SERVER span where tracing is on (its attributes made
        from ``source``, the scope or environ, only then) and make the context current."""
        context = self.context
        assert context is not None, "enter() is for requests that reach the app"
        telemetry = self._telemetry
        if telemetry is not None:
            spans = telemetry.spans
            tracer = spans.tracer(self.started)
            if tracer is not None:
                self._span = spans.start(tracer, context, self.method, attributes, source)
        self._token = _current.set(context)

    def leave(self) -> None:
        """After the app's call returned or raised (in the context :meth:`enter` ran in)."""
        token = self._token
        if token is not None:
            self._token = None
            _current.reset(token)
        span = self._span
        if span is not None and self._telemetry is not None:
            self._telemetry.spans.detach(span)

    def finish(self, error: BaseException | None = None, route: str | None = None) -> None:
        """The response is done (or failed, with ``error``): release the slot, end the span and
        record the request, exactly once whoever calls first.

        ``route`` is the app's route template where the shell knows it, logged with an error.
        The slot goes back first, whatever happened: an app error, a cancellation on a
        client's disconnect, or a failure in the telemetry below.
        """
        if self._done:
            return
        self._done = True
        gate = self.gate
        if gate is not None:
            gate.done(self.started)
        telemetry = self._telemetry
        if telemetry is None or self.context is None:
            return
        status = 500 if error is not None else self.status
        now = self._clock() if self._clock is not None else self.started
        telemetry.finish(self, status, now - self.started, self._span, error, route)
