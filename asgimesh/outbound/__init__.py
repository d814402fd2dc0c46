"""Outbound: the httpx transports that handle every call a service makes.

``AsyncMeshTransport`` and ``MeshTransport`` are drop-in httpx transports: a host that names a
mesh service is resolved to its endpoints and called with the policy's load balancing, deadlines,
retries (within a budget), outlier ejection, traffic split and fault injection; any other host
passes through to httpx's own transport unchanged (and is still measured). Their errors are httpx
errors, so code that catches those keeps working. For ``httpx2`` clients, the same transports and
errors bound to ``httpx2`` live in :mod:`asgimesh.outbound.httpx2`.
"""

from __future__ import annotations

import httpx

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


class NoHealthyEndpoints(httpx.ConnectError):
    """No endpoint of the service is left to try (none known, or DNS gave none)."""


class DeadlineExceeded(httpx.TimeoutException):
    """The call's deadline passed: its own timeout, or the inbound request's deadline."""


class RetryBudgetExhausted(httpx.TransportError):
    """A retry was due but the service's retry budget is spent."""


class CircuitOpen(httpx.TransportError):
    """Every endpoint is ejected by outlier detection."""


_HTTPX = HttpBinding[httpx.Request, httpx.Response](
    httpx,
    no_healthy_endpoints=NoHealthyEndpoints,
    deadline_exceeded=DeadlineExceeded,
    retry_budget_exhausted=RetryBudgetExhausted,
    circuit_open=CircuitOpen,
)


class AsyncMeshTransport(
    AsyncMeshShell[httpx.Request, httpx.Response], httpx.AsyncBaseTransport
):
    """The mesh's ``httpx.AsyncBaseTransport``: ``AsyncMeshTransport(runtime=None, **kwargs)``,
    ``kwargs`` being any of ``httpx.AsyncHTTPTransport``'s."""

    _lib = _HTTPX


class MeshTransport(SyncMeshShell[httpx.Request, httpx.Response], httpx.BaseTransport):
    """The mesh's ``httpx.BaseTransport``: ``MeshTransport(runtime=None, **kwargs)``, ``kwargs``
    being any of ``httpx.HTTPTransport``'s."""

    _lib = _HTTPX
