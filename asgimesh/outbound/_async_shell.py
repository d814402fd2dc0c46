"""The async transport's driver: one loop over a call's steps, and the race of a hedged call's
tries in one task group (see :mod:`._shell` for what both drivers share)."""

from __future__ import annotations

import contextlib
import math
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from .._runtime import MeshRuntime
from ..telemetry import TrySpan
from ._call import Call
from ._hedge import HedgedCall, Try
from ._mirror import Mirror
from ._protocols import AsyncTransportLike, Req, Resp
from ._shadow import AsyncMirrorTasks
from ._shell import IDENTITY_WAIT, Infos, Shell, TryResult, drainable
from ._steps import WAIT, Done, Fail, Resolve, Respond, Send, Sleep, Step, Wait

if TYPE_CHECKING:  # only hedged calls use them: not imported for every service
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["AsyncMeshShell"]


class AsyncMeshShell(Shell[Req, Resp]):
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
                send, inner, traced = await self._prepare(call, step, request)
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
        """One try, made ready (plain and hedged calls alike): the inner transport (mTLS or
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
        results_in, results = anyio.create_memory_object_stream[TryResult[Resp]](math.inf)
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
        results_in: MemoryObjectSendStream[TryResult[Resp]],
        results: MemoryObjectReceiveStream[TryResult[Resp]],
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
        results: MemoryObjectReceiveStream[TryResult[Resp]],
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
            if drainable(response):
                await response.aread()
        except self._lib.TransportError:
            pass
        finally:
            await response.aclose()

    @staticmethod
    async def _lookup(step: Resolve) -> Infos:
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



async def _send_async(
    inner: AsyncTransportLike[Req, Resp],
    request: Req,
    tried: Try,
    results: MemoryObjectSendStream[TryResult[Resp]],
) -> None:
    """One try of a hedged call, as a task: its answer or error goes to the race. Its
    cancellation (it lost) is not caught: the task group absorbs it."""
    result: Resp | Exception
    try:
        result = await inner.handle_async_request(request)
    except Exception as exc:
        result = exc
    results.send_nowait((tried, result))

