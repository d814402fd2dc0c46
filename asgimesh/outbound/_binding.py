"""The binding of the transports to one httpx-like module, made once at import.

``httpx`` and its successor ``httpx2`` have the same shape but separate classes: a transport
must build *that* module's requests and responses and raise *that* module's errors, or the
client's ``except httpx2.ConnectError`` misses. :class:`HttpBinding` gathers those classes from
the module it is given and offers the transports what :class:`~._protocols.Binding` lists. It
decides nothing: which endpoint, which headers and which timeouts are the call's
(:class:`~._steps.Send`); the binding only spells them in the module's objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Generic

from ._call import Call
from ._endpoint import Endpoint
from ._protocols import AsyncTransportLike, Req, Resp, SyncTransportLike
from ._refusal import Refusal
from ._retry import Failure
from ._steps import Send

__all__ = ["HttpBinding"]


class HttpBinding(Generic[Req, Resp]):
    """One httpx-like module and the mesh's error classes for it.

    ``module`` is typed ``Any`` on purpose: this is the one place that reaches into an
    httpx-like module by name; everything past it is held to :mod:`._protocols`."""

    def __init__(
        self,
        module: Any,
        *,
        no_healthy_endpoints: type[Exception],
        deadline_exceeded: type[Exception],
        retry_budget_exhausted: type[Exception],
        circuit_open: type[Exception],
    ) -> None:
        self.module = module
        self.Request = module.Request
        self.Response = module.Response
        self.URL = module.URL
        self.ByteStream = module.ByteStream
        self.TransportError: type[Exception] = module.TransportError
        self.TimeoutException: type[Exception] = module.TimeoutException
        self._errors: dict[str, Any] = {
            "no-endpoints": no_healthy_endpoints,
            "circuit-open": circuit_open,
            "deadline": deadline_exceeded,
            "budget": retry_budget_exhausted,
            # The per-try timeout ended the call: httpx's own class, the mesh's message.
            "per-try": module.ReadTimeout,
            # MESH_MTLS=strict and a plain http:// endpoint: refused before connecting.
            "plaintext": module.ConnectError,
            # mTLS: the server's ID is not the one meant, or no certificate of our own yet.
            "identity": module.ConnectError,
            # A per-request override that is not a value (mesh-timeout: fast): the app's
            # request is at fault, as httpx says of a header it cannot send.
            "override": module.LocalProtocolError,
        }
        self._connect = (module.ConnectError, module.ConnectTimeout)
        self._timeout = (module.ReadTimeout, module.WriteTimeout)
        self._reset = (module.ReadError, module.WriteError, module.RemoteProtocolError)
        probe = module.URL("http://probe/")
        # httpx re-parses a URL to change its host (tens of microseconds); its parsed form is a
        # NamedTuple whose ``_replace`` does the same in one. Used only where that form exists.
        self._fast_urls = hasattr(getattr(probe, "_uri_reference", None), "_replace")
        self._async_tracked, self._sync_tracked = _tracked_streams(module)

    def async_transport(self, **kwargs: Any) -> AsyncTransportLike[Req, Resp]:
        transport: AsyncTransportLike[Req, Resp] = self.module.AsyncHTTPTransport(**kwargs)
        return transport

    def sync_transport(self, **kwargs: Any) -> SyncTransportLike[Req, Resp]:
        transport: SyncTransportLike[Req, Resp] = self.module.HTTPTransport(**kwargs)
        return transport

    def replayable(self, request: Req) -> bool:
        app: Any = request
        return isinstance(app.stream, self.ByteStream)

    def classify(self, exc: BaseException) -> Failure | None:
        """How a try failed, from the error the inner transport raised (``None``: not retryable
        and not the endpoint's fault, e.g. a pool timeout or an invalid request)."""
        if isinstance(exc, self._connect):
            return "connect-failure"
        if isinstance(exc, self._timeout):
            return "timeout"
        if isinstance(exc, self._reset):
            return "reset"
        return None

    def error(self, refusal: Refusal, request: Req) -> Exception:
        error: Exception = self._errors[refusal.kind](str(refusal), request=request)
        return error

    def fault_response(self, status: int) -> Resp:
        response: Resp = self.Response(
            status, headers=[(b"content-type", b"text/plain")], content=b"fault filter abort"
        )
        return response

    def outgoing(self, request: Req, send: Send) -> Req:
        """The request of one try: same method, path and body, sent to ``send.endpoint`` with
        ``send.headers`` (the ``Host`` header stays the service name) and ``send.timeout``."""
        app: Any = request
        endpoint = send.endpoint
        url = app.url
        if self._fast_urls:
            new_url = self.URL.__new__(self.URL)
            new_url._uri_reference = url._uri_reference._replace(
                scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port
            )
        else:  # pragma: no cover - an httpx without the parsed form
            new_url = url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
        extensions = app.extensions
        if send.timeout is not None:
            extensions = {**extensions, "timeout": send.timeout}
        outgoing: Req = self.Request(
            app.method, new_url, headers=send.headers, stream=app.stream, extensions=extensions
        )
        return outgoing

    def track_async(self, response: Resp, call: Call, endpoint: Endpoint) -> None:
        answer: Any = response
        answer.stream = self._async_tracked(answer.stream, call, endpoint)

    def track_sync(self, response: Resp, call: Call, endpoint: Endpoint) -> None:
        answer: Any = response
        answer.stream = self._sync_tracked(answer.stream, call, endpoint)


def _tracked_streams(module: Any) -> tuple[type[Any], type[Any]]:
    """Response streams that tell the call when the body is closed (the try is over then)."""

    class AsyncTracked(module.AsyncByteStream):  # type: ignore[misc]
        __slots__ = ("_call", "_endpoint", "_stream")

        def __init__(self, stream: Any, call: Call, endpoint: Endpoint) -> None:
            self._stream = stream
            self._call: Call | None = call
            self._endpoint = endpoint

        def __aiter__(self) -> AsyncIterator[bytes]:
            return aiter(self._stream)  # no generator of our own between the body and the app

        async def aclose(self) -> None:
            try:
                await self._stream.aclose()
            finally:
                if self._call is not None:
                    self._call.release(self._endpoint)
                    self._call = None

    class SyncTracked(module.SyncByteStream):  # type: ignore[misc]
        __slots__ = ("_call", "_endpoint", "_stream")

        def __init__(self, stream: Any, call: Call, endpoint: Endpoint) -> None:
            self._stream = stream
            self._call: Call | None = call
            self._endpoint = endpoint

        def __iter__(self) -> Iterator[bytes]:
            return iter(self._stream)

        def close(self) -> None:
            try:
                self._stream.close()
            finally:
                if self._call is not None:
                    self._call.release(self._endpoint)
                    self._call = None

    return AsyncTracked, SyncTracked
