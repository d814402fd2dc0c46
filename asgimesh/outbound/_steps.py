"""What a call asks its driver to do next: the only words between the sans-I/O call and the I/O.

:class:`~._call.Call` decides; the sync and async transports only carry out one step at a time
and report back what happened. Each step is a small frozen value, so a test can read exactly
what the call asked for without a socket, a clock or an event loop.

A mesh call is ``Resolve``? → ``Sleep`` (injected delay)? → ``Respond`` (injected abort) or
``Send`` → (``Sleep`` → ``Send``)* → ``Done`` or ``Fail``. A hedged call
(:class:`~._hedge.HedgedCall`) may have several ``Send`` in flight at once; between their
reports it answers :data:`WAIT`: keep waiting for the tries in flight (or its next hedge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._endpoint import Endpoint
from ._refusal import Refusal

__all__ = ["WAIT", "Done", "Fail", "Resolve", "Respond", "Send", "Sleep", "Step", "Wait"]


@dataclass(frozen=True, slots=True)
class Resolve:
    """Look ``host:port`` up (``getaddrinfo``), then report with :meth:`Call.resolved`."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (an injected delay, or the backoff before a retry), then report with
    :meth:`Call.slept`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Send:
    """Send one try: the app's request, to ``endpoint``, with exactly these ``headers`` and,
    unless ``None``, these per-operation timeouts; report with :meth:`Call.answered` or
    :meth:`Call.failed`."""

    endpoint: Endpoint
    headers: list[tuple[bytes, bytes]]
    #: httpx's ``timeout`` extension (connect/read/write/pool), capped by the try's time limit;
    #: ``None`` when the try has no limit of its own and the request's timeouts stand.
    timeout: Mapping[str, float | None] | None


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the app with an injected fault's ``status`` instead of calling (fault abort)."""

    status: int


@dataclass(frozen=True, slots=True)
class Done:
    """The last try's answer is the call's answer: hand it to the app (its body still open)."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Fail:
    """The call is over without an answer: raise the binding's error for ``refusal``, or, when
    it is ``None``, the transport's own error as it is (not retryable, or no tries left)."""

    refusal: Refusal | None


@dataclass(frozen=True, slots=True)
class Wait:
    """Hedged calls only: other tries are still in flight; wait for their reports (and for
    the next hedge, :meth:`HedgedCall.hedge_wait`) instead of retrying now."""


#: The one :class:`Wait` (it carries nothing).
WAIT = Wait()


#: What a driver's loop carries out next. ``Done`` is not among them: only an answer
#: (:meth:`Call.answered`) can be the call's answer, so only that report can return it.
Step = Resolve | Sleep | Send | Respond | Fail
