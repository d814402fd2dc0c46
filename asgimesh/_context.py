"""The per-request mesh context: what an inbound call hands to the outbound calls it makes.

``MeshMiddleware`` sets it for the duration of a request; ``AsyncMeshTransport`` reads it to
continue the trace, keep the request id and cap each call by the deadline left. A context
variable follows the request through ``await`` and task groups without the app passing it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["MeshContext", "current_context"]


@dataclass(slots=True)
class MeshContext:
    """What the mesh knows about the request being handled."""

    request_id: str
    trace_id: str
    #: This service's span for the request: the parent of every outbound call it makes.
    span_id: str
    trace_flags: str = "01"
    tracestate: str | None = None
    #: Absolute deadline on the ``time.monotonic`` clock, or ``None`` for no deadline.
    deadline: float | None = None
    #: The caller's verified SPIFFE ID, or ``None`` where no identity was verified.
    caller: str | None = None
    #: The caller's span (from its ``traceparent``); ``None`` where this request started the trace.
    parent_span_id: str | None = None

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - (time.monotonic() if now is None else now))

    def traceparent(self, span_id: str | None = None) -> str:
        """A W3C ``traceparent`` for a child of this request's span."""
        return f"00-{self.trace_id}-{span_id or self.span_id}-{self.trace_flags}"


_current: ContextVar[MeshContext | None] = ContextVar("asgimesh_context", default=None)


def current_context() -> MeshContext | None:
    """The mesh context of the request being handled, or ``None`` outside one."""
    return _current.get()
