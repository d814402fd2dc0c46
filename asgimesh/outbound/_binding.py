"""What the shells need from an httpx-like module, bound once at import.

``httpx`` and its successor ``httpx2`` have the same shape but separate classes: a transport
must build *that* module's requests and responses and raise *that* module's errors, or the
client's ``except httpx2.ConnectError`` misses. :class:`HttpBinding` gathers those classes from
the module it is given; the transports are one code path over whichever binding they are given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._call import Call
from ._endpoint import Endpoint
from ._refusal import Refusal
from ._retry import Failure

__all__ = ["HttpBinding"]

_TIMEOUT_KEYS = ("connect", "read", "write", "pool")
#: Headers the mesh sets on each try, replacing any the app set.
_PER_TRY = frozenset({b"mesh-attempt", b"mesh-deadline-ms"})


class HttpBinding:
    """One httpx-like module and the mesh's error classes for it."""

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
        self.AsyncHTTPTransport = module.AsyncHTTPTransport
        self.HTTPTransport = module.HTTPTransport
        self._errors: dict[str, Any] = {
            "no-endpoints": no_healthy_endpoints,
            "circuit-open": circuit_open,
            "deadline": deadline_exceeded,
            "budget": retry_budget_exhausted,
        }
        self._connect = (module.ConnectError, module.ConnectTimeout)
        self._timeout = (module.ReadTimeout, module.WriteTimeout)
        self._reset = (module.ReadError, module.WriteError, module.RemoteProtocolError)
        probe = module.URL("http://probe/")
        # httpx re-parses a URL to change its host (tens of microseconds); its parsed form is a
        # NamedTuple whose ``_replace`` does the same in one. Used only where that form exists.
        self._fast_urls = hasattr(getattr(probe, "_uri_reference", None), "_replace")
        self.AsyncTracked, self.SyncTracked = _tracked_streams(module)

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

    def refusal(self, refusal: Refusal, request: Any) -> Exception:
        error: Exception = self._errors[refusal.kind](str(refusal), request=request)
        return error

    def fault_response(self, status: int) -> Any:
        return self.Response(
            status, headers=[(b"content-type", b"text/plain")], content=b"fault filter abort"
        )

    def base_headers(self, request: Any, call: Call) -> list[tuple[bytes, bytes]]:
        """The request's headers for every try of ``call``: the app's own, without the per-try
        mesh headers (the mesh sets those), plus the trace context and request id of the inbound
        request where the app did not set them itself."""
        headers = []
        present = set()
        for name, value in request.headers.raw:
            lowered = name.lower()
            if lowered not in _PER_TRY:
                headers.append((name, value))
                present.add(lowered)
        if call.context is not None:
            headers.extend(item for item in call.trace_headers() if item[0] not in present)
        return headers

    def outgoing(
        self, request: Any, endpoint: Endpoint, call: Call, headers: list[Any], now: float
    ) -> Any:
        """The request of one try: same method, path and body, sent to ``endpoint`` with the
        mesh headers and the try's time limit (the ``Host`` header stays the service name).

        The limit caps each of httpx's own connect, write, read and pool timeouts, in both
        transports alike: a cancel scope around the whole try would cost as much as the rest of
        the mesh's work together on every call, and the per-operation caps already bound a hung
        or slow upstream."""
        url = request.url
        if self._fast_urls:
            new_url = self.URL.__new__(self.URL)
            new_url._uri_reference = url._uri_reference._replace(
                scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port
            )
        else:  # pragma: no cover - an httpx without the parsed form
            new_url = url.copy_with(scheme=endpoint.scheme, host=endpoint.host, port=endpoint.port)
        extensions = request.extensions
        limit = call.limit
        if limit is not None:
            given: dict[str, float | None] = extensions.get("timeout") or {}
            timeout: dict[str, float | None] = {}
            for key in _TIMEOUT_KEYS:
                own = given.get(key)
                timeout[key] = limit if own is None or own > limit else own
            extensions = {**extensions, "timeout": timeout}
        return self.Request(
            request.method,
            new_url,
            headers=headers + call.headers(now),
            stream=request.stream,
            extensions=extensions,
        )


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
