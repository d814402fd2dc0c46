"""One outbound call to a mesh service, as a sans-I/O state machine shared by both shells.

The shell (sync or async) asks :meth:`Call.begin_try` where to send the next try and with which
headers and time limit, does the I/O, and reports what happened (:meth:`Call.answered`,
:meth:`Call.failed`); the call answers with the delay before the next try, or ``None`` to stop.
It never sleeps, sends or reads a clock of its own: ``now`` comes in, decisions come out, so
every decision is unit-tested without sockets and the two shells cannot drift apart.
"""

from __future__ import annotations

import random

from .._backoff import full_jitter
from .._context import MeshContext
from .._wire import new_span_id
from ._compile import CallConfig
from ._endpoint import Endpoint
from ._refusal import Refusal
from ._retry import Failure, parse_retry_after, retry_reason
from ._upstream import Upstream

__all__ = ["Call"]

#: Latency charged to an endpoint for a failed try when no per-try timeout is set.
DEFAULT_PENALTY = 1.0
#: A timeout this close to the deadline is the deadline (timers fire a little early or late).
DEADLINE_SLACK = 0.01


class Call:
    """The decisions of one call: endpoint per try, retries, budget, deadline, metrics."""

    __slots__ = (
        "attempt",
        "config",
        "context",
        "deadline",
        "deadline_bound",
        "endpoint",
        "idempotent",
        "limit",
        "method",
        "replayable",
        "rng",
        "span_id",
        "started",
        "tried",
        "try_started",
        "upstream",
    )

    def __init__(
        self,
        upstream: Upstream,
        config: CallConfig,
        method: str,
        *,
        replayable: bool,
        now: float,
        rng: random.Random,
        context: MeshContext | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.method = method
        self.idempotent = config.is_idempotent(method)
        self.replayable = replayable
        self.rng = rng
        self.context = context
        self.started = now
        deadline = None if config.timeout is None else now + config.timeout
        if context is not None and context.deadline is not None:
            deadline = context.deadline if deadline is None else min(deadline, context.deadline)
        #: Absolute deadline on the injected clock: the call timeout capped by the inbound one.
        self.deadline = deadline
        #: This call's span: a child of the inbound request's span, one per call.
        self.span_id = new_span_id() if context is not None else ""
        self.attempt = 0
        self.tried: list[Endpoint] = []
        self.endpoint: Endpoint | None = None
        self.try_started = now
        #: Seconds the current try may take, and whether that limit is the call's deadline.
        self.limit: float | None = None
        self.deadline_bound = False
        upstream.budget.deposit(now)

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now

    def begin_try(self, now: float) -> Endpoint:
        """Choose the endpoint of the next try and its time limit (``self.limit``)."""
        remaining = self.remaining(now)
        if remaining is not None and remaining <= 0:
            raise Refusal("deadline", self.deadline_message())
        endpoint = self.upstream.pick(now, self.tried)
        self.attempt += 1
        self.tried.append(endpoint)
        self.endpoint = endpoint
        self.try_started = now
        per_try = self.config.per_try_timeout
        if remaining is not None and (per_try is None or remaining <= per_try):
            self.limit, self.deadline_bound = remaining, True
        else:
            self.limit, self.deadline_bound = per_try, False
        endpoint.outstanding += 1
        return endpoint

    def headers(self, now: float) -> list[tuple[bytes, bytes]]:
        """The mesh headers of this try (contract, section 5)."""
        out = [(b"mesh-attempt", b"%d" % self.attempt)]
        remaining = self.remaining(now)
        if remaining is not None:
            out.append((b"mesh-deadline-ms", b"%d" % max(int(remaining * 1000), 1)))
        return out

    def trace_headers(self) -> list[tuple[bytes, bytes]]:
        """Trace context and request id of the inbound request, for every try of this call."""
        context = self.context
        if context is None:
            return []
        out = [
            (b"traceparent", context.traceparent(self.span_id).encode()),
            (b"x-request-id", context.request_id.encode()),
        ]
        if context.tracestate:
            out.append((b"tracestate", context.tracestate.encode()))
        return out

    def release(self, endpoint: Endpoint) -> None:
        """A try is over (its answer's body closed, or it failed): one less outstanding."""
        endpoint.outstanding -= 1

    def _backoff(self) -> float:
        config = self.config
        return full_jitter(self.attempt, config.backoff_base, config.backoff_max, self.rng.random)

    def _penalty(self) -> float:
        return self.config.per_try_timeout or self.config.timeout or DEFAULT_PENALTY

    def answered(self, status: int, retry_after: str | None, now: float) -> float | None:
        """An HTTP answer came: the delay before retrying it, or ``None`` to return it."""
        endpoint = self.endpoint
        assert endpoint is not None
        rtt = now - self.try_started
        if status >= 500:
            self.upstream.failed(endpoint, rtt, self._penalty(), now)
        else:
            self.upstream.succeeded(endpoint, rtt, now)
        if status not in self.config.retry_statuses:
            return None
        reason = retry_reason(self.config, self.idempotent, self.replayable, status=status)
        if reason is None or self.attempt > self.config.attempts:
            return None
        delay = self._backoff()
        if status in (429, 503):
            wait = parse_retry_after(retry_after)
            if wait is not None:
                delay = max(delay, wait)
        remaining = self.remaining(now)
        if remaining is not None and delay >= remaining:
            return None
        if not self.upstream.budget.withdraw(now):
            return None
        self.upstream.metrics.retry(reason)
        return delay

    def failed(
        self, failure: Failure | None, now: float, *, timed_out: bool = False
    ) -> float | None:
        """A try ended without an answer: the delay before retrying, ``None`` to raise the error
        as it is, or :class:`Refusal` (deadline passed, or retry budget spent). ``timed_out``:
        the error was a timeout, which is the call's deadline when the try was bound by it."""
        endpoint = self.endpoint
        assert endpoint is not None
        self.release(endpoint)
        remaining = self.remaining(now)
        if timed_out and self.deadline_bound and (remaining is None or remaining < DEADLINE_SLACK):
            if failure is not None:
                self.upstream.failed(endpoint, now - self.try_started, self._penalty(), now)
            raise Refusal("deadline", self.deadline_message())
        if failure is None:
            return None
        self.upstream.failed(endpoint, now - self.try_started, self._penalty(), now)
        reason = retry_reason(self.config, self.idempotent, self.replayable, failure=failure)
        if reason is None or self.attempt > self.config.attempts:
            return None
        delay = self._backoff()
        if remaining is not None and delay >= remaining:
            return None
        if not self.upstream.budget.withdraw(now):
            raise Refusal(
                "budget",
                f"retry budget of {self.upstream.name!r} spent; "
                f"try {self.attempt} failed ({failure})",
            )
        self.upstream.metrics.retry(reason)
        return delay

    def finish(self, status: int | str, now: float) -> None:
        """Count the call once, with its final status (``error`` when no answer came)."""
        self.upstream.metrics.request(self.method, status, now - self.started)

    def deadline_message(self) -> str:
        budget = self.config.timeout
        inbound = self.context is not None and self.context.deadline is not None
        source = "the inbound request's deadline" if inbound else f"the call timeout ({budget}s)"
        return (
            f"{self.method} to {self.upstream.name!r}: deadline passed after "
            f"{self.attempt} tries ({source})"
        )
