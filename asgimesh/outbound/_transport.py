"""The shells: httpx transports that run the outbound core around httpx's own transports.

``AsyncMeshTransport`` and ``MeshTransport`` hand every keyword argument to one inner
``AsyncHTTPTransport`` / ``HTTPTransport`` (``verify``, ``cert``, ``http2``, ``limits``, ``proxy``,
``retries``, ...). One shared pool rather than one per endpoint: httpcore already keeps
connections per origin inside a pool, ``limits`` then means what it means with plain httpx (the
whole transport), and hosts that are not mesh services use the very same pool, so the transport
is a drop-in in every respect. The shells only do I/O (send, sleep, resolve); every decision is
the core's (:mod:`._call`), shared by both.
"""

from __future__ import annotations

import socket
import time
from typing import Any, ClassVar

import anyio

from .._runtime import MeshRuntime, get_runtime
from ._binding import HttpBinding
from ._call import Call
from ._discovery import DnsRecords, addresses
from ._endpoint import Endpoint
from ._planner import CallPlanner, Plan
from ._refusal import Refusal
from ._upstream import Upstream

__all__ = ["AsyncMeshShell", "SyncMeshShell"]

#: A retried answer's body is read (so its connection returns to the pool) up to this size.
DRAIN_LIMIT = 64 * 1024


def _drainable(response: Any) -> bool:
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT


class _Shell:
    _lib: ClassVar[HttpBinding]

    def __init__(self, runtime: MeshRuntime | None) -> None:
        self._core = CallPlanner(runtime if runtime is not None else get_runtime())

    def _failed(self, call: Call, exc: Exception, request: Any) -> float:
        """A try raised ``exc``: the delay before the next try, else the error to raise."""
        lib = self._lib
        now = self._core.clock()
        try:
            delay = call.failed(
                lib.classify(exc), now, timed_out=isinstance(exc, lib.TimeoutException)
            )
        except Refusal as refusal:
            call.finish("error", now)
            raise lib.refusal(refusal, request) from exc
        if delay is None:
            call.finish("error", now)
            raise exc
        return delay

    def _begin(self, call: Call, request: Any) -> tuple[Endpoint, float]:
        """The endpoint for the next try and the time it starts, else the refusal to raise."""
        now = self._core.clock()
        try:
            return call.begin_try(now), now
        except Refusal as refusal:
            call.finish("error", now)
            raise self._lib.refusal(refusal, request) from None

    def _aborted(self, call: Call, endpoint: Endpoint) -> None:
        """A try ended by something other than a transport error (cancellation, a bug)."""
        call.release(endpoint)
        call.finish("error", self._core.clock())

    def _answered(
        self, call: Call, endpoint: Endpoint, response: Any, tracked: Any
    ) -> float | None:
        """A try got an HTTP answer. ``None``: it is the call's answer, its stream wrapped in
        ``tracked`` so the endpoint is released when the body is closed. Otherwise the delay
        before the next try; the shell then discards the answer."""
        now = self._core.clock()
        status = response.status_code
        retry_after = response.headers.get("retry-after") if status in (429, 503) else None
        retry = call.answered(status, retry_after, now)
        if retry is None:
            call.finish(status, now)
            response.stream = tracked(response.stream, call, endpoint)
        return retry

    def _fault_wait(self, call: Call, delay: float) -> tuple[float, bool]:
        """How long an injected delay sleeps, and whether the deadline passes first."""
        remaining = call.remaining(self._core.clock())
        if remaining is not None and delay >= remaining:
            return max(remaining, 0.0), True
        return delay, False

    def _expired(self, call: Call, request: Any) -> Exception:
        call.finish("error", self._core.clock())
        return self._lib.refusal(Refusal("deadline", call.deadline_message()), request)

    def _dns_due(self, upstream: Upstream) -> DnsRecords | None:
        """The upstream's DNS records when a lookup is due, else ``None``."""
        dns = upstream.dns
        return dns if dns is not None and dns.should_resolve(self._core.clock()) else None

    def _dns_answer(self, upstream: Upstream, dns: DnsRecords, infos: Any) -> None:
        """Apply a lookup's answer (``None``: it failed, the last answer stays)."""
        now = self._core.clock()
        if infos is None:
            dns.failed(now)
            return
        urls = dns.resolved(addresses(infos), now)
        if urls is not None:
            upstream.set_endpoints(urls, now)

    def _plan(self, request: Any) -> Plan | None:
        return self._core.plan(
            request.method,
            request.url.host,
            request.url.path,
            replayable=isinstance(request.stream, self._lib.ByteStream),
        )


class AsyncMeshShell(_Shell):
    """The async transport's behaviour; bound to an :class:`HttpBinding` by a subclass."""

    def __init__(self, *, runtime: MeshRuntime | None = None, **kwargs: Any) -> None:
        self._inner = self._lib.AsyncHTTPTransport(**kwargs)
        super().__init__(runtime)

    async def handle_async_request(self, request: Any) -> Any:
        plan = self._plan(request)
        if plan is None:
            return await self._passthrough(request)
        return await self._mesh(request, plan)

    async def _passthrough(self, request: Any) -> Any:
        core = self._core
        metrics = core.passthrough_metrics(request.url.host)
        if metrics is None:
            return await self._inner.handle_async_request(request)
        start = core.clock()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            metrics.request(request.method, "error", core.clock() - start)
            raise
        metrics.request(request.method, response.status_code, core.clock() - start)
        return response

    async def _mesh(self, request: Any, plan: Plan) -> Any:
        lib, call, clock = self._lib, plan.call, self._core.clock
        if call.upstream.dns is not None:
            await self._resolve(call.upstream)
        if plan.delay:
            await self._fault_delay(call, plan.delay, request)
        if plan.abort is not None:
            call.finish(plan.abort, clock())
            return lib.fault_response(plan.abort)
        inner = self._inner
        headers = lib.base_headers(request, call)
        while True:
            endpoint, now = self._begin(call, request)
            try:
                response = await inner.handle_async_request(
                    lib.outgoing(request, endpoint, call, headers, now)
                )
            except lib.TransportError as exc:
                await anyio.sleep(self._failed(call, exc, request))
                continue
            except BaseException:
                self._aborted(call, endpoint)
                raise
            retry = self._answered(call, endpoint, response, lib.AsyncTracked)
            if retry is None:
                return response
            await self._discard(response)
            call.release(endpoint)
            await anyio.sleep(retry)

    async def _discard(self, response: Any) -> None:
        """Close a retried answer; a small body is read first so the connection is reused
        (bounded in time by the try's read timeout)."""
        try:
            if _drainable(response):
                await response.aread()
        except self._lib.TransportError:
            pass
        finally:
            await response.aclose()

    async def _fault_delay(self, call: Call, delay: float, request: Any) -> None:
        seconds, expired = self._fault_wait(call, delay)
        await anyio.sleep(seconds)
        if expired:
            raise self._expired(call, request)

    async def _resolve(self, upstream: Upstream) -> None:
        dns = self._dns_due(upstream)
        if dns is None:
            return
        try:
            infos: Any = await anyio.getaddrinfo(dns.host, dns.port, type=socket.SOCK_STREAM)
        except OSError:
            infos = None
        self._dns_answer(upstream, dns, infos)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Any:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self._inner.__aexit__(*args)


class SyncMeshShell(_Shell):
    """The sync transport's behaviour. Without cancellation, a try's time limit is enforced
    by capping each of its connect, write, read and pool timeouts (as ``requests`` does)."""

    def __init__(self, *, runtime: MeshRuntime | None = None, **kwargs: Any) -> None:
        self._inner = self._lib.HTTPTransport(**kwargs)
        super().__init__(runtime)

    def handle_request(self, request: Any) -> Any:
        plan = self._plan(request)
        if plan is None:
            return self._passthrough(request)
        return self._mesh(request, plan)

    def _passthrough(self, request: Any) -> Any:
        core = self._core
        metrics = core.passthrough_metrics(request.url.host)
        if metrics is None:
            return self._inner.handle_request(request)
        start = core.clock()
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            metrics.request(request.method, "error", core.clock() - start)
            raise
        metrics.request(request.method, response.status_code, core.clock() - start)
        return response

    def _mesh(self, request: Any, plan: Plan) -> Any:
        lib, call, clock = self._lib, plan.call, self._core.clock
        if call.upstream.dns is not None:
            self._resolve(call.upstream)
        if plan.delay:
            self._fault_delay(call, plan.delay, request)
        if plan.abort is not None:
            call.finish(plan.abort, clock())
            return lib.fault_response(plan.abort)
        inner = self._inner
        headers = lib.base_headers(request, call)
        while True:
            endpoint, now = self._begin(call, request)
            try:
                response = inner.handle_request(lib.outgoing(request, endpoint, call, headers, now))
            except lib.TransportError as exc:
                time.sleep(self._failed(call, exc, request))
                continue
            except BaseException:
                self._aborted(call, endpoint)
                raise
            retry = self._answered(call, endpoint, response, lib.SyncTracked)
            if retry is None:
                return response
            self._discard(response)
            call.release(endpoint)
            time.sleep(retry)

    def _discard(self, response: Any) -> None:
        try:
            if _drainable(response):
                response.read()
        except self._lib.TransportError:
            pass
        finally:
            response.close()

    def _fault_delay(self, call: Call, delay: float, request: Any) -> None:
        seconds, expired = self._fault_wait(call, delay)
        time.sleep(seconds)
        if expired:
            raise self._expired(call, request)

    def _resolve(self, upstream: Upstream) -> None:
        dns = self._dns_due(upstream)
        if dns is None:
            return
        try:
            infos: Any = socket.getaddrinfo(dns.host, dns.port, type=socket.SOCK_STREAM)
        except OSError:
            infos = None
        self._dns_answer(upstream, dns, infos)

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> Any:
        self._inner.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self._inner.__exit__(*args)
