"""``MeshMiddleware``: the inbound mesh for any ASGI app, as pure ASGI.

The shell is thin: it picks the mesh's headers out of the scope, asks
:class:`~asgimesh.inbound._decide.InboundCore` what to do, and either sends the mesh's own answer or
calls the app with the request's :class:`~asgimesh.MeshContext` set as the context variable that
outbound calls read. Messages pass through one by one in both directions, so request and
response bodies stay streaming; ``lifespan`` and ``websocket`` scopes go straight to the app
(but for a WebSocket handshake that the service's authorization refuses: answered 403).
Per-request state lives in the :class:`~asgimesh.inbound._exchange.InboundExchange` made for
the call and its ``send`` wrapper (Starlette's ``GZipResponder`` pattern), never on the
middleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._runtime import MeshRuntime, get_runtime
from ..telemetry import asgi_route, scope_attributes
from ._answers import Answer
from ._decide import InboundCore, asgi_fields
from ._exchange import RESPONSE_HEADER, InboundExchange

__all__ = ["MeshMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ECHO = RESPONSE_HEADER.encode("latin-1")


class MeshMiddleware:
    """Wrap an ASGI app in the mesh: ``app = MeshMiddleware(app)``.

    ``runtime`` defaults to the process's shared runtime (:func:`asgimesh.get_runtime`), made from
    ``MESH_*`` on first use; building it here, not at the first request, lets a bad setting stop
    the server at start-up with its one-line message.
    """

    def __init__(self, app: ASGIApp, *, runtime: MeshRuntime | None = None) -> None:
        self.app = app
        self.runtime = runtime if runtime is not None else get_runtime()
        self._core = InboundCore.for_runtime(self.runtime, app)
        #: Until the first request shows the address this process serves on (for reports).
        self._unnamed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Kept short on purpose: an app's exception passes through this frame, and the server
        # that formats its traceback pays for every instruction before the ``await self.app``
        # (CPython 3.11 walks the code's positions up to it, ~50 ns each), so the decisions
        # live in :meth:`_begin` and the rare scopes in :meth:`_not_http`.
        if scope["type"] != "http":
            return await self._not_http(scope, receive, send)
        exchange = self._begin(scope)
        if exchange.answer is not None:
            return await _send_answered(send, exchange, scope["method"])
        respond = _Responder(send, exchange).send
        try:
            exchange.enter(scope_attributes, scope)
            await self.app(scope, receive, respond)
        except Exception as exc:
            # Counted as a 500 and logged, then handed to the server, which prints its
            # traceback. That traceback starts at the app's frame: this one would tell the
            # reader nothing about the app's failure, and the server pays ~20 µs to format
            # each frame (``_trim``). ``exc`` is unbound when this clause ends, so no cycle
            # (exception -> traceback -> frame -> exception) is left for the garbage
            # collector, which under a stream of failing requests costs more than everything
            # else the mesh does for them.
            _close(exchange, exc, scope)
            _trim(exc)
            raise
        except BaseException:
            # Cancellation (a client's disconnect) is not the app's failure: counted with the
            # status the response got.
            _close(exchange, None, scope)
            raise
        # The common case, inline (after the await, so it costs a traceback nothing).
        try:
            exchange.leave()
        finally:
            exchange.finish()
        return None

    def _begin(self, scope: Scope) -> InboundExchange:
        """The mesh's decision for one HTTP request: its exchange, with an answer of the
        mesh's own where the request is not to reach the app."""
        core = self._core
        if core.on_request is not None:
            core.on_request()  # serverless policy refresh: starts one if due, never waits
        if self._unnamed:
            self._unnamed = False
            server = scope.get("server")
            if server:
                self.runtime.reporter.serving_on(server[0], server[1])
        client = scope.get("client")
        return core.decide(
            scope["method"],
            scope["path"],
            asgi_fields(scope["headers"]),
            client[0] if client else None,
            peer_chain=_peer_chain(scope) if core.authenticator is not None else None,
        )

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``lifespan`` and ``websocket`` scopes: straight to the app, but for a WebSocket
        handshake that the service's authorization refuses."""
        if scope["type"] == "websocket":
            client = scope.get("client")
            refused = self._core.websocket(
                scope["path"],
                asgi_fields(scope["headers"]),
                client[0] if client else None,
                _peer_chain(scope),
            )
            if refused is not None:
                await _refuse_websocket(scope, receive, send, refused)
                return
        elif scope["type"] == "lifespan":
            receive, send = _draining_on_shutdown(receive, send, self.runtime)
        await self.app(scope, receive, send)


def _draining_on_shutdown(
    receive: Receive, send: Send, runtime: MeshRuntime
) -> tuple[Receive, Send]:
    """The lifespan's ``receive`` and ``send``: the runtime drains when the server says it is
    shutting down (before the app's own shutdown work runs), sends its last report once the
    app's shutdown is complete (in a worker thread: bounded, never on the loop), and serves
    again when a server starts it up (a test client, or a server started again)."""

    async def wrapped_receive() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            runtime.drain()
        elif message["type"] == "lifespan.startup":
            runtime.serving()
        return message

    async def wrapped_send(message: Message) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            import anyio.to_thread  # once per process life: not worth an import at start-up

            await anyio.to_thread.run_sync(runtime.stopped)
        await send(message)

    return wrapped_receive, wrapped_send


def _trim(error: BaseException) -> None:
    """Drop the middleware's own frame, the first of ``error``'s traceback when it is caught
    there; a bare ``raise`` then re-raises with the trimmed traceback."""
    tb = error.__traceback__
    if tb is not None and tb.tb_next is not None:
        error.__traceback__ = tb.tb_next


def _close(exchange: InboundExchange, error: Exception | None, scope: Scope) -> None:
    """After the app's call: leave its context, then finish the exchange whatever happens."""
    try:
        exchange.leave()
    finally:
        exchange.finish(error, asgi_route(scope) if error is not None else None)


async def _send_answered(send: Send, exchange: InboundExchange, method: str) -> None:
    """Send the mesh's own answer (a refusal, a fault, a mesh endpoint) and finish the exchange."""
    assert exchange.answer is not None
    try:
        await _send_answer(send, exchange.answer, method, exchange.response_headers)
    finally:
        exchange.finish()


def _peer_chain(scope: Scope) -> Any:
    """The client certificate chain the server verified, from the ASGI ``tls`` extension (the
    standard slot: ``asgimesh serve`` fills it, and servers that implement it work unchanged)."""
    extensions = scope.get("extensions")
    if not extensions:
        return None
    tls = extensions.get("tls")
    return tls.get("client_cert_chain") if tls else None


class _Responder:
    """The app's ``send``: tells the exchange the status and adds the request id header."""

    __slots__ = ("_exchange", "_send")

    def __init__(self, send: Send, exchange: InboundExchange) -> None:
        self._send = send
        self._exchange = exchange

    def send(self, message: Message) -> Awaitable[None]:
        # A plain function handing back the server's awaitable: no coroutine of our own per
        # message, so a streamed body costs one call per chunk and nothing more.
        if message["type"] == "http.response.start":
            exchange = self._exchange
            exchange.status = message["status"]
            headers = list(message.get("headers", ()))
            for name, _ in headers:
                if name.lower() == _ECHO:
                    break  # the app set its own: leave it
            else:
                assert exchange.context is not None
                headers.append((_ECHO, exchange.context.request_id.encode("latin-1")))
            # A copy: the app may reuse its message dicts.
            message = {**message, "headers": headers}
        return self._send(message)


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, answer: Answer) -> None:
    """Refuse a handshake: with the mesh's HTTP answer where the server offers the ASGI
    WebSocket Denial Response extension, else by closing before accepting (servers then answer
    the handshake 403)."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = _encode(answer.headers)
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send(
            {"type": "websocket.http.response.start", "status": answer.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": answer.body})
    else:
        await send({"type": "websocket.close", "code": 1008})  # policy violation


def _encode(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def _send_answer(
    send: Send, answer: Answer, method: str, extra: tuple[tuple[str, str], ...]
) -> None:
    headers = _encode(answer.headers + extra)
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else answer.body})
