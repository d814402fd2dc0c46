"""The inbound decision, sans-I/O: shared by the ASGI and the WSGI middleware.

For each request the shells hand over the method, the path, the mesh's headers (already picked
out of the server's header list by :func:`asgi_fields` or :func:`environ_fields`) and the client
address; :meth:`InboundCore.decide` answers with an
:class:`~asgimesh.inbound._exchange.InboundExchange` that carries one of three things:

* an admin answer (``/_mesh/health``, ``/_mesh/metrics``, ``/_mesh/config``: contract, section 6);
  the admin paths are never subject to the service's limits, so operators reach them while it is
  overloaded;
* a 504 for a request whose caller's deadline has already passed, a 403 for one that the
  service's authorization does not allow, a 429 for one over its rate or concurrency limit (the
  app is not called; :mod:`asgimesh.inbound._admission` makes those decisions);
* go ahead, with the request's :class:`~asgimesh.MeshContext` (request id kept or made, trace
  continued or started, deadline made absolute on the ``time.monotonic`` clock) and, under a
  concurrency limit, the slot that the exchange releases when the response is done.

No sockets and no global randomness here: time comes from an injected clock (or as ``now``)
and ids from an injected ``randbits``, so each decision is a plain function call in the tests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._context import MeshContext
from .._wire import (
    new_id,
    parse_deadline_ms,
    parse_envoy_timeout_ms,
    parse_grpc_timeout,
    parse_request_id,
    parse_traceparent,
    parse_tracestate,
)
from ._admin import Admin
from ._answers import Answer, json_answer
from ._exchange import InboundExchange

if TYPE_CHECKING:
    from .._runtime import MeshRuntime
    from ..telemetry import InboundTelemetry
    from ._admission import InboundAdmission
    from ._authentication import Authenticator
    from ._limits import ConcurrencyGate

__all__ = ["ADMIN_PATHS", "InboundCore", "asgi_fields", "environ_fields"]

#: The paths the middleware answers itself instead of the app.
ADMIN_PATHS = frozenset({"/_mesh/health", "/_mesh/metrics", "/_mesh/config"})

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
        # The caller's identity, where TLS ends before this process (see _authentication).
        "mesh-identity",
        "x-forwarded-client-cert",
        "client-cert",
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
_DEADLINE_NAMES = frozenset(name for name, _ in _DEADLINES)


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


class InboundCore:
    """Decides each inbound request; one per middleware, shared by all its requests."""

    __slots__ = (
        "_admin",
        "_admission",
        "_clock",
        "_randbits",
        "_strict",
        "_wall_clock",
        "authenticator",
        "on_request",
        "telemetry",
    )

    def __init__(
        self,
        admin: Admin | None = None,
        *,
        randbits: Callable[[int], int] = random.getrandbits,
        admission: InboundAdmission | None = None,
        telemetry: InboundTelemetry | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_request: Callable[[], None] | None = None,
        authenticator: Authenticator | None = None,
        strict: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # ``random.getrandbits`` (reseeded after fork) rather than ``os.urandom``: ids must be
        # unique, not secret, and this runs for every request.
        self._admin = admin
        self._randbits = randbits
        self._admission = admission
        self._clock = clock
        self.telemetry = telemetry
        #: Verifies callers (``MESH_MTLS`` permissive or strict); ``None`` with ``off``: no
        #: identity is asked for or believed, so ``from`` rules match nobody.
        self.authenticator = authenticator
        self._strict = strict
        self._wall_clock = wall_clock
        #: Called by the shells once per request (the serverless policy refresh: starts one if
        #: due, never waits); ``None`` where the config source has no such hook.
        self.on_request = on_request

    @classmethod
    def for_runtime(cls, runtime: MeshRuntime, app: Any = None) -> InboundCore:
        """The core of a middleware on ``runtime``: its admin paths, the runtime's one
        admission (shared by every middleware on it) and telemetry of its own (``app``, what
        the middleware wraps: where it makes its own spans, the mesh makes none)."""
        from ..telemetry import InboundTelemetry

        mtls = runtime.settings.mtls
        return cls(
            Admin(runtime),
            admission=runtime.inbound_admission,
            telemetry=InboundTelemetry(runtime, app),
            on_request=runtime.on_request,
            authenticator=runtime.inbound_authenticator if mtls != "off" else None,
            strict=mtls == "strict",
        )

    def decide(
        self,
        method: str,
        path: str,
        fields: Mapping[str, str],
        client: str | None,
        now: float | None = None,
        peer_chain: Sequence[str] | None = None,
    ) -> InboundExchange:
        """Decide one request that arrived at ``now`` (``time.monotonic`` seconds; the
        injected clock's time when not given). ``peer_chain`` is the client certificate chain
        (PEM) the server verified in the TLS handshake, where there was one."""
        if now is None:
            now = self._clock()
        telemetry, clock = self.telemetry, self._clock
        if path in ADMIN_PATHS and self._admin is not None:
            admin = self._admin.answer(method, path, fields, client)
            return InboundExchange(method, path, client, now, None, admin)
        context = self.context(fields, now)
        answer: Answer | None = None
        gate: ConcurrencyGate | None = None
        if context.deadline is not None and context.deadline <= now:
            answer = _expired(fields)
        else:
            source = self._admission
            admission = source.current() if source is not None else None
            authenticator = self.authenticator
            if authenticator is not None:
                trusted = admission.trusted if admission is not None else None
                context.caller = caller = authenticator.authenticate(
                    peer_chain, fields, client, trusted, self._wall_clock()
                )
                if caller is None and self._strict:
                    authenticator.on_failure("missing")
                    answer = _UNAUTHENTICATED
            if answer is None and admission is not None:
                # None unless this service has an inbound policy
                answer, gate = admission.admit(method, path, context.caller, now)
        return InboundExchange(
            method, path, client, now, context, answer, gate, telemetry=telemetry, clock=clock
        )

    def websocket(
        self,
        path: str,
        fields: Mapping[str, str] | None = None,
        client: str | None = None,
        peer_chain: Sequence[str] | None = None,
    ) -> Answer | None:
        """The 403 for a WebSocket handshake that authorization refuses, else ``None``.

        A handshake is authorized as a ``GET`` of its path, so a policy's rules cannot be
        side-stepped by upgrading. The rate and concurrency limits count requests, not
        long-lived connections, and do not apply.
        """
        source = self._admission
        admission = source.current() if source is not None else None
        caller = None
        authenticator = self.authenticator
        if authenticator is not None:
            trusted = admission.trusted if admission is not None else None
            caller = authenticator.authenticate(
                peer_chain, fields or {}, client, trusted, self._wall_clock()
            )
            if caller is None and self._strict:
                authenticator.on_failure("missing")
                return _UNAUTHENTICATED
        if admission is None or admission.authorizer is None:
            return None
        denied = admission.authorizer.check("GET", path, caller)
        if denied is None:
            return None
        admission.on_denied()
        return json_answer(403, "forbidden", denied)

    def context(self, fields: Mapping[str, str], now: float) -> MeshContext:
        """The request's mesh context from its headers; anything malformed counts as absent."""
        # Runs for every request: parsers are called only for headers that came.
        randbits = self._randbits
        request_id = fields.get("x-request-id")
        if request_id is not None:
            request_id = parse_request_id(request_id)
        if request_id is None:
            request_id = new_id(128, randbits)
        parent = fields.get("traceparent")
        parsed = parse_traceparent(parent) if parent is not None else None
        if parsed is not None:
            trace_id, parent_span_id, flags = parsed
            # W3C: tracestate belongs to the traceparent it came with; without one it is dropped.
            tracestate = fields.get("tracestate")
            if tracestate is not None:
                tracestate = parse_tracestate(tracestate)
        else:
            trace_id = new_id(128, randbits)
            parent_span_id, flags, tracestate = None, "01", None
        return MeshContext(
            request_id=request_id,
            trace_id=trace_id,
            span_id=new_id(64, randbits),
            trace_flags=flags,
            tracestate=tracestate,
            # Most requests carry no deadline: one set operation rather than three look-ups.
            deadline=None if _DEADLINE_NAMES.isdisjoint(fields) else _deadline(fields, now),
            parent_span_id=parent_span_id,
        )


#: The answer to a caller without a verified identity under ``MESH_MTLS=strict``.
_UNAUTHENTICATED = json_answer(
    401,
    "unauthenticated",
    "this service accepts only callers with a verified mesh identity (MESH_MTLS=strict): "
    "call it over mTLS with a mesh certificate, or with a valid mesh-identity token",
    (("www-authenticate", 'Bearer realm="asgimesh"'),),
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
