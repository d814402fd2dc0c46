"""Hedged requests: the decisions of a call that races a slow try with another. Sans-I/O.

A :class:`HedgedCall` is a :class:`~._call.Call` (the same DNS, fault, retry, budget and
deadline decisions) whose tries may overlap. While tries are in flight the driver waits for the
first of: a try's report, or :meth:`HedgedCall.hedge_wait` seconds, after which it asks
:meth:`HedgedCall.hedge_due` for the hedge (a :class:`~._steps.Send` to another endpoint, or
``None``). Each report names its :class:`Try`; the call answers :class:`~._steps.Done` (the
winner: the driver cancels the others and reports each with :meth:`HedgedCall.cancelled`),
:data:`~._steps.WAIT` (this try is over, others are still in flight), or, when none is left, the
plain call's own ``Sleep`` (a retry) or ``Fail``.

The rules (reasoned in ``docs/outbound.md``): only idempotent calls with a replayable body are
hedged (the planner makes a plain :class:`Call` otherwise); a hedge goes to an endpoint no try
of the call is in flight on, withdraws one retry from the service's budget (none left: no hedge,
counted ``budget``), and is never sent when it would start at the deadline; the first *usable*
answer wins: an answer the plain call would retry (a 503) while another try is in flight is
dropped in favour of waiting for that try, not retried on top of it; a loser is not a failure of
its endpoint (its elapsed time only teaches the balancer and the latency window how slow it was).
Hedges do not use up ``retries.attempts``: they have their own bound, ``hedge.max``. A
per-request override that makes the call not idempotent (``_overrides``) stops its hedging.
"""

from __future__ import annotations

from typing import Any

from ._call import DEADLINE_SLACK, Call
from ._compile import HedgeConfig
from ._endpoint import Endpoint
from ._refusal import Refusal
from ._retry import Failure, retry_reason
from ._steps import WAIT, Done, Fail, Send, Sleep, Wait

__all__ = ["HedgedCall", "Try"]


class Try:
    """One try of a hedged call, as the driver reports it back."""

    __slots__ = ("attempt", "deadline_bound", "endpoint", "hedge", "limit", "started")

    def __init__(
        self,
        endpoint: Endpoint,
        attempt: int,
        started: float,
        limit: float | None,
        deadline_bound: bool,
    ) -> None:
        self.endpoint = endpoint
        #: Its ``mesh-attempt``.
        self.attempt = attempt
        self.started = started
        self.limit = limit
        self.deadline_bound = deadline_bound
        #: For a hedge, the delay after which it was sent (seconds); ``None`` for a first try
        #: or a retry.
        self.hedge: float | None = None

    def __repr__(self) -> str:
        kind = "try" if self.hedge is None else f"hedge after {self.hedge:.3f}s"
        return f"Try({self.attempt}, {self.endpoint.url}, {kind})"


class HedgedCall(Call):
    """A call whose policy hedges it (idempotent, replayable): tries may be in flight at once."""

    hedged = True

    __slots__ = ("_hedging", "_last_sent", "done", "hedge", "hedges", "inflight", "latest")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As :class:`Call`'s: the planner builds either kind with the same arguments."""
        super().__init__(*args, **kwargs)
        config = self.config
        assert config.hedge is not None, "the planner hedges only calls whose policy does"
        self.hedge: HedgeConfig = config.hedge
        #: Hedges sent so far (at most ``hedge.max``).
        self.hedges = 0
        #: Tries sent and not reported yet, oldest first; the last one begun.
        self.inflight: list[Try] = []
        self.latest: Try | None = None
        #: Whether another hedge may still be sent (off once one could not be: no endpoint
        #: apart from those in flight, or no budget; the call does not ask again).
        self._hedging = True
        self._last_sent = self.started
        #: The call is counted (:meth:`finish`): only the losers' bookkeeping is left.
        self.done = False

    # ---- the tries -------------------------------------------------------------------------

    def begin_try(self, now: float, endpoint: Endpoint | None = None) -> Endpoint:
        chosen = super().begin_try(now, endpoint)
        tried = Try(chosen, self.attempt, now, self.limit, self.deadline_bound)
        self.inflight.append(tried)
        self.latest = tried
        self._last_sent = now
        return chosen

    def _select(self, tried: Try) -> None:
        """Make ``tried`` the call's current try (the plain call's decisions read that), and
        take it out of those in flight: it has reported."""
        self.inflight.remove(tried)
        self.endpoint = tried.endpoint
        self.try_started = tried.started
        self.limit = tried.limit
        self.deadline_bound = tried.deadline_bound

    def _out_of_attempts(self) -> bool:
        return self.attempt - self.hedges > self.config.attempts

    # ---- the hedge -------------------------------------------------------------------------

    def hedge_delay(self, now: float) -> float | None:
        """The delay of a hedge now: the fixed one, or the percentile of the service's recent
        try latencies (``None`` until it has enough of them: no hedge yet)."""
        hedge = self.hedge
        if hedge.quantile is None:
            return hedge.delay
        window = self.upstream.latency
        return None if window is None else window.quantile(hedge.quantile, now)

    def hedge_wait(self, now: float) -> float | None:
        """Seconds until the next hedge is due (``0``: now), counted from the latest try's
        start; ``None`` when no hedge is to come (all sent, none possible, no estimate yet,
        nothing in flight, or it would start at the deadline)."""
        if (
            not self._hedging
            or self.hedges >= self.hedge.max
            or not self.inflight
            or not self.idempotent  # a per-request override said otherwise
        ):
            return None
        delay = self.hedge_delay(now)
        if delay is None:
            return None
        due = self._last_sent + delay
        if self.deadline is not None and due >= self.deadline - DEADLINE_SLACK:
            return None
        return max(due - now, 0.0)

    def hedge_due(self, now: float) -> Send | None:
        """The hedge :meth:`hedge_wait` announced: a :class:`Send` to an endpoint with no try
        of this call in flight (its :class:`Try` is :attr:`latest`), or ``None`` when none can
        go (then none will: hedging stops for this call)."""
        send = self._hedge(now)
        if send is None:
            self._hedging = False
        return send

    def _hedge(self, now: float) -> Send | None:
        delay = self.hedge_delay(now)
        remaining = self.remaining(now)
        if (
            not self._hedging
            or self.hedges >= self.hedge.max
            or not self.inflight
            or not self.idempotent
            or delay is None
            or (remaining is not None and remaining <= DEADLINE_SLACK)
        ):
            return None
        busy = [tried.endpoint for tried in self.inflight]
        upstream = self.upstream
        try:
            # Untried endpoints first (as a retry), else any not in flight now.
            endpoint = upstream.pick(now, self.tried, self.by_zone)
            if endpoint in busy:
                endpoint = upstream.pick(now, busy, self.by_zone)
        except Refusal:
            return None
        if endpoint in busy:
            return None
        if not upstream.budget.withdraw(now):
            upstream.metrics.hedge("budget")
            self.note = ("budget", "hedge")
            return None
        try:
            self.begin_try(now, endpoint)
        except Refusal:  # MESH_MTLS=strict and a plain endpoint: the first try's refusal stands
            return None
        latest = self.latest
        assert latest is not None
        latest.hedge = delay
        self.hedges += 1
        upstream.metrics.hedge("sent")
        return Send(endpoint, self._base_headers + self.headers(now), self.timeouts())

    # ---- reports ---------------------------------------------------------------------------

    def try_answered(
        self, tried: Try, status: int, retry_after: str | None, now: float
    ) -> Done | Sleep | Wait:
        """``tried`` got an answer. :class:`Done`: the call's answer (the driver cancels the
        tries still in flight). :data:`WAIT`: an answer the call would retry, while another
        try is in flight: closed, and that try awaited instead. ``Sleep``: retry it, as the
        plain call would (nothing else in flight)."""
        self._select(tried)
        window = self.upstream.latency
        if window is not None and status < 500:
            window.observe(now - tried.started, now)
        if (
            self.inflight
            and status in self.config.retry_statuses
            and retry_reason(self.config, self.idempotent, self.replayable, status=status)
        ):
            rtt = now - tried.started
            if status >= 500:
                self.upstream.failed(tried.endpoint, rtt, self._penalty(), now)
            else:
                self.upstream.succeeded(tried.endpoint, rtt, now)
            return WAIT
        step = self.answered(status, retry_after, now)
        if isinstance(step, Done) and tried.hedge is not None:
            self.upstream.metrics.hedge("won")
        return step

    def try_failed(
        self, tried: Try, failure: Failure | None, now: float, *, timed_out: bool = False
    ) -> Sleep | Fail | Wait:
        """``tried`` ended without an answer: :data:`WAIT` while other tries are in flight
        (one of them may still answer), else the plain call's decision (retry or fail)."""
        self._select(tried)
        if not self.inflight:
            return self.failed(failure, now, timed_out=timed_out)
        self.release(tried.endpoint)
        if failure is not None:
            self.upstream.failed(tried.endpoint, now - tried.started, self._penalty(), now)
        return WAIT

    def cancelled(self, tried: Try, now: float, *, failed: bool = False) -> None:
        """``tried`` lost the race and was cancelled (or its late answer closed): released,
        and not a failure of its endpoint. What it took until now is a lower bound of its
        latency: the balancer learns of a slow endpoint (a peak is taken at once), and the
        latency window keeps the slow tail that hedging would otherwise hide from it.
        ``failed``: it ended in an error after the race (sync), which is no latency at all."""
        if tried not in self.inflight:
            return  # already released (the call was abandoned)
        self.inflight.remove(tried)
        self.release(tried.endpoint)
        if failed:
            return
        elapsed = now - tried.started
        endpoint = tried.endpoint
        if elapsed > endpoint.estimate(now):
            endpoint.observe(elapsed, now)
        window = self.upstream.latency
        if window is not None:
            window.observe(elapsed, now)

    def abandoned(self, now: float) -> None:
        """The call ended by something other than its tries' reports (cancellation, a bug):
        every try in flight is released, and the call counted as an error unless it was."""
        for tried in self.inflight:
            self.release(tried.endpoint)
        self.inflight.clear()
        if not self.done:
            self.finish("error", now)

    def finish(self, status: int | str, now: float) -> None:
        self.done = True
        super().finish(status, now)
