"""Serverless hosts: the AWS Lambda invocation's own time limit as each request's deadline.

A Lambda function is stopped when its timeout passes, answer or not: the caller gets the event
source's error (API Gateway's 503), the app never logs why, and the mesh never counts it. The
mesh already bounds every outbound call by the request's deadline (``mesh-deadline-ms``, or the
policy's timeout); :class:`LambdaDeadline` makes that deadline the time the invocation has left,
less a margin for the answer to get out. A slow upstream then ends as the mesh's own
``DeadlineExceeded`` (an ``httpx.TimeoutException``), which the app turns into an answer in time.

Wrap the app that Mangum serves, outside the mesh (Mangum puts the Lambda context object in the
ASGI scope as ``aws.context``)::

    handler = Mangum(LambdaDeadline(app), lifespan="off")

A caller's own, shorter deadline (``mesh-deadline-ms``, ``grpc-timeout`` or
``x-envoy-expected-rq-timeout-ms``) is kept: the request carries one ``mesh-deadline-ms``, the
shorter of the two. Outside Lambda (no ``aws.context``) requests pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._wire import parse_deadline_ms, parse_envoy_timeout_ms, parse_grpc_timeout

__all__ = ["LambdaDeadline"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER = b"mesh-deadline-ms"
#: The deadline headers the mesh honours, in the order it reads them (the first valid wins).
_PARSERS: tuple[tuple[bytes, Callable[[str | None], float | None]], ...] = (
    (_HEADER, parse_deadline_ms),
    (b"grpc-timeout", parse_grpc_timeout),
    (b"x-envoy-expected-rq-timeout-ms", parse_envoy_timeout_ms),
)


class LambdaDeadline:
    """ASGI middleware: each request's deadline is at most the Lambda invocation's remaining
    time less ``margin`` seconds (default 0.25 s: enough for Mangum to build the response and
    the runtime to post it)."""

    def __init__(self, app: ASGIApp, *, margin: float = 0.25) -> None:
        if not 0 <= margin < 60:
            raise ValueError(f"LambdaDeadline margin: expected 0 to 60 seconds, got {margin!r}")
        self.app = app
        self._margin_ms = int(margin * 1000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        remaining = getattr(scope.get("aws.context"), "get_remaining_time_in_millis", None)
        if scope["type"] != "http" or remaining is None:
            await self.app(scope, receive, send)
            return
        budget = max(1, int(remaining()) - self._margin_ms)
        caller = _caller_deadline_ms(scope["headers"])
        if caller is not None:
            budget = max(1, min(budget, int(caller)))
        # One mesh-deadline-ms, the first deadline header the mesh reads: it decides.
        headers = [(name, value) for name, value in scope["headers"] if name != _HEADER]
        headers.append((_HEADER, str(budget).encode("ascii")))
        await self.app({**scope, "headers": headers}, receive, send)


def _caller_deadline_ms(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The caller's deadline in milliseconds (the first valid header, in the mesh's order;
    of repeated headers, the first), or ``None``."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found.setdefault(name, value)
    for name, parse in _PARSERS:
        raw = found.get(name)
        if raw is not None:
            seconds = parse(raw.decode("latin-1"))
            if seconds is not None:
                return seconds * 1000
    return None
