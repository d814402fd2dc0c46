"""Traffic mirroring (shadowing): the decisions of a call's fire-and-forget copy. Sans-I/O.

The planner draws whether a call is mirrored (``mirror.percent``, with the injected random
source) and gives the call a :class:`Mirror`; a driver carries it out once, outside the call, and
never waits for it. Everything the copy does is decided here, with ``now`` passed in, as for
:class:`~._call.Call`: the in-flight cap (:class:`MirrorGate`), its one try's endpoint (the
target's own balancer, outlier detection and ejections), its headers and time limit, and how it
is counted in ``mesh_outbound_mirrors_total``.

A copy is one try only (no retries, no budget), limited by the call's per-try timeout (else its
overall timeout, else :data:`DEFAULT_MIRROR_TIMEOUT`) and never past the call's own deadline: a
shadow must not keep working for a caller that has given up, nor extend the inbound deadline.
"""

from __future__ import annotations

import threading

from .._wire import new_span_id
from ._call import TIMEOUT_KEYS, Call
from ._endpoint import Endpoint
from ._refusal import Refusal
from ._retry import Failure
from ._steps import Send
from ._upstream import Upstream

__all__ = [
    "DEFAULT_MIRROR_TIMEOUT",
    "MIRRORS_IN_FLIGHT",
    "SHADOW_HEADER",
    "Mirror",
    "MirrorGate",
    "shadow_host",
]

#: Mirrors one transport keeps in flight at most (queued ones included, in the sync transport);
#: past it a mirror is dropped and counted, so a slow or hung target costs bounded memory,
#: sockets and threads however much traffic is mirrored to it.
MIRRORS_IN_FLIGHT = 64
#: A copy's time limit when the call has neither a per-try timeout nor an overall one.
DEFAULT_MIRROR_TIMEOUT = 2.0
#: The header every copy carries, so the callee can tell shadow traffic from real traffic.
SHADOW_HEADER = b"mesh-shadow"
#: Appended to the copy's ``Host`` (Envoy's and Istio's convention for shadow requests).
SHADOW_SUFFIX = b"-shadow"


def shadow_host(host: bytes) -> bytes:
    """``search`` -> ``search-shadow``; a port stays last (``search-shadow:8080``), as Envoy
    spells it."""
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit() and (b":" not in name or name.endswith(b"]")):
        return name + SHADOW_SUFFIX + b":" + port
    return host + SHADOW_SUFFIX


class MirrorGate:
    """The in-flight cap of one transport's mirrors: a counter under a lock (the sync
    transport's threads share it); only calls that are mirrored ever touch it."""

    __slots__ = ("_lock", "cap", "in_flight")

    def __init__(self, cap: int = MIRRORS_IN_FLIGHT) -> None:
        self.cap = cap
        self.in_flight = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a place for one more mirror; ``False``: the cap is reached, drop it."""
        with self._lock:
            if self.in_flight >= self.cap:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1


class Mirror:
    """One shadow copy of a call: made by the planner with a place in the gate, carried out
    once by a driver (:meth:`begin`, then :meth:`answered`, :meth:`failed` or
    :meth:`abandoned`), each of which ends it exactly once, counted."""

    __slots__ = ("_gate", "call", "endpoint", "limit", "planned", "span_id", "started", "upstream")

    def __init__(self, upstream: Upstream, gate: MirrorGate, call: Call, now: float) -> None:
        #: The mirror target's state (endpoints, balancer, outlier detection, metrics).
        self.upstream = upstream
        self.call = call
        self._gate: MirrorGate | None = gate
        #: When the copy was decided: its time limit runs from here (a sync copy that waits
        #: in the queue past it is dropped unsent).
        self.planned = now
        #: The copy's time limit, set when it starts (:meth:`begin`).
        self.limit = 0.0
        #: The copy is a span of its own: a sibling of the call's, in the same trace.
        self.span_id = new_span_id() if call.context is not None else ""
        self.endpoint: Endpoint | None = None
        self.started = now

    def expires(self) -> float:
        """When the copy gives up, on the injected clock: the call's per-try timeout (else
        its timeout, else :data:`DEFAULT_MIRROR_TIMEOUT`) from when it was decided, and never
        past the call's deadline. Read from the call once it has started, so that a request's
        own overrides (a shorter timeout) bind its copy too."""
        call = self.call
        config = call.config
        expires = self.planned + (
            config.per_try_timeout or config.timeout or DEFAULT_MIRROR_TIMEOUT
        )
        deadline = call.deadline
        return expires if deadline is None or deadline > expires else deadline

    def begin(self, now: float) -> Send | None:
        """The copy's one try (:class:`Send`), or ``None`` when it ends here: too late
        (``dropped``), or no endpoint of the target to try (``failed``)."""
        left = self.expires() - now
        if left <= 0:
            self._end("dropped")
            return None
        try:
            endpoint = self.upstream.pick(now)
        except Refusal:
            self._end("failed")
            return None
        if self.call.strict and endpoint.scheme != "https":
            self._end("failed")
            return None
        endpoint.outstanding += 1
        self.endpoint = endpoint
        self.started = now
        self.limit = left
        return Send(endpoint, self.headers(left), dict.fromkeys(TIMEOUT_KEYS, left))

    def headers(self, left: float) -> list[tuple[bytes, bytes]]:
        """The call's headers (the app's, its trace context and request id), with ``Host``
        marked ``-shadow``, a span id of its own where the mesh set ``traceparent``, and the
        mesh headers of one try: ``mesh-attempt: 1``, the copy's own ``mesh-deadline-ms``
        and ``mesh-shadow: 1``."""
        call = self.call
        context = call.context
        primary = None if context is None else context.traceparent(call.span_id).encode()
        out: list[tuple[bytes, bytes]] = []
        for name, value in call.base_headers:
            lowered = name.lower()
            if lowered == b"host":
                value = shadow_host(value)
            elif lowered == b"traceparent" and context is not None and value == primary:
                value = context.traceparent(self.span_id).encode()
            elif lowered == SHADOW_HEADER:
                continue
            out.append((name, value))
        out.append((b"mesh-attempt", b"1"))
        out.append((b"mesh-deadline-ms", b"%d" % max(int(left * 1000), 1)))
        out.append((SHADOW_HEADER, b"1"))
        return out

    def answered(self, status: int, now: float) -> None:
        """The target answered (any status: the answer is discarded). A 5xx counts against
        the endpoint as for any call, so outlier detection ejects a failing mirror target."""
        endpoint = self.endpoint
        if endpoint is not None:
            rtt = now - self.started
            if status >= 500:
                self.upstream.failed(endpoint, rtt, self.limit, now)
            else:
                self.upstream.succeeded(endpoint, rtt, now)
        self._end("sent")

    def failed(self, failure: Failure | None, now: float) -> None:
        """No answer came (``failure``: how; ``None`` when not the endpoint's fault)."""
        endpoint = self.endpoint
        if endpoint is not None and failure is not None:
            self.upstream.failed(endpoint, now - self.started, self.limit, now)
        self._end("failed")

    def abandoned(self, now: float) -> None:
        """The copy was given up by the mesh (the transport closing, no way to run it)."""
        self._end("dropped")

    def _end(self, result: str) -> None:
        gate = self._gate
        if gate is None:
            return
        self._gate = None
        # The call and its copy refer to each other: untie them, so that both go with their
        # last reference rather than waiting for the cycle collector.
        self.call.mirror = None
        if self.endpoint is not None:
            self.endpoint.outstanding -= 1
        gate.release()
        self.upstream.metrics.mirror(result)
