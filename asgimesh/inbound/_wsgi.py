"""``MeshWSGIMiddleware``: the inbound mesh for WSGI apps (Flask, Django, ... under gunicorn).

The same :class:`~asgimesh.inbound._core.InboundCore` decides each request as for ASGI; only the
plumbing differs. No ASGI adapter in between: the app is called in the server's own thread,
and its response iterable is handed back wrapped, not read, so a streamed body stays streamed.
The request counts as finished (status, duration, span end) when that iterable is exhausted, or
fails, or is closed by the server, whichever comes first; the app's ``close()`` is always called
through. The :class:`~asgimesh.MeshContext` is current while the app runs and while each chunk of
its body is produced, so outbound calls made from a streaming generator see it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any

from .._context import MeshContext, _current
from .._runtime import MeshRuntime, get_runtime
from ..telemetry._inbound import InboundTelemetry
from ..telemetry._otel import SpanScope, environ_attributes
from ._admin import Admin
from ._core import RESPONSE_HEADER, InboundCore, environ_fields

__all__ = ["MeshWSGIMiddleware"]

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
        self._core = InboundCore(Admin(self.runtime))
        self._telemetry = InboundTelemetry(self.runtime)
        self._on_request = self.runtime.on_request

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self._on_request is not None:
            self._on_request()  # serverless policy refresh: starts one if due, never waits
        started = time.monotonic()
        method: str = environ.get("REQUEST_METHOD", "GET")
        path: str = environ.get("PATH_INFO", "") or "/"
        client: str | None = environ.get("REMOTE_ADDR")
        decision = self._core.decide(method, path, environ_fields(environ), client, started)
        context = decision.context
        answer = decision.answer
        if answer is not None:
            headers = [*answer.headers, *decision.response_headers]
            headers.append(("content-length", str(len(answer.body))))
            start_response(_status_line(answer.status), headers)
            if context is not None:
                self._telemetry.finish(
                    context, method, path, answer.status, time.monotonic() - started
                )
            return [b"" if method == "HEAD" else answer.body]

        assert context is not None
        telemetry = self._telemetry
        span: SpanScope | None = None
        tracer = telemetry.spans.tracer(started)
        if tracer is not None:
            span = telemetry.spans.start(tracer, context, method, environ_attributes(environ))
        call = _Call(telemetry, context, method, path, client, started, span, start_response)
        call.extra = list(decision.response_headers)
        token = _current.set(context)
        try:
            result = self.app(environ, call.start_response)
        except Exception as exc:
            call.finish(exc)
            raise
        finally:
            _current.reset(token)
            if span is not None:
                telemetry.spans.detach(span)
        return _Body(result, call)


class _Call:
    """One request's state: the status the app gave, and recording it exactly once."""

    __slots__ = (
        "_start_response",
        "client",
        "context",
        "done",
        "extra",
        "method",
        "path",
        "span",
        "started",
        "status",
        "telemetry",
    )

    def __init__(
        self,
        telemetry: InboundTelemetry,
        context: MeshContext,
        method: str,
        path: str,
        client: str | None,
        started: float,
        span: SpanScope | None,
        start_response: StartResponse,
    ) -> None:
        self.telemetry = telemetry
        self.context = context
        self.method = method
        self.path = path
        self.client = client
        self.started = started
        self.span = span
        self._start_response = start_response
        self.extra: list[tuple[str, str]] = []
        self.status = 500
        self.done = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None
    ) -> Callable[[bytes], object]:
        try:
            self.status = int(status[:3])
        except ValueError:
            self.status = 500
        if not any(name.lower() == RESPONSE_HEADER for name, _ in headers):
            headers = [*headers, *self.extra]
        if exc_info is not None:
            return self._start_response(status, headers, exc_info)
        return self._start_response(status, headers)

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.telemetry.finish(
            self.context,
            self.method,
            self.path,
            500 if error is not None else self.status,
            time.monotonic() - self.started,
            self.span,
            error,
            self.client,
        )


class _Body:
    """The app's response iterable, passed through lazily; ``close()`` is honoured."""

    __slots__ = ("_call", "_iterator", "_result")

    def __init__(self, result: Iterable[bytes], call: _Call) -> None:
        self._result = result
        self._call = call
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = iter(self._result)
        token = _current.set(self._call.context)
        try:
            return next(self._iterator)
        except StopIteration:
            self._call.finish()
            raise
        except Exception as exc:
            self._call.finish(exc)
            raise
        finally:
            _current.reset(token)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._call.finish()
