"""``MeshWSGIMiddleware``: the inbound mesh for WSGI apps (Flask, Django, ... under gunicorn).

The same :class:`~asgimesh.inbound._decide.InboundCore` decides each request as for ASGI; only the
plumbing differs. No ASGI adapter in between: the app is called in the server's own thread,
and its response iterable is handed back wrapped, not read, so a streamed body stays streamed.
The request counts as finished (status, duration, span end) when that iterable is exhausted, or
fails, or is closed by the server, whichever comes first; the app's ``close()`` is always called
through. The :class:`~asgimesh.MeshContext` is current while the app runs and while each chunk of
its body is produced, so outbound calls made from a streaming generator see it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from .._context import _current
from .._runtime import MeshRuntime, get_runtime
from ..telemetry import environ_attributes
from ._decide import InboundCore, environ_fields
from ._exchange import RESPONSE_HEADER, InboundExchange

__all__ = ["PEER_CHAIN", "MeshWSGIMiddleware"]

#: Where a WSGI server hands over the client certificate chain (PEM strings, leaf first) that it
#: verified in the TLS handshake (``asgimesh serve --wsgi`` does).
PEER_CHAIN = "asgimesh.client_cert_chain"

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | None
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class MeshWSGIMiddleware:
    """Wrap a WSGI app in the mesh: ``app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app)``.

    ``runtime`` defaults to the process's shared runtime (:func:`asgimesh.get_runtime`).
    """

    def __init__(self, app: WSGIApp, *, runtime: MeshRuntime | None = None) -> None:
        self.app = app
        self.runtime = runtime if runtime is not None else get_runtime()
        self._core = InboundCore.for_runtime(self.runtime, app)
        #: Until the first request shows the address this process serves on (for reports).
        self._unnamed = True

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        core = self._core
        if core.on_request is not None:
            core.on_request()  # serverless policy refresh: starts one if due, never waits
        if self._unnamed:
            self._unnamed = False
            self.runtime.reporter.serving_on(environ.get("SERVER_NAME"), environ.get("SERVER_PORT"))
        method: str = environ.get("REQUEST_METHOD", "GET")
        path: str = environ.get("PATH_INFO", "") or "/"
        exchange = core.decide(
            method,
            path,
            environ_fields(environ),
            environ.get("REMOTE_ADDR"),
            peer_chain=environ.get(PEER_CHAIN) if core.authenticator is not None else None,
        )
        answer = exchange.answer
        if answer is not None:
            try:
                headers = [*answer.headers, *exchange.response_headers]
                headers.append(("content-length", str(len(answer.body))))
                start_response(_status_line(answer.status), headers)
            finally:
                exchange.finish()
            return [b"" if method == "HEAD" else answer.body]

        responder = _Responder(start_response, exchange)
        try:
            exchange.enter(environ_attributes, environ)
            result = self.app(environ, responder.start_response)
        except BaseException as exc:
            exchange.finish(exc if isinstance(exc, Exception) else None)
            raise
        finally:
            exchange.leave()
        return _Body(result, exchange)


class _Responder:
    """The app's ``start_response``: tells the exchange the status, adds the request id."""

    __slots__ = ("_exchange", "_start_response")

    def __init__(self, start_response: StartResponse, exchange: InboundExchange) -> None:
        self._start_response = start_response
        self._exchange = exchange

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None
    ) -> Callable[[bytes], object]:
        exchange = self._exchange
        try:
            exchange.status = int(status[:3])
        except ValueError:
            exchange.status = 500
        for name, _ in headers:  # a loop, not any(genexpr): no generator per response
            if name.lower() == RESPONSE_HEADER:
                break  # the app set its own: leave it
        else:
            assert exchange.context is not None
            headers = [*headers, (RESPONSE_HEADER, exchange.context.request_id)]
        if exc_info is not None:
            return self._start_response(status, headers, exc_info)
        return self._start_response(status, headers)


class _Body:
    """The app's response iterable, passed through lazily; ``close()`` is honoured.

    The request is finished when the iterable is exhausted, fails, or is closed by the server,
    whichever comes first (the exchange records it once).
    """

    __slots__ = ("_exchange", "_iterator", "_result")

    def __init__(self, result: Iterable[bytes], exchange: InboundExchange) -> None:
        self._result = result
        self._exchange = exchange
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._result)
        token = _current.set(self._exchange.context)
        try:
            return next(self._iterator)
        except StopIteration:
            self._exchange.finish()
            raise
        except Exception as exc:
            self._exchange.finish(exc)
            raise
        finally:
            _current.reset(token)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.finish()
