"""The transports' I/O: drivers that carry out a :class:`~._call.Call`'s steps, sync or async.

``AsyncMeshTransport`` and ``MeshTransport`` hand every keyword argument to one inner
``AsyncHTTPTransport`` / ``HTTPTransport`` (``verify``, ``cert``, ``http2``, ``limits``, ``proxy``,
``retries``, ...). One shared pool rather than one per endpoint: httpcore already keeps
connections per origin inside a pool, ``limits`` then means what it means with plain httpx (the
whole transport), and hosts that are not mesh services use the very same pool, so the transport
is a drop-in in every respect.

Each driver is one loop over the call's steps: send, sleep, look up, answer or raise. What to
do next is always the call's decision, made in one place for both drivers; what is left twice
below is only the difference between ``await x()`` and ``x()``.

A mirrored call's copy (:class:`~._mirror.Mirror`) is handed off before the first try to a task
of the event loop or a mirror thread (:mod:`._shadow`) and never waited for. Copies use inner
transports of their own, so a hung mirror target can hold none of the pool the real calls use.
"""

from __future__ import annotations

import contextlib
import math
import queue
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Self

import anyio

from .._runtime import MeshRuntime, get_runtime
from ..identity import MeshClientContext, identity_mismatch, service_id
from ..telemetry import ClientSpans, TrySpan
from ._call import RETRY_AFTER_STATUSES, Call
from ._hedge import HedgedCall, Try
from ._metrics import UpstreamMetrics
from ._mirror import Mirror
from ._planner import CallPlanner
from ._protocols import (
    AsyncTransportLike,
    Binding,
    Req,
    Resp,
    ResponseLike,
    SyncTransportLike,
)
from ._refusal import Refusal
from ._shadow import AsyncMirrorTasks, SyncMirrorWorkers
from ._steps import WAIT, Done, Fail, Resolve, Respond, Send, Sleep, Step, Wait
from ._upstream import Upstream

if TYPE_CHECKING:  # only hedged calls use them: not imported for every service
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["AsyncMeshShell", "SyncMeshShell"]

#: A retried answer's body is read (so its connection returns to the pool) up to this size.
DRAIN_LIMIT = 64 * 1024

#: How long a call without a deadline waits for this service's first certificate.
IDENTITY_WAIT = 10.0

#: ``getaddrinfo``'s answer, or ``None`` when the lookup failed.
_Infos = Sequence[tuple[object, ...]] | None

#: What a hedged call's try came back with: its answer, or the error it raised.
_Result = tuple[Try, Resp | Exception]


def _drainable(response: ResponseLike) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


class _Shell(Generic[Req, Resp]):
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


class AsyncMeshShell(_Shell[Req, Resp]):
    """The async transport's behaviour; bound to a :class:`Binding` by a subclass."""

    def __init__(self, *, runtime: MeshRuntime | None = None, **kwargs: object) -> None:
        self._inner: AsyncTransportLike[Req, Resp] = self._lib.async_transport(**kwargs)
        self._secure_inners: dict[str, AsyncTransportLike[Req, Resp]] = {}
        self._mirror_tasks = AsyncMirrorTasks()
        self._mirror_inners: dict[str, AsyncTransportLike[Req, Resp]] = {}
        super().__init__(runtime, kwargs)

    async def _secure(self, call: Call, request: Req) -> AsyncTransportLike[Req, Resp]:
        """The inner transport of ``call``'s service for an ``https://`` try under mTLS."""
        expected = self._expected_id(call)
        inner = self._secure_inners.get(expected)
        if inner is None:
            wait = self._identity_wait(call)
            if wait is not None and await self._planner.runtime.identity.wait_async(wait) is None:
                raise self._no_identity(call, request, wait)
            inner = self._lib.async_transport(verify=self._context(expected), **self._secure_kwargs)
            self._secure_inners[expected] = inner
        return inner

    async def _with_token(self, call: Call, send: Send) -> Send:
        """``send`` carrying this service's token for ``call``'s service. The first call for
        a service makes it: waiting (bounded by the call's time left) for this service's
        first certificate, and asking the control plane in a worker thread, never on the
        loop. No token to be had (no identity, the control plane down): sent without."""
        minter = self._minter
        assert minter is not None
        audience = self._expected_id(call)
        token = minter.cached(audience)
        if token is None:
            wait = self._identity_wait(call)
            if wait is not None:
                await self._planner.runtime.identity.wait_async(wait)
            if minter.needs_io:
                left = call.remaining(self._planner.clock())
                with anyio.move_on_after(IDENTITY_WAIT if left is None else max(left, 0.0)):
                    token = await anyio.to_thread.run_sync(
                        minter.token_for, audience, abandon_on_cancel=True
                    )
            else:
                token = minter.token_for(audience)
        return self._tokened(send, token)

    async def handle_async_request(self, request: Req) -> Resp:
        call = self._plan(request)
        if call is None:
            return await self._passthrough(request)
        if call.hedged:
            assert isinstance(call, HedgedCall)
            return await self._hedged(call, request)
        lib, clock = self._lib, self._planner.clock
        step: Step = self._start(call, request)
        if call.mirror is not None:
            self._mirror(call.mirror, request)
        while True:
            if isinstance(step, Send):
                send = step
                if not self._mtls:
                    inner = self._inner
                elif send.endpoint.scheme == "https":
                    inner = await self._secure(call, request)
                else:
                    inner = self._inner
                    if self._minter is not None:
                        send = await self._with_token(call, send)
                traced = None
                if call.try_started >= self._spans.next_check:  # else tracing is off
                    traced = self._spans.begin(call, send)
                    if traced is not None:
                        send, inner = traced.send, traced.async_inner(inner)
                try:
                    response = await inner.handle_async_request(lib.outgoing(request, send))
                except lib.TransportError as exc:
                    step = self._failed(call, exc)
                    if traced is not None:
                        traced.failed(exc, step, call)
                    if isinstance(step, Fail):
                        raise self._error(step, request, self._explained(exc, request))  # noqa: B904
                    continue
                except BaseException as exc:
                    call.abandoned(clock())
                    if traced is not None:
                        traced.failed(exc, None, call)
                    raise
                outcome = self._answered(call, response)
                if traced is not None:
                    traced.answered(response.status_code, outcome, call)
                if isinstance(outcome, Done):
                    lib.track_async(response, call, outcome.endpoint)
                    return response
                await self._discard(response)
                call.release(send.endpoint)
                step = outcome
            elif isinstance(step, Sleep):
                await anyio.sleep(step.seconds)
                step = call.slept(clock())
            elif isinstance(step, Resolve):
                infos = await self._lookup(step)
                step = call.resolved(infos, clock())
            elif isinstance(step, Respond):
                self._spans.fault(call, step.status)
                return lib.fault_response(step.status)
            else:
                raise self._error(step, request)

    async def _prepare(
        self, call: Call, send: Send, request: Req
    ) -> tuple[Send, AsyncTransportLike[Req, Resp], TrySpan | None]:
        """A hedged call's try as the plain loop makes it: the inner transport (mTLS or
        not), the identity token, and the try's span while tracing is on."""
        if not self._mtls:
            inner = self._inner
        elif send.endpoint.scheme == "https":
            inner = await self._secure(call, request)
        else:
            inner = self._inner
            if self._minter is not None:
                send = await self._with_token(call, send)
        traced = None
        if call.try_started >= self._spans.next_check:  # else tracing is off
            traced = self._spans.begin(call, send)
            if traced is not None:
                send, inner = traced.send, traced.async_inner(inner)
        return send, inner, traced

    async def _hedged(self, call: HedgedCall, request: Req) -> Resp:
        """A hedged call: its tries are tasks of one task group (asyncio or trio alike), so
        the call can take the first usable answer while the others are still out. The
        losers are cancelled: httpcore closes a connection whose request was cancelled and
        the pool goes on without it. Nothing is raised inside the task group (anyio would
        wrap it in an exception group): the race returns the answer or the error."""
        lib, clock = self._lib, self._planner.clock
        step: Step = self._start(call, request)
        if call.mirror is not None:  # a copy for the mirror target, as for a plain call
            self._mirror(call.mirror, request)
        while not isinstance(step, Send):  # a lookup, an injected delay or abort first
            if isinstance(step, Sleep):
                await anyio.sleep(step.seconds)
                step = call.slept(clock())
            elif isinstance(step, Resolve):
                step = call.resolved(await self._lookup(step), clock())
            elif isinstance(step, Respond):
                self._spans.fault(call, step.status)
                return lib.fault_response(step.status)
            else:
                raise self._error(step, request)
        results_in, results = anyio.create_memory_object_stream[_Result[Resp]](math.inf)
        spans: dict[Try, TrySpan] = {}
        try:
            async with anyio.create_task_group() as tasks:
                outcome = await self._race(call, request, step, tasks, results_in, results, spans)
                if call.inflight:
                    tasks.cancel_scope.cancel()  # the losers
        except BaseException:
            call.abandoned(clock())  # the caller's own cancellation: every try released
            raise
        finally:
            if call.inflight or spans or results.statistics().current_buffer_used:
                with anyio.CancelScope(shield=True):
                    await self._settle(call, results, spans)
            results_in.close()
            results.close()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _race(
        self,
        call: HedgedCall,
        request: Req,
        step: Step | Wait | Done,
        tasks: TaskGroup,
        results_in: MemoryObjectSendStream[_Result[Resp]],
        results: MemoryObjectReceiveStream[_Result[Resp]],
        spans: dict[Try, TrySpan],
    ) -> Resp | Exception:
        """Carry out a hedged call's steps until it has its answer (or its error)."""
        lib, clock = self._lib, self._planner.clock
        try:
            while True:
                if isinstance(step, Send):
                    tried = call.latest
                    assert tried is not None
                    send, inner, traced = await self._prepare(call, step, request)
                    if traced is not None:
                        spans[tried] = traced
                    tasks.start_soon(_send_async, inner, lib.outgoing(request, send), tried,
                                     results_in)
                    step = WAIT
                elif isinstance(step, Wait):
                    item = None
                    with anyio.move_on_after(call.hedge_wait(clock())):
                        item = await results.receive()
                    if item is None:  # the hedge is due
                        step = call.hedge_due(clock()) or WAIT
                        continue
                    tried, result = item
                    traced = spans.pop(tried, None)
                    outcome = self._reported(call, tried, result, request)
                    if traced is not None:
                        if isinstance(result, Exception):
                            traced.failed(result, outcome, call)
                        else:
                            traced.answered(result.status_code, outcome, call)
                    if isinstance(outcome, Exception):
                        return outcome
                    if isinstance(outcome, Fail):
                        assert isinstance(result, Exception), "only a failed try fails the call"
                        return self._error(outcome, request, self._explained(result, request))
                    if not isinstance(result, Exception):
                        if isinstance(outcome, Done):
                            lib.track_async(result, call, outcome.endpoint)
                            return result
                        await self._discard(result)
                        call.release(tried.endpoint)
                    step = outcome
                elif isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    step = call.slept(clock())
                elif isinstance(step, Fail):
                    return self._error(step, request)
                else:  # pragma: no cover - Resolve, Respond and Done come before the race
                    raise AssertionError(f"unexpected step in a hedge race: {step!r}")
        except Exception as exc:  # making a try failed (no certificate of this service's yet)
            call.abandoned(clock())
            return exc

    async def _settle(
        self,
        call: HedgedCall,
        results: MemoryObjectReceiveStream[_Result[Resp]],
        spans: dict[Try, TrySpan],
    ) -> None:
        """After the race: late answers are closed, and the tries still in flight lost."""
        while True:
            try:
                _, result = results.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            if not isinstance(result, Exception):
                await self._discard(result)
        now = self._planner.clock()
        for tried in list(call.inflight):
            call.cancelled(tried, now)
        for traced in spans.values():
            traced.lost()

    def _mirror(self, mirror: Mirror, request: Req) -> None:
        """Hand the copy to a task of its own; the call goes on at once."""
        if not self._mirror_tasks.spawn(lambda: self._shadow(mirror, request)):
            mirror.abandoned(self._planner.clock())

    async def _shadow(self, mirror: Mirror, request: Req) -> None:
        """Send the copy once and discard its answer. Every error ends here, counted: nothing
        awaits this task, so nothing else could see it."""
        lib, clock = self._lib, self._planner.clock
        send = mirror.begin(clock())
        if send is None:
            return
        try:
            key = self._mirror_key(mirror, send)
            if key is None:
                mirror.failed(None, clock())
                return
            inner = self._mirror_inners.get(key)
            if inner is None:
                inner = lib.async_transport(**self._mirror_kwargs(key))
                self._mirror_inners[key] = inner
            outgoing = lib.outgoing(request, self._mirror_tokened(mirror, send))
            response = await inner.handle_async_request(outgoing)
        except Exception as exc:
            mirror.failed(lib.classify(exc), clock())
            return
        except BaseException:
            mirror.abandoned(clock())
            raise
        status, at = response.status_code, clock()
        try:
            with contextlib.suppress(Exception):
                await self._discard(response)
        finally:
            mirror.answered(status, at)

    async def _close_mirrors(self) -> None:
        """Cancel the copies in flight (bounded wait), then close their inner transports."""
        await self._mirror_tasks.aclose()
        inners, self._mirror_inners = list(self._mirror_inners.values()), {}
        for inner in inners:
            await inner.aclose()

    async def _passthrough(self, request: Req) -> Resp:
        measure = self._measure(request)
        if measure is None:
            return await self._inner.handle_async_request(request)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._measured(request, measure, "error")
            raise
        self._measured(request, measure, response.status_code)
        return response

    async def _discard(self, response: Resp) -> None:
        """Close a retried answer; a small body is read first so the connection is reused
        (bounded in time by the try's read timeout)."""
        try:
            if _drainable(response):
                await response.aread()
        except self._lib.TransportError:
            pass
        finally:
            await response.aclose()

    @staticmethod
    async def _lookup(step: Resolve) -> _Infos:
        """In a worker thread (anyio's), so the event loop never waits for DNS."""
        try:
            return await anyio.getaddrinfo(step.host, step.port, type=socket.SOCK_STREAM)
        except OSError:
            return None

    async def aclose(self) -> None:
        await self._close_mirrors()
        for secure in self._secure_inners.values():
            await secure.aclose()
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._close_mirrors()
        for secure in self._secure_inners.values():
            await secure.aclose()
        await self._inner.__aexit__(exc_type, exc_value, traceback)


class SyncMeshShell(_Shell[Req, Resp]):
    """The sync transport's behaviour. Without cancellation, a try's time limit is enforced
    by capping each of its connect, write, read and pool timeouts (as ``requests`` does)."""

    def __init__(self, *, runtime: MeshRuntime | None = None, **kwargs: object) -> None:
        self._inner: SyncTransportLike[Req, Resp] = self._lib.sync_transport(**kwargs)
        self._secure_inners: dict[str, SyncTransportLike[Req, Resp]] = {}
        self._mirror_workers = SyncMirrorWorkers(self._close_mirror_inners)
        self._mirror_inners: dict[str, SyncTransportLike[Req, Resp]] = {}
        self._mirror_lock = threading.Lock()
        super().__init__(runtime, kwargs)

    def _secure(self, call: Call, request: Req) -> SyncTransportLike[Req, Resp]:
        """The inner transport of ``call``'s service for an ``https://`` try under mTLS."""
        expected = self._expected_id(call)
        inner = self._secure_inners.get(expected)
        if inner is None:
            wait = self._identity_wait(call)
            if wait is not None and self._planner.runtime.identity.wait(wait) is None:
                raise self._no_identity(call, request, wait)
            inner = self._lib.sync_transport(verify=self._context(expected), **self._secure_kwargs)
            self._secure_inners[expected] = inner
        return inner

    def _with_token(self, call: Call, send: Send) -> Send:
        """As the async driver's, in the calling thread."""
        minter = self._minter
        assert minter is not None
        audience = self._expected_id(call)
        token = minter.cached(audience)
        if token is None:
            wait = self._identity_wait(call)
            if wait is not None:
                self._planner.runtime.identity.wait(wait)
            token = minter.token_for(audience)
        return self._tokened(send, token)

    def handle_request(self, request: Req) -> Resp:
        call = self._plan(request)
        if call is None:
            return self._passthrough(request)
        if call.hedged:
            assert isinstance(call, HedgedCall)
            return self._hedged(call, request)
        lib, clock = self._lib, self._planner.clock
        step: Step = self._start(call, request)
        if call.mirror is not None:
            self._mirror(call.mirror, request)
        while True:
            if isinstance(step, Send):
                send = step
                if not self._mtls:
                    inner = self._inner
                elif send.endpoint.scheme == "https":
                    inner = self._secure(call, request)
                else:
                    inner = self._inner
                    if self._minter is not None:
                        send = self._with_token(call, send)
                traced = None
                if call.try_started >= self._spans.next_check:  # else tracing is off
                    traced = self._spans.begin(call, send)
                    if traced is not None:
                        send, inner = traced.send, traced.sync_inner(inner)
                try:
                    response = inner.handle_request(lib.outgoing(request, send))
                except lib.TransportError as exc:
                    step = self._failed(call, exc)
                    if traced is not None:
                        traced.failed(exc, step, call)
                    if isinstance(step, Fail):
                        raise self._error(step, request, self._explained(exc, request))  # noqa: B904
                    continue
                except BaseException as exc:
                    call.abandoned(clock())
                    if traced is not None:
                        traced.failed(exc, None, call)
                    raise
                outcome = self._answered(call, response)
                if traced is not None:
                    traced.answered(response.status_code, outcome, call)
                if isinstance(outcome, Done):
                    lib.track_sync(response, call, outcome.endpoint)
                    return response
                self._discard(response)
                call.release(send.endpoint)
                step = outcome
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = call.slept(clock())
            elif isinstance(step, Resolve):
                step = call.resolved(self._lookup(step), clock())
            elif isinstance(step, Respond):
                self._spans.fault(call, step.status)
                return lib.fault_response(step.status)
            else:
                raise self._error(step, request)

    def _prepare(
        self, call: Call, send: Send, request: Req
    ) -> tuple[Send, SyncTransportLike[Req, Resp], TrySpan | None]:
        """As the async driver's."""
        if not self._mtls:
            inner = self._inner
        elif send.endpoint.scheme == "https":
            inner = self._secure(call, request)
        else:
            inner = self._inner
            if self._minter is not None:
                send = self._with_token(call, send)
        traced = None
        if call.try_started >= self._spans.next_check:  # else tracing is off
            traced = self._spans.begin(call, send)
            if traced is not None:
                send, inner = traced.send, traced.sync_inner(inner)
        return send, inner, traced

    def _hedged(self, call: HedgedCall, request: Req) -> Resp:
        """A hedged call, sync: each try runs in a thread of its own while the calling thread
        waits for the first report (or the hedge's delay). A blocking socket cannot be
        cancelled from another thread, so a loser runs on until it ends (each try is capped
        by the deadline and the per-try timeout, as every try is): then its thread closes
        the answer and releases the endpoint itself."""
        lib, clock = self._lib, self._planner.clock
        step: Step = self._start(call, request)
        if call.mirror is not None:  # a copy for the mirror target, as for a plain call
            self._mirror(call.mirror, request)
        while not isinstance(step, Send):
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                step = call.slept(clock())
            elif isinstance(step, Resolve):
                step = call.resolved(self._lookup(step), clock())
            elif isinstance(step, Respond):
                self._spans.fault(call, step.status)
                return lib.fault_response(step.status)
            else:
                raise self._error(step, request)
        race = _SyncRace[Resp]()
        spans: dict[Try, TrySpan] = {}
        try:
            outcome = self._race(call, request, step, race, spans)
        except BaseException:
            with race.lock:
                call.abandoned(clock())
            raise
        finally:
            self._settle(call, race, spans)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _race(
        self,
        call: HedgedCall,
        request: Req,
        step: Step | Wait | Done,
        race: _SyncRace[Resp],
        spans: dict[Try, TrySpan],
    ) -> Resp | Exception:
        lib, clock = self._lib, self._planner.clock
        try:
            while True:
                if isinstance(step, Send):
                    tried = call.latest
                    assert tried is not None
                    send, inner, traced = self._prepare(call, step, request)
                    if traced is not None:
                        spans[tried] = traced
                    threading.Thread(
                        target=self._send_sync,
                        args=(call, inner, lib.outgoing(request, send), tried, race, traced),
                        name=f"asgimesh-try-{call.upstream.name}",
                        daemon=True,
                    ).start()
                    step = WAIT
                elif isinstance(step, Wait):
                    try:
                        tried, result = race.results.get(timeout=call.hedge_wait(clock()))
                    except queue.Empty:  # the hedge is due
                        step = call.hedge_due(clock()) or WAIT
                        continue
                    traced = spans.pop(tried, None)
                    outcome = self._reported(call, tried, result, request)
                    if traced is not None:
                        if isinstance(result, Exception):
                            traced.failed(result, outcome, call)
                        else:
                            traced.answered(result.status_code, outcome, call)
                    if isinstance(outcome, Exception):
                        return outcome
                    if isinstance(outcome, Fail):
                        assert isinstance(result, Exception), "only a failed try fails the call"
                        return self._error(outcome, request, self._explained(result, request))
                    if not isinstance(result, Exception):
                        if isinstance(outcome, Done):
                            lib.track_sync(result, call, outcome.endpoint)
                            return result
                        self._discard(result)
                        call.release(tried.endpoint)
                    step = outcome
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = call.slept(clock())
                elif isinstance(step, Fail):
                    return self._error(step, request)
                else:  # pragma: no cover - Resolve, Respond and Done come before the race
                    raise AssertionError(f"unexpected step in a hedge race: {step!r}")
        except Exception as exc:  # making a try failed (no certificate of this service's yet)
            with race.lock:
                call.abandoned(clock())
            return exc

    def _send_sync(
        self,
        call: HedgedCall,
        inner: SyncTransportLike[Req, Resp],
        request: Req,
        tried: Try,
        race: _SyncRace[Resp],
        traced: TrySpan | None,
    ) -> None:
        """One try of a hedged call, in its own thread: its result goes to the race, or, the
        race being over, its answer is closed here and the try released as a loser."""
        result: Resp | Exception
        try:
            result = inner.handle_request(request)
        except Exception as exc:
            result = exc
        with race.lock:
            over = race.over
            if not over:
                race.results.put((tried, result))
        if over:
            self._lose(call, tried, result, race, traced)

    def _lose(
        self,
        call: HedgedCall,
        tried: Try,
        result: Resp | Exception,
        race: _SyncRace[Resp],
        traced: TrySpan | None,
    ) -> None:
        failed = isinstance(result, Exception)
        if not isinstance(result, Exception):
            self._discard(result)
        with race.lock:
            call.cancelled(tried, self._planner.clock(), failed=failed)
        if traced is not None:
            traced.lost()

    def _settle(self, call: HedgedCall, race: _SyncRace[Resp], spans: dict[Try, TrySpan]) -> None:
        """After the race: answers that came meanwhile are closed; tries still out are left
        to their threads, which release them when they end."""
        with race.lock:
            race.over = True
            late: list[_Result[Resp]] = []
            while True:
                try:
                    late.append(race.results.get_nowait())
                except queue.Empty:
                    break
        for tried, result in late:
            self._lose(call, tried, result, race, spans.pop(tried, None))

    def _mirror(self, mirror: Mirror, request: Req) -> None:
        """Queue the copy for a mirror thread; the call goes on at once."""
        clock = self._planner.clock
        if not self._mirror_workers.submit(
            lambda: self._shadow(mirror, request), lambda: mirror.abandoned(clock())
        ):
            mirror.abandoned(clock())

    def _shadow(self, mirror: Mirror, request: Req) -> None:
        """As the async driver's, in a mirror thread. A copy that waited in the queue past its
        time limit is dropped unsent (:meth:`Mirror.begin`)."""
        lib, clock = self._lib, self._planner.clock
        send = mirror.begin(clock())
        if send is None:
            return
        try:
            key = self._mirror_key(mirror, send)
            if key is None:
                mirror.failed(None, clock())
                return
            with self._mirror_lock:
                inner = self._mirror_inners.get(key)
                if inner is None:
                    inner = lib.sync_transport(**self._mirror_kwargs(key))
                    self._mirror_inners[key] = inner
            response = inner.handle_request(
                lib.outgoing(request, self._mirror_tokened(mirror, send))
            )
        except Exception as exc:
            mirror.failed(lib.classify(exc), clock())
            return
        except BaseException:
            mirror.abandoned(clock())
            raise
        status, at = response.status_code, clock()
        try:
            with contextlib.suppress(Exception):
                self._discard(response)
        finally:
            mirror.answered(status, at)

    def _close_mirror_inners(self) -> None:
        """Once no mirror thread is left (closing never pulls a pool from under one)."""
        with self._mirror_lock:
            inners, self._mirror_inners = list(self._mirror_inners.values()), {}
        for inner in inners:
            inner.close()

    def _passthrough(self, request: Req) -> Resp:
        measure = self._measure(request)
        if measure is None:
            return self._inner.handle_request(request)
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            self._measured(request, measure, "error")
            raise
        self._measured(request, measure, response.status_code)
        return response

    def _discard(self, response: Resp) -> None:
        try:
            if _drainable(response):
                response.read()
        except self._lib.TransportError:
            pass
        finally:
            response.close()

    @staticmethod
    def _lookup(step: Resolve) -> _Infos:
        try:
            return socket.getaddrinfo(step.host, step.port, type=socket.SOCK_STREAM)
        except OSError:
            return None

    def close(self) -> None:
        self._mirror_workers.close()
        for secure in self._secure_inners.values():
            secure.close()
        self._inner.close()

    def __enter__(self) -> Self:
        self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self._mirror_workers.close()
        for secure in self._secure_inners.values():
            secure.close()
        self._inner.__exit__(exc_type, exc_value, traceback)


async def _send_async(
    inner: AsyncTransportLike[Req, Resp],
    request: Req,
    tried: Try,
    results: MemoryObjectSendStream[_Result[Resp]],
) -> None:
    """One try of a hedged call, as a task: its answer or error goes to the race. Its
    cancellation (it lost) is not caught: the task group absorbs it."""
    result: Resp | Exception
    try:
        result = await inner.handle_async_request(request)
    except Exception as exc:
        result = exc
    results.send_nowait((tried, result))


class _SyncRace(Generic[Resp]):
    """What a sync hedged call's threads share: their results, and whether the race is over
    (a try that ends after it is a loser, released by its own thread)."""

    __slots__ = ("lock", "over", "results")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.over = False
        self.results: queue.SimpleQueue[_Result[Resp]] = queue.SimpleQueue()
