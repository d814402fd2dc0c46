"""The sync transport's driver: one loop over a call's steps, and the race of a hedged call's
tries in threads (see :mod:`._shell` for what both drivers share)."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from types import TracebackType
from typing import Generic, Self

from .._runtime import MeshRuntime
from ..telemetry import TrySpan
from ._call import Call
from ._hedge import HedgedCall, Try
from ._mirror import Mirror
from ._protocols import Req, Resp, SyncTransportLike
from ._shadow import SyncMirrorWorkers
from ._shell import Infos, Shell, TryResult, drainable
from ._steps import WAIT, Done, Fail, Resolve, Respond, Send, Sleep, Step, Wait

__all__ = ["SyncMeshShell"]


class SyncMeshShell(Shell[Req, Resp]):
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
                send, inner, traced = self._prepare(call, step, request)
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
        """One try, made ready (plain and hedged calls alike), as the async driver's."""
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
            late: list[TryResult[Resp]] = []
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
            if drainable(response):
                response.read()
        except self._lib.TransportError:
            pass
        finally:
            response.close()

    @staticmethod
    def _lookup(step: Resolve) -> Infos:
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


class _SyncRace(Generic[Resp]):
    """What a sync hedged call's threads share: their results, and whether the race is over
    (a try that ends after it is a loser, released by its own thread)."""

    __slots__ = ("lock", "over", "results")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.over = False
        self.results: queue.SimpleQueue[TryResult[Resp]] = queue.SimpleQueue()

