"""One outbound call to a mesh service, as a sans-I/O state machine shared by both transports.

The call owns the protocol of a mesh call: DNS refresh, the injected fault, which endpoint each
try goes to, the exact headers and timeouts of each try, retries within the budget and the
deadline, and counting the call once. It answers every report with the next
:mod:`step <._steps>` (:class:`Send`, :class:`Sleep`, :class:`Resolve`, :class:`Respond`,
:class:`Done`, :class:`Fail`); the sync and async transports only carry steps out. It never
sleeps, sends or reads a clock of its own: ``now`` comes in, decisions come out, so every decision
is unit-tested without sockets and the two transports cannot drift apart.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .._backoff import full_jitter
from .._context import MeshContext
from .._wire import new_span_id
from ._compile import CallConfig
from ._discovery import addresses
from ._endpoint import Endpoint
from ._overrides import OVERRIDE_HEADERS, requested
from ._overrides import apply as apply_overrides
from ._refusal import Refusal
from ._retry import Failure, parse_retry_after, retry_reason
from ._steps import Done, Fail, Resolve, Respond, Send, Sleep, Step
from ._upstream import Upstream

if TYPE_CHECKING:
    from ._mirror import Mirror

__all__ = ["Call"]

#: Latency charged to an endpoint for a failed try when no per-try timeout is set.
DEFAULT_PENALTY = 1.0
#: A timeout this close to the deadline is the deadline (timers fire a little early or late).
DEADLINE_SLACK = 0.01
#: Answers whose ``Retry-After`` header stretches the backoff (RFC 9110, section 10.2.3).
RETRY_AFTER_STATUSES = (429, 503)
#: httpx's per-operation timeouts, each capped by a try's time limit.
TIMEOUT_KEYS = ("connect", "read", "write", "pool")
#: Headers the mesh sets on each try, replacing any the app set.
PER_TRY_HEADERS = frozenset({b"mesh-attempt", b"mesh-deadline-ms", b"mesh-identity"})
#: Headers never passed on as the app set them: the per-try ones and the override headers.
MESH_SET_HEADERS = PER_TRY_HEADERS | frozenset(OVERRIDE_HEADERS)


class Call:
    """The decisions of one call: endpoint per try, retries, budget, deadline, metrics."""

    #: One try at a time; :class:`~._hedge.HedgedCall` races several (the drivers ask this).
    hedged: ClassVar[bool] = False

    __slots__ = (
        "_base_headers",
        "_expires_after_delay",
        "_given_timeout",
        "abort",
        "attempt",
        "by_zone",
        "config",
        "context",
        "deadline",
        "deadline_bound",
        "delay",
        "endpoint",
        "idempotent",
        "inbound_left",
        "limit",
        "method",
        "mirror",
        "note",
        "replayable",
        "rng",
        "span_id",
        "started",
        "strict",
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
        delay: float = 0.0,
        abort: int | None = None,
        strict: bool = False,
        by_zone: bool = False,
    ) -> None:
        self.upstream = upstream
        #: ``zone_affinity``: tries prefer the caller's zone (``_zones``).
        self.by_zone = by_zone
        #: ``MESH_MTLS=strict``: a try may only go to an ``https://`` (mTLS) endpoint.
        self.strict = strict
        self.config = config
        self.method = method
        self.idempotent = config.is_idempotent(method)
        self.replayable = replayable
        self.rng = rng
        self.context = context
        self.started = now
        #: The inbound deadline's time left at the call where it, not the call timeout, is
        #: the deadline (``None`` otherwise): only kept, formatted in the rare error naming it.
        self.inbound_left: float | None = None
        #: Absolute deadline on the injected clock: the call timeout capped by the inbound one.
        self.deadline: float | None = None
        self._set_deadline(now)
        #: This call's span: a child of the inbound request's span, one per call.
        self.span_id = new_span_id() if context is not None else ""
        self.attempt = 0
        self.tried: list[Endpoint] = []
        self.endpoint: Endpoint | None = None
        self.try_started = now
        #: Seconds the current try may take, and whether that limit is the call's deadline.
        self.limit: float | None = None
        self.deadline_bound = False
        #: Injected fault: seconds to wait before the first try, and a status to answer instead.
        self.delay = delay
        self.abort = abort
        self._base_headers: list[tuple[bytes, bytes]] = []
        self._given_timeout: Mapping[str, float | None] = {}
        self._expires_after_delay = False
        #: What the last decision did beyond its step, for the try's span events (read and
        #: cleared there): ``("retry", reason)`` or ``("budget", reason)``, a retry refused.
        self.note: tuple[str, str] | None = None
        #: A shadow copy to send alongside, fire-and-forget (the planner sets it when drawn).
        self.mirror: Mirror | None = None
        upstream.budget.deposit(now)

    @property
    def base_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers every try carries (:meth:`merge_headers` of the app's), once started."""
        return self._base_headers

    def _set_deadline(self, now: float) -> None:
        timeout = self.config.timeout
        deadline = None if timeout is None else self.started + timeout
        context = self.context
        inbound = None if context is None else context.deadline
        if inbound is not None and (deadline is None or inbound < deadline):
            deadline = inbound
            self.inbound_left = max(inbound - now, 0.0)
        else:
            self.inbound_left = None
        self.deadline = deadline

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now

    def start(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        timeout: Mapping[str, float | None] | None,
        now: float,
        mesh: object = None,
    ) -> Step:
        """The first step of the call, given the app's request headers and its ``timeout``
        and ``mesh`` (per-request overrides) extensions: a DNS lookup if one is due, else what
        :meth:`resolved` would answer; :class:`Fail` for an override that is not valid."""
        self._base_headers, asked = self._merge(headers)
        self._given_timeout = timeout or {}
        if mesh is not None or asked is not None:
            try:
                self._override(mesh, asked, now)
            except Refusal as refusal:
                if self.mirror is not None:  # nothing is sent, so nothing is copied
                    self.mirror.abandoned(now)
                    self.mirror = None
                return self._fail(refusal, now)
        dns = self.upstream.dns
        if dns is not None and dns.should_resolve(now):
            return Resolve(dns.host, dns.port)
        return self._after_lookup(now)

    def resolved(self, infos: Sequence[tuple[Any, ...]] | None, now: float) -> Step:
        """The lookup :class:`Resolve` asked for answered ``infos`` (``getaddrinfo``'s), or
        failed (``None``: the last answer stays). Then the injected delay, abort, or first try."""
        dns = self.upstream.dns
        if dns is not None:
            if infos is None:
                dns.failed(now)
            else:
                urls = dns.resolved(addresses(infos), now)
                if urls is not None:
                    self.upstream.set_endpoints(urls, now)
        return self._after_lookup(now)

    def _after_lookup(self, now: float) -> Step:
        if self.delay:
            remaining = self.remaining(now)
            if remaining is not None and self.delay >= remaining:
                # The deadline passes during the delay: wait it out, then refuse (as a slow
                # upstream would be refused), so the caller sees the delay it asked for.
                self._expires_after_delay = True
                return Sleep(max(remaining, 0.0))
            return Sleep(self.delay)
        return self._after_delay(now)

    def slept(self, now: float) -> Step:
        """A :class:`Sleep` is over: the next try (or, after an injected delay, the abort)."""
        if self.endpoint is not None:
            return self._next_try(now)
        if self._expires_after_delay:
            return self._fail(Refusal("deadline", self.deadline_message()), now)
        return self._after_delay(now)

    def _after_delay(self, now: float) -> Step:
        if self.abort is not None:
            self.finish(self.abort, now)
            return Respond(self.abort)
        return self._next_try(now)

    def _next_try(self, now: float) -> Send | Fail:
        try:
            endpoint = self.begin_try(now)
        except Refusal as refusal:
            return self._fail(refusal, now)
        return Send(endpoint, self._base_headers + self.headers(now), self.timeouts())

    def _fail(self, refusal: Refusal | None, now: float) -> Fail:
        if refusal is not None:
            self.upstream.metrics.refused(refusal.kind)
        self.finish("error", now)
        return Fail(refusal)

    def merge_headers(self, app: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The request's headers for every try: the app's own, without the per-try mesh headers
        (the mesh sets those) and the override headers (instructions to this mesh, never sent
        on), plus the trace context and request id of the inbound request where the app did
        not set them itself."""
        return self._merge(app)[0]

    def _merge(
        self, app: Iterable[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], dict[str, str] | None]:
        """:meth:`merge_headers`, and the override headers found (``None``: none)."""
        headers = []
        present = set()
        asked: dict[str, str] | None = None
        for name, value in app:
            lowered = name.lower()
            if lowered in MESH_SET_HEADERS:
                key = OVERRIDE_HEADERS.get(lowered)
                if key is not None:
                    if asked is None:
                        asked = {}
                    asked[key] = value.decode("latin-1")
                continue
            headers.append((name, value))
            present.add(lowered)
        if self.context is not None:
            headers.extend(item for item in self.trace_headers() if item[0] not in present)
        return headers, asked

    def _override(self, mesh: object, asked: dict[str, str] | None, now: float) -> None:
        """Apply the request's overrides (its ``mesh`` extension, its override headers where
        the policy reads them) within the policy's bounds; :class:`Refusal` if one is invalid."""
        config = self.config
        wanted = requested(mesh, asked if config.overrides.headers else None)
        if wanted is None:
            return
        config, clamped = apply_overrides(config, self.method, wanted)
        self.upstream.metrics.override(clamped)
        self.config = config
        self.idempotent = config.is_idempotent(self.method)
        self._set_deadline(now)

    def timeouts(self) -> dict[str, float | None] | None:
        """httpx's per-operation timeouts for the current try, each capped by its time limit
        (``None``: no limit, the request's own stand).

        Capping connect, write, read and pool alike works the same in both transports: a
        cancel scope around the whole try would cost as much as the rest of the mesh's work
        together on every call, and the per-operation caps already bound a hung or slow
        upstream (as ``requests`` does)."""
        limit = self.limit
        if limit is None:
            return None
        given = self._given_timeout
        timeout: dict[str, float | None] = {}
        for key in TIMEOUT_KEYS:
            own = given.get(key)
            timeout[key] = limit if own is None or own > limit else own
        return timeout

    def begin_try(self, now: float, endpoint: Endpoint | None = None) -> Endpoint:
        """Choose the endpoint of the next try (unless given: a hedge's, chosen apart from
        those in flight) and its time limit (``self.limit``)."""
        remaining = self.remaining(now)
        if remaining is not None and remaining <= 0:
            raise Refusal("deadline", self.deadline_message())
        if endpoint is None:
            endpoint = self.upstream.pick(now, self.tried, self.by_zone)
        if self.strict and endpoint.scheme != "https":
            raise Refusal(
                "plaintext",
                f"mesh service {self.upstream.name!r}: endpoint {endpoint.url} is plain http, "
                "and MESH_MTLS=strict allows only https (mTLS) endpoints",
            )
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

    def _out_of_attempts(self) -> bool:
        """Whether the retries the policy allows are used up (asked only when one is due)."""
        return self.attempt > self.config.attempts

    def _backoff(self) -> float:
        config = self.config
        return full_jitter(self.attempt, config.backoff_base, config.backoff_max, self.rng.random)

    def _penalty(self) -> float:
        return self.config.per_try_timeout or self.config.timeout or DEFAULT_PENALTY

    def answered(self, status: int, retry_after: str | None, now: float) -> Sleep | Done:
        """An HTTP answer came (``retry_after``: its header, read for 429 and 503 only).
        :class:`Done`: it is the call's answer (counted now; the endpoint is released when its
        body is closed). :class:`Sleep`: retry it; the driver closes the answer, releases the
        endpoint (:meth:`release`), sleeps and reports with :meth:`slept`."""
        endpoint = self.endpoint
        assert endpoint is not None
        delay = self._retry_answer(endpoint, status, retry_after, now)
        if delay is None:
            self.finish(status, now)
            return Done(endpoint)
        return Sleep(delay)

    def _retry_answer(
        self, endpoint: Endpoint, status: int, retry_after: str | None, now: float
    ) -> float | None:
        rtt = now - self.try_started
        if status >= 500:
            self.upstream.failed(endpoint, rtt, self._penalty(), now)
        else:
            self.upstream.succeeded(endpoint, rtt, now)
        if status not in self.config.retry_statuses:
            return None
        reason = retry_reason(self.config, self.idempotent, self.replayable, status=status)
        if reason is None or self._out_of_attempts():
            return None
        delay = self._backoff()
        if status in RETRY_AFTER_STATUSES:
            wait = parse_retry_after(retry_after)
            if wait is not None:
                delay = max(delay, wait)
        remaining = self.remaining(now)
        if remaining is not None and delay >= remaining:
            return None
        if not self.upstream.budget.withdraw(now):
            self.note = ("budget", reason)
            return None
        self.upstream.metrics.retry(reason)
        self.note = ("retry", reason)
        return delay

    def failed(
        self, failure: Failure | None, now: float, *, timed_out: bool = False
    ) -> Sleep | Fail:
        """A try ended without an answer (``failure``: how, or ``None`` when it was not the
        endpoint's fault, e.g. a pool timeout). ``timed_out``: the error was a timeout, which is
        the call's deadline when the try was bound by it. :class:`Sleep` before retrying, or
        :class:`Fail`: a refusal (deadline passed, retry budget spent) or, with none, the
        transport's error as it is."""
        endpoint = self.endpoint
        assert endpoint is not None
        self.release(endpoint)
        remaining = self.remaining(now)
        if timed_out and self.deadline_bound and (remaining is None or remaining < DEADLINE_SLACK):
            if failure is not None:
                self.upstream.failed(endpoint, now - self.try_started, self._penalty(), now)
            return self._fail(Refusal("deadline", self.deadline_message()), now)
        if failure is None:
            return self._fail(None, now)
        self.upstream.failed(endpoint, now - self.try_started, self._penalty(), now)
        reason = retry_reason(self.config, self.idempotent, self.replayable, failure=failure)
        if reason is None or self._out_of_attempts():
            return self._fail(self._per_try_refusal(timed_out), now)
        delay = self._backoff()
        if remaining is not None and delay >= remaining:
            return self._fail(self._per_try_refusal(timed_out), now)
        if not self.upstream.budget.withdraw(now):
            self.note = ("budget", reason)
            return self._fail(
                Refusal(
                    "budget",
                    f"retry budget of {self.upstream.name!r} spent; "
                    f"try {self.attempt} failed ({failure})",
                ),
                now,
            )
        self.upstream.metrics.retry(reason)
        self.note = ("retry", reason)
        return Sleep(delay)

    def abandoned(self, now: float) -> None:
        """A try ended by something other than a transport error (cancellation, a bug): the
        endpoint is released and the call counted as an error; nothing follows."""
        if self.endpoint is not None:
            self.release(self.endpoint)
        self.finish("error", now)

    def finish(self, status: int | str, now: float) -> None:
        """Count the call once, with its final status (``error`` when no answer came)."""
        self.upstream.metrics.request(self.method, status, now - self.started)

    def deadline_message(self) -> str:
        """Names the limit that ran out: the call timeout, or the inbound request's deadline
        when that came first, each with its value (an operator tunes the one named)."""
        if self.inbound_left is None:
            limit = f"the call timeout, {_duration(self.config.timeout or 0.0)}"
        else:
            limit = (
                f"the inbound request's deadline, {_duration(self.inbound_left)} left at the call"
            )
        return (
            f"{self.method} to {self.upstream.name!r}: deadline passed after "
            f"{_tries(self.attempt)} ({limit})"
        )

    def _per_try_refusal(self, timed_out: bool) -> Refusal | None:
        """A try cut by the per-try timeout (not the deadline) ends the call: a refusal whose
        error is still httpx's ``ReadTimeout``, but says which limit ran out. ``None`` (the
        transport's own error stands) for any other failure."""
        if not timed_out or self.deadline_bound or self.limit is None:
            return None
        return Refusal(
            "per-try",
            f"{self.method} to {self.upstream.name!r}: timed out after {_tries(self.attempt)} "
            f"(the per-try timeout, {_duration(self.limit)})",
        )


def _tries(count: int) -> str:
    return "1 try" if count == 1 else f"{count} tries"


def _duration(seconds: float) -> str:
    """Seconds as a policy document writes them: ``1ms``, ``250ms``, ``2s``, ``1.5s``."""
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{round(seconds, 3):g}s"
