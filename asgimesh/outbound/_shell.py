"""What the async and the sync transport share: turning a request into a call, and I/O results
into reports (:class:`Shell`), and the constants of both drivers.

``AsyncMeshTransport`` and ``MeshTransport`` hand every keyword argument to one inner
``AsyncHTTPTransport`` / ``HTTPTransport`` (``verify``, ``cert``, ``http2``, ``limits``, ``proxy``,
``retries``, ...). One shared pool rather than one per endpoint: httpcore already keeps
connections per origin inside a pool, ``limits`` then means what it means with plain httpx (the
whole transport), and hosts that are not mesh services use the very same pool, so the transport
is a drop-in in every respect.

Each driver (:mod:`._async_shell`, :mod:`._sync_shell`) is one loop over the call's steps: send,
sleep, look up, answer or raise. What to do next is always the call's decision, made in one
place for both drivers; what is left twice is only the difference between ``await x()`` and
``x()``.

A mirrored call's copy (:class:`~._mirror.Mirror`) is handed off before the first try to a task
of the event loop or a mirror thread (:mod:`._shadow`) and never waited for. Copies use inner
transports of their own, so a hung mirror target can hold none of the pool the real calls use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic

from .._runtime import MeshRuntime, get_runtime
from ..identity import MeshClientContext, identity_mismatch, service_id
from ..telemetry import ClientSpans
from ._call import RETRY_AFTER_STATUSES, Call
from ._hedge import HedgedCall, Try
from ._metrics import UpstreamMetrics
from ._mirror import Mirror
from ._planner import CallPlanner
from ._protocols import Binding, Req, Resp, ResponseLike
from ._refusal import Refusal
from ._steps import Done, Fail, Send, Sleep, Step, Wait
from ._upstream import Upstream

__all__ = ["DRAIN_LIMIT", "IDENTITY_WAIT", "Infos", "Shell", "TryResult", "drainable"]

#: A retried answer's body is read (so its connection returns to the pool) up to this size.
DRAIN_LIMIT = 64 * 1024

#: How long a call without a deadline waits for this service's first certificate.
IDENTITY_WAIT = 10.0

#: ``getaddrinfo``'s answer, or ``None`` when the lookup failed.
Infos = Sequence[tuple[object, ...]] | None

#: What a hedged call's try came back with: its answer, or the error it raised.
TryResult = tuple[Try, Resp | Exception]



def drainable(response: ResponseLike) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


class Shell(Generic[Req, Resp]):
    """What both drivers share: turning a request into a call, and I/O results into reports."""

    #: Set by the binding's subclass (``asgimesh.outbound``, ``asgimesh.outbound.httpx2``).
    _lib: Binding[Req, Resp]

    def __init__(self, runtime: MeshRuntime | None, kwargs: dict[str, object]) -> None:
        self._planner = CallPlanner(runtime if runtime is not None else get_runtime())
        settings = self._planner.runtime.settings
        #: ``MESH_MTLS`` permissive or strict: a mesh service's ``https://`` endpoints are
        #: dialled with this service's certificate, by one inner transport per service (its
        #: own client context expects that service's ID); everything else uses ``_inner``.
        self._mtls = settings.mtls != "off"
        self._secure_kwargs = {k: v for k, v in kwargs.items() if k not in ("verify", "cert")}
        #: The mirrors' own inner transports are made from the same arguments, when needed.
        self._kwargs = kwargs
        self._default_ids: dict[str, str] = {}
        #: Where mTLS cannot carry the identity (a mesh service's plain ``http://`` endpoint,
        #: permissive mode), a ``mesh-identity`` token for that service carries it instead.
        self._minter = self._planner.runtime.token_minter if self._mtls else None
        #: One CLIENT span per try while an OpenTelemetry SDK is installed (else one check).
        self._spans = ClientSpans()

    def _expected_id(self, call: Call) -> str:
        """The ID ``call``'s service must present: its policy's ``identity``, else the mesh's
        default for its name. Secure inner transports are kept per ID, so a policy changing
        it reaches the next try."""
        return self._expected_for(call.upstream)

    def _expected_for(self, upstream: Upstream) -> str:
        override = upstream.config.identity
        if override is not None:
            return override
        expected = self._default_ids.get(upstream.name)
        if expected is None:
            settings = self._planner.runtime.settings
            expected = service_id(settings.trust_domain, settings.namespace, upstream.name)
            self._default_ids[upstream.name] = expected
        return expected

    def _context(self, expected: str) -> MeshClientContext:
        """A client context presenting this service's certificate and accepting only a
        server whose one URI SAN is ``expected``."""
        return MeshClientContext(expected, self._planner.runtime.identity)

    def _identity_wait(self, call: Call) -> float | None:
        """Seconds to wait for this service's first certificate before dialling with mTLS
        (``None``: it is here): the call's time left, or :data:`IDENTITY_WAIT` without one."""
        if self._planner.runtime.identity.current is not None:
            return None
        left = call.remaining(self._planner.clock())
        return IDENTITY_WAIT if left is None else max(left, 0.0)

    def _mirror_key(self, mirror: Mirror, send: Send) -> str | None:
        """Which of the mirrors' inner transports carries this copy: ``""`` the plain one, else
        the ID its ``https://`` endpoint must present under mTLS; ``None`` when it cannot be
        sent yet (no certificate of this service's own: a copy never waits for one)."""
        if not self._mtls or send.endpoint.scheme != "https":
            return ""
        if self._planner.runtime.identity.current is None:
            return None
        return self._expected_for(mirror.upstream)

    def _mirror_kwargs(self, key: str) -> dict[str, object]:
        if not key:
            return self._kwargs
        return {"verify": self._context(key), **self._secure_kwargs}

    def _mirror_tokened(self, mirror: Mirror, send: Send) -> Send:
        """A copy to a plain endpoint under permissive mTLS carries the target's token if one
        is at hand (cached, or made without I/O); a copy never waits for the control plane."""
        minter = self._minter
        if minter is None or send.endpoint.scheme == "https":
            return send
        audience = self._expected_for(mirror.upstream)
        token = minter.cached(audience)
        if token is None and not minter.needs_io:
            token = minter.token_for(audience)
        return self._tokened(send, token)

    def _tokened(self, send: Send, token: bytes | None) -> Send:
        if token is None:
            return send
        return Send(send.endpoint, [*send.headers, (b"mesh-identity", token)], send.timeout)

    def _explained(self, exc: Exception, request: Req) -> Exception:
        """``exc``, or a ``ConnectError`` with the identity mismatch behind it where its own
        message lost it (trio re-raises a failed handshake bare)."""
        mismatch = identity_mismatch(exc)
        if mismatch is None or mismatch in str(exc):
            return exc
        error = self._lib.error(Refusal("identity", mismatch), request)
        error.__cause__ = exc
        return error

    def _no_identity(self, call: Call, request: Req, waited: float) -> Exception:
        call.upstream.metrics.refused("identity")
        call.abandoned(self._planner.clock())
        message = (
            f"mesh service {call.upstream.name!r}: no certificate of this service's own yet "
            f"to dial its https endpoint with mTLS (waited {waited:.3g}s)"
        )
        return self._lib.error(Refusal("identity", message), request)

    def _plan(self, request: Req) -> Call | None:
        url = request.url
        return self._planner.plan(
            request.method,
            url.host,
            url.path,
            replayable=self._lib.replayable(request),
            header=request.headers.get,
            query=url.query,
        )

    def _start(self, call: Call, request: Req) -> Step:
        extensions = request.extensions
        return call.start(
            request.headers.raw,
            extensions.get("timeout"),
            self._planner.clock(),
            extensions.get("mesh"),
        )

    def _failed(self, call: Call, exc: Exception) -> Sleep | Fail:
        lib = self._lib
        timed_out = isinstance(exc, lib.TimeoutException)
        return call.failed(lib.classify(exc), self._planner.clock(), timed_out=timed_out)

    def _answered(self, call: Call, response: Resp) -> Sleep | Done:
        status = response.status_code
        retry_after = (
            response.headers.get("retry-after") if status in RETRY_AFTER_STATUSES else None
        )
        return call.answered(status, retry_after, self._planner.clock())

    def _reported(
        self, call: HedgedCall, tried: Try, result: Resp | Exception, request: Req
    ) -> Done | Sleep | Wait | Fail | Exception:
        """A hedged call's try came back: the call's next step, or, for an error that is no
        transport's (a bug), that error to raise (the call abandoned)."""
        lib, now = self._lib, self._planner.clock()
        if isinstance(result, lib.TransportError):
            timed_out = isinstance(result, lib.TimeoutException)
            return call.try_failed(tried, lib.classify(result), now, timed_out=timed_out)
        if isinstance(result, Exception):
            call.abandoned(now)
            return result
        status = result.status_code
        retry_after = result.headers.get("retry-after") if status in RETRY_AFTER_STATUSES else None
        return call.try_answered(tried, status, retry_after, now)

    def _error(self, fail: Fail, request: Req, exc: Exception | None = None) -> Exception:
        """The exception a :class:`Fail` raises: the binding's for a refusal (caused by the
        try's error, if any), else the try's error itself."""
        if fail.refusal is None:
            assert exc is not None, "only a failed try lets its own error stand"
            return exc
        error = self._lib.error(fail.refusal, request)
        error.__cause__ = exc
        return error

    def _measure(self, request: Req) -> tuple[UpstreamMetrics, float] | None:
        """Metric children and start time for a pass-through host (``None``: not measured)."""
        metrics = self._planner.passthrough_metrics(request.url.host)
        return None if metrics is None else (metrics, self._planner.clock())

    def _measured(
        self, request: Req, measure: tuple[UpstreamMetrics, float], status: int | str
    ) -> None:
        metrics, start = measure
        metrics.request(request.method, status, self._planner.clock() - start)


