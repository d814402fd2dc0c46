"""What the transports need from an httpx-like module, as structural types.

The transports are written once for ``httpx`` and ``httpx2``, whose classes have the same shape
but are distinct: these protocols name that shape (only the members the transports touch), and
:class:`Binding` names what a binding (:class:`~._binding.HttpBinding`) offers on top: the
module's errors, building each try's request from a :class:`~._steps.Send`, and watching an
answer's body. Type checkers then hold the transports to the real ``httpx.Request`` and
``httpx.Response`` through the ``Req`` and ``Resp`` parameters, with no ``Any`` in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar

from ._call import Call
from ._endpoint import Endpoint
from ._refusal import Refusal
from ._retry import Failure
from ._steps import Send

__all__ = [
    "AsyncTransportLike",
    "Binding",
    "HeadersLike",
    "Req",
    "RequestLike",
    "Resp",
    "ResponseLike",
    "SyncTransportLike",
    "URLLike",
]


class URLLike(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query(self) -> bytes: ...


class HeadersLike(Protocol):
    @property
    def raw(self) -> list[tuple[bytes, bytes]]: ...

    def get(self, key: str, /) -> str | None: ...


class RequestLike(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def url(self) -> URLLike: ...

    @property
    def headers(self) -> HeadersLike: ...

    @property
    def extensions(self) -> Mapping[str, Any]: ...


class ResponseLike(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> HeadersLike: ...

    def read(self) -> bytes: ...

    def close(self) -> None: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


Req = TypeVar("Req", bound=RequestLike)
Resp = TypeVar("Resp", bound=ResponseLike)
_Req_contra = TypeVar("_Req_contra", bound=RequestLike, contravariant=True)
_Resp_co = TypeVar("_Resp_co", bound=ResponseLike, covariant=True)


class AsyncTransportLike(Protocol[_Req_contra, _Resp_co]):
    """``httpx.AsyncHTTPTransport``'s shape: the pool every try (and pass-through) goes to."""

    async def handle_async_request(self, request: _Req_contra) -> _Resp_co: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...


class SyncTransportLike(Protocol[_Req_contra, _Resp_co]):
    """``httpx.HTTPTransport``'s shape."""

    def handle_request(self, request: _Req_contra) -> _Resp_co: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...


class Binding(Protocol[Req, Resp]):
    """What the transports use of one httpx-like module (requests ``Req``, responses ``Resp``)."""

    #: The module's base class of transport errors, and of timeouts.
    TransportError: type[Exception]
    TimeoutException: type[Exception]

    def async_transport(self, **kwargs: Any) -> AsyncTransportLike[Req, Resp]:
        """The module's own ``AsyncHTTPTransport(**kwargs)``."""
        ...

    def sync_transport(self, **kwargs: Any) -> SyncTransportLike[Req, Resp]:
        """The module's own ``HTTPTransport(**kwargs)``."""
        ...

    def replayable(self, request: Req) -> bool:
        """Whether the request's body can be sent again (bytes in memory)."""
        ...

    def classify(self, exc: BaseException) -> Failure | None:
        """How a try failed, from the error the inner transport raised."""
        ...

    def error(self, refusal: Refusal, request: Req) -> Exception:
        """The module's error (a mesh subclass of one of its own) for a refusal."""
        ...

    def fault_response(self, status: int) -> Resp:
        """The answer of an injected abort."""
        ...

    def outgoing(self, request: Req, send: Send) -> Req:
        """The request of one try: the app's, sent as ``send`` says."""
        ...

    def track_async(self, response: Resp, call: Call, endpoint: Endpoint) -> None:
        """Release the try's endpoint when the answer's (async) body is closed."""
        ...

    def track_sync(self, response: Resp, call: Call, endpoint: Endpoint) -> None:
        """Release the try's endpoint when the answer's (sync) body is closed."""
        ...
