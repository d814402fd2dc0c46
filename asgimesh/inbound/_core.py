"""The inbound decision, sans-I/O: shared by the ASGI and the WSGI middleware.

For each request the shells hand over the method, the path, the mesh's headers (already picked
out of the server's header list by :func:`asgi_fields` or :func:`environ_fields`), the client
address and the time; :meth:`InboundCore.decide` answers with one of three things:

* an admin answer (``/_mesh/health``, ``/_mesh/metrics``, ``/_mesh/config``: contract, section 6);
* a 504 for a request whose caller's deadline has already passed (the app is not called);
* go ahead, with the request's :class:`~asgimesh.MeshContext` (request id kept or made, trace
  continued or started, deadline made absolute on the ``time.monotonic`` clock).

No sockets, no clock and no global randomness here: time comes in as ``now`` and ids from an
injected ``randbits``, so each decision is a plain function call in the tests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._context import MeshContext
from .._wire import (
    parse_deadline_ms,
    parse_envoy_timeout_ms,
    parse_grpc_timeout,
    parse_request_id,
    parse_traceparent,
    parse_tracestate,
)

if TYPE_CHECKING:
    from ._admin import Admin

__all__ = [
    "ADMIN_PATHS",
    "RESPONSE_HEADER",
    "Answer",
    "Decision",
    "InboundCore",
    "asgi_fields",
    "environ_fields",
    "json_answer",
]

#: The paths the middleware answers itself instead of the app.
ADMIN_PATHS = frozenset({"/_mesh/health", "/_mesh/metrics", "/_mesh/config"})

#: The one header the mesh adds to every response of mesh traffic: the request id, echoed.
RESPONSE_HEADER = "x-request-id"

#: The request headers the mesh reads (raw ASGI name -> field name).
_WANTED: dict[bytes, str] = {
    name.encode("ascii"): name
    for name in (
        "traceparent",
        "tracestate",
        "x-request-id",
        "mesh-deadline-ms",
        "grpc-timeout",
        "x-envoy-expected-rq-timeout-ms",
        "authorization",
    )
}
#: The same headers as WSGI ``environ`` keys.
_ENVIRON = tuple(("HTTP_" + name.upper().replace("-", "_"), name) for name in _WANTED.values())

#: Deadline headers, first valid one wins (contract, section 5).
_DEADLINES: tuple[tuple[str, Callable[[str], float | None]], ...] = (
    ("mesh-deadline-ms", parse_deadline_ms),
    ("grpc-timeout", parse_grpc_timeout),
    ("x-envoy-expected-rq-timeout-ms", parse_envoy_timeout_ms),
)


def asgi_fields(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The mesh's headers from an ASGI header list (names are lower case there); first wins."""
    found: dict[str, str] = {}
    wanted = _WANTED
    for name, value in raw:
        key = wanted.get(name)
        if key is not None and key not in found:
            found[key] = value.decode("latin-1")
    return found


def environ_fields(environ: Mapping[str, Any]) -> dict[str, str]:
    """The mesh's headers from a WSGI ``environ``."""
    return {key: environ[name] for name, key in _ENVIRON if name in environ}


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole response the mesh gives itself, without calling the app."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def json_answer(
    status: int, error: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
) -> Answer:
    """The contract's error shape, ``{"error": ..., "detail": ...}``."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Answer(status, (("content-type", "application/json"), *headers), body)


@dataclass(slots=True)
class Decision:
    """What to do with one request.

    ``answer`` set: send it instead of calling the app. ``context`` set: the request is mesh
    traffic (counted, logged, traced); it is ``None`` only for the admin paths, which are
    operators' calls and stay out of the request metrics.
    """

    context: MeshContext | None
    answer: Answer | None = None

    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers the mesh adds to the response, the app's or its own: the request id."""
        if self.context is None:
            return ()
        return ((RESPONSE_HEADER, self.context.request_id),)


class InboundCore:
    """Decides each inbound request; one per middleware, shared by all its requests."""

    def __init__(
        self, admin: Admin | None = None, *, randbits: Callable[[int], int] = random.getrandbits
    ) -> None:
        # ``random.getrandbits`` (reseeded after fork) rather than ``os.urandom``: ids must be
        # unique, not secret, and this runs for every request.
        self._admin = admin
        self._randbits = randbits

    def decide(
        self,
        method: str,
        path: str,
        fields: Mapping[str, str],
        client: str | None,
        now: float,
    ) -> Decision:
        """Decide one request that arrived at ``now`` (``time.monotonic`` seconds)."""
        if path in ADMIN_PATHS and self._admin is not None:
            return Decision(None, self._admin.answer(method, path, fields, client))
        context = self.context(fields, now)
        if context.deadline is not None and context.deadline <= now:
            return Decision(context, _expired(fields))
        return Decision(context)

    def context(self, fields: Mapping[str, str], now: float) -> MeshContext:
        """The request's mesh context from its headers; anything malformed counts as absent."""
        # Runs for every request: parsers are called only for headers that came, and ids are
        # made inline (random bits, never all zero as W3C requires, as lower-case hex).
        randbits = self._randbits
        request_id = fields.get("x-request-id")
        if request_id is not None:
            request_id = parse_request_id(request_id)
        if request_id is None:
            request_id = (randbits(128) or 1).to_bytes(16, "big").hex()
        parent = fields.get("traceparent")
        parsed = parse_traceparent(parent) if parent is not None else None
        if parsed is not None:
            trace_id, parent_span_id, flags = parsed
            # W3C: tracestate belongs to the traceparent it came with; without one it is dropped.
            tracestate = fields.get("tracestate")
            if tracestate is not None:
                tracestate = parse_tracestate(tracestate)
        else:
            trace_id = (randbits(128) or 1).to_bytes(16, "big").hex()
            parent_span_id, flags, tracestate = None, "01", None
        return MeshContext(
            request_id=request_id,
            trace_id=trace_id,
            span_id=(randbits(64) or 1).to_bytes(8, "big").hex(),
            trace_flags=flags,
            tracestate=tracestate,
            deadline=_deadline(fields, now) if fields else None,
            parent_span_id=parent_span_id,
        )


def _deadline(fields: Mapping[str, str], now: float) -> float | None:
    for name, parse in _DEADLINES:
        value = fields.get(name)
        if value is not None:
            seconds = parse(value)
            if seconds is not None:
                return now + seconds
    return None


def _expired(fields: Mapping[str, str]) -> Answer:
    for name, parse in _DEADLINES:
        value = fields.get(name)
        if value is not None and parse(value) is not None:
            return json_answer(
                504,
                "deadline_exceeded",
                f"the caller's deadline had passed when the request arrived ({name}: {value})",
            )
    raise AssertionError("_expired called without a deadline")  # pragma: no cover
