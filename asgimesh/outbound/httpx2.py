"""The mesh transports and errors for ``httpx2`` clients (``pip install asgimesh[httpx2]``).

The same code as :mod:`asgimesh.outbound`, bound to ``httpx2``'s classes: requests and responses
are ``httpx2`` objects, and the errors subclass ``httpx2``'s, so ``except httpx2.ConnectError``
catches :class:`NoHealthyEndpoints` here as ``except httpx.ConnectError`` does there::

    from asgimesh.outbound.httpx2 import AsyncMeshTransport
    client = httpx2.AsyncClient(transport=AsyncMeshTransport())
"""

from __future__ import annotations

import httpx2

from ._async_shell import AsyncMeshShell
from ._binding import HttpBinding
from ._sync_shell import SyncMeshShell

__all__ = [
    "AsyncMeshTransport",
    "CircuitOpen",
    "DeadlineExceeded",
    "MeshTransport",
    "NoHealthyEndpoints",
    "RetryBudgetExhausted",
]


class NoHealthyEndpoints(httpx2.ConnectError):
    """No endpoint of the service is left to try (none known, or DNS gave none)."""


class DeadlineExceeded(httpx2.TimeoutException):
    """The call's deadline passed: its own timeout, or the inbound request's deadline."""


class RetryBudgetExhausted(httpx2.TransportError):
    """A retry was due but the service's retry budget is spent."""


class CircuitOpen(httpx2.TransportError):
    """Every endpoint is ejected by outlier detection."""


_HTTPX2 = HttpBinding[httpx2.Request, httpx2.Response](
    httpx2,
    no_healthy_endpoints=NoHealthyEndpoints,
    deadline_exceeded=DeadlineExceeded,
    retry_budget_exhausted=RetryBudgetExhausted,
    circuit_open=CircuitOpen,
)


class AsyncMeshTransport(
    AsyncMeshShell[httpx2.Request, httpx2.Response], httpx2.AsyncBaseTransport
):
    """The mesh's ``httpx2.AsyncBaseTransport``; ``kwargs`` as ``httpx2.AsyncHTTPTransport``'s."""

    _lib = _HTTPX2


class MeshTransport(SyncMeshShell[httpx2.Request, httpx2.Response], httpx2.BaseTransport):
    """The mesh's ``httpx2.BaseTransport``; ``kwargs`` as ``httpx2.HTTPTransport``'s."""

    _lib = _HTTPX2
