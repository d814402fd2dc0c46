"""Outbound: the httpx transports that handle every call a service makes."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "AsyncMeshTransport",
    "CircuitOpen",
    "DeadlineExceeded",
    "MeshTransport",
    "NoHealthyEndpoints",
    "RetryBudgetExhausted",
]


class NoHealthyEndpoints(httpx.ConnectError):
    """No endpoint of the service is left to try."""


class DeadlineExceeded(httpx.TimeoutException):
    """The call's deadline passed."""


class RetryBudgetExhausted(httpx.TransportError):
    """A retry was due but the service's retry budget is spent."""


class CircuitOpen(httpx.TransportError):
    """Every endpoint is ejected by outlier detection."""


class MeshTransport:  # placeholder until issue 3's outbound path lands
    def __init__(self, **kwargs: Any) -> None:
        raise NotImplementedError("MeshTransport arrives with issue 3")


class AsyncMeshTransport:  # placeholder until issue 3's outbound path lands
    def __init__(self, **kwargs: Any) -> None:
        raise NotImplementedError("AsyncMeshTransport arrives with issue 3")
