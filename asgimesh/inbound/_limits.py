"""What a service accepts (``inbound.<service>`` of the policy), sans-I/O: authorization, a
token-bucket rate limit and a concurrency limit.

:class:`InboundLimits` follows the policy store: for each new :class:`PolicySnapshot` it compiles
this service's :class:`~asgimesh.policy.InboundPolicy` once into a :class:`Limits` (rules as sets
and prefixes, a bucket, a gate) and keeps it until the next snapshot, so a request pays one
identity check of the snapshot when nothing changed, and nothing more when the service has no
inbound policy. A snapshot whose inbound policy for this service is unchanged keeps the same
compiled object, buckets and all; a changed one gets fresh buckets, while the concurrency gate
keeps counting the requests already in flight (only its limit changes).

Time comes in as ``now`` (``time.monotonic`` seconds) and nothing here touches a socket, so the
tests drive each decision with a made-up clock. WSGI servers call from many threads: a bucket is
guarded by a lock (never contended under ASGI), the concurrency gate is lock-free (see
:class:`ConcurrencyGate`).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..policy import PolicySnapshot
from ..policy._model import AuthorizationRule, InboundPolicy
from ._core import Answer, json_answer

if TYPE_CHECKING:
    from .._runtime import MeshRuntime

__all__ = [
    "Authorizer",
    "ConcurrencyGate",
    "InboundLimits",
    "Limits",
    "TokenBucket",
    "compile_rule",
    "limits_for",
]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; each request takes one.

    Starts full at its first use, so a fresh (or just reloaded) limit admits a whole burst.
    """

    __slots__ = ("_last", "_lock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"expected a rate above zero, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate)))
        self._tokens = self.burst
        self._last: float | None = None
        self._lock = threading.Lock()

    def take(self, now: float) -> float:
        """Take a token at ``now``: ``0.0`` if one was there, else seconds until one will be."""
        lock = self._lock
        lock.acquire()  # explicit calls: half the cost of ``with`` on this path
        try:
            last = self._last
            tokens = self._tokens
            if last is None or now > last:
                if last is not None:
                    tokens = min(self.burst, tokens + (now - last) * self.rate)
                self._last = now
            if tokens >= 1.0:
                self._tokens = tokens - 1.0
                return 0.0
            self._tokens = tokens
            return (1.0 - tokens) / self.rate
        finally:
            lock.release()

    @staticmethod
    def retry_after(wait: float) -> int:
        """``wait`` seconds as a ``Retry-After`` value: whole seconds, at least 1."""
        # The small allowance keeps a wait of exactly 1 s, computed as 1.0000000001, at 1.
        return max(1, math.ceil(wait - 1e-9))


class ConcurrencyGate:
    """Counts this service's requests in flight; refuses one that would exceed ``limit``.

    Lock-free and thread-safe: one deque entry per request in flight, and ``append``, ``pop``
    and ``len`` of a deque are each atomic. A request is counted before it is checked, so two
    threads racing for the last slot may both be refused (a 429 with ``Retry-After: 1``), never
    both admitted. Several times cheaper than a lock, for ASGI and WSGI alike.
    """

    __slots__ = ("_slots", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots: deque[None] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    def acquire(self) -> bool:
        """Take a slot: ``True`` if there was one (then :meth:`release` it exactly once)."""
        slots = self._slots
        slots.append(None)
        if len(slots) > self.limit:
            slots.pop()
            return False
        return True

    def release(self) -> None:
        self._slots.pop()


# ---- authorization -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    """One ``allow``, compiled: ``None`` fields match anything."""

    methods: frozenset[str] | None
    exact: frozenset[str]
    prefixes: tuple[str, ...]
    any_path: bool
    #: ``None``: any caller, verified or not; empty: any verified caller; else these SPIFFE IDs.
    callers: frozenset[str] | None

    def matches_request(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.any_path or path in self.exact or path.startswith(self.prefixes)

    def matches_caller(self, caller: str | None) -> bool:
        if self.callers is None:
            return True
        if caller is None:
            return False  # fail closed: a rule that names callers needs a verified one
        return not self.callers or caller in self.callers


def compile_rule(rule: AuthorizationRule) -> _Rule:
    allow = rule.allow
    paths = allow.paths
    callers: frozenset[str] | None = None
    if allow.from_ is not None:
        callers = frozenset() if "*" in allow.from_ else frozenset(allow.from_)
    return _Rule(
        methods=frozenset(allow.methods) if allow.methods is not None else None,
        exact=frozenset(p for p in paths or () if not p.endswith("*")),
        prefixes=tuple(p[:-1] for p in paths or () if p.endswith("*")),
        any_path=paths is None,
        callers=callers,
    )


def _has_dot_segment(path: str) -> bool:
    if "/." not in path:
        return False
    return any(segment in (".", "..") for segment in path.split("/"))


class Authorizer:
    """Allows a request only if some rule's ``allow`` matches it (no rules: nobody)."""

    __slots__ = ("rules", "service")

    def __init__(self, service: str, rules: tuple[AuthorizationRule, ...]) -> None:
        self.service = service
        self.rules = tuple(compile_rule(rule) for rule in rules)

    def check(self, method: str, path: str, caller: str | None) -> str | None:
        """``None`` if allowed, else why not (the 403's ``detail``)."""
        if _has_dot_segment(path):
            # The app may resolve "/public/../admin" to another path than the rules saw.
            return f"the path {path!r} has '.' or '..' segments, which authorization refuses"
        wanted_caller = False
        for rule in self.rules:
            if rule.matches_request(method, path):
                if rule.matches_caller(caller):
                    return None
                wanted_caller = True
        if wanted_caller and caller is None:
            return (
                f"no verified caller identity: the authorization of {self.service!r} allows "
                f"{method} {path} only from verified callers, and this request has no verified "
                "identity (unverified headers are never trusted)"
            )
        who = f"caller {caller}" if caller is not None else "an unverified caller"
        return f"no authorization rule of {self.service!r} allows {method} {path} from {who}"


# ---- one compiled policy -----------------------------------------------------------------------


def _noop() -> None:
    pass


class Limits:
    """One version of this service's inbound policy, ready for the hot path."""

    __slots__ = (
        "authorizer",
        "bucket",
        "gate",
        "on_denied",
        "on_rate_limited",
        "policy",
        "service",
    )

    def __init__(
        self,
        service: str,
        policy: InboundPolicy,
        gate: ConcurrencyGate | None = None,
        *,
        on_rate_limited: Callable[[], None] = _noop,
        on_denied: Callable[[], None] = _noop,
    ) -> None:
        self.service = service
        self.policy = policy
        self.on_rate_limited = on_rate_limited
        self.on_denied = on_denied
        self.authorizer = (
            Authorizer(service, policy.authorization) if policy.authorization is not None else None
        )
        rate = policy.rate_limit
        self.bucket = TokenBucket(rate.requests_per_second, rate.burst) if rate else None
        limit = policy.concurrency_limit
        if limit is None:
            self.gate = None
        elif gate is not None:
            gate.limit = limit  # keep counting the requests already in flight
            self.gate = gate
        else:
            self.gate = ConcurrencyGate(limit)

    def admit(
        self, method: str, path: str, caller: str | None, now: float
    ) -> tuple[Answer | None, ConcurrencyGate | None]:
        """Admit a request at ``now``: ``(None, slot)`` to call the app (``slot`` is ``None``
        without a concurrency limit; else release it when the response is done), or the 403/429
        answer and ``None``.

        Authorization comes first, so a refused caller spends no token; the slot comes last, so
        it is taken only when the app is going to be called.
        """
        if self.authorizer is not None:
            denied = self.authorizer.check(method, path, caller)
            if denied is not None:
                self.on_denied()
                return json_answer(403, "forbidden", denied), None
        bucket = self.bucket
        if bucket is not None:
            wait = bucket.take(now)
            if wait:
                self.on_rate_limited()
                detail = (
                    f"{self.service!r} accepts {bucket.rate:g} requests a second "
                    f"(burst {bucket.burst:g}); the next is admitted in {wait:.3f}s"
                )
                retry_after = (("retry-after", str(bucket.retry_after(wait))),)
                return json_answer(429, "rate_limited", detail, retry_after), None
        gate = self.gate
        if gate is not None and not gate.acquire():
            self.on_rate_limited()
            detail = (
                f"{self.service!r} is already handling its limit of {gate.limit} "
                "concurrent requests"
            )
            return json_answer(429, "rate_limited", detail, (("retry-after", "1"),)), None
        return None, gate


class _Store(Protocol):
    @property
    def current(self) -> PolicySnapshot: ...


class InboundLimits:
    """This service's :class:`Limits` for the snapshot in force, recompiled when it changes."""

    __slots__ = ("_lock", "_state", "_store", "on_denied", "on_rate_limited", "service")

    def __init__(
        self,
        service: str,
        store: _Store,
        *,
        on_rate_limited: Callable[[], None] = _noop,
        on_denied: Callable[[], None] = _noop,
    ) -> None:
        self.service = service
        self._store = store
        self.on_rate_limited = on_rate_limited
        self.on_denied = on_denied
        self._lock = threading.Lock()
        # One attribute, so that a reader in another thread never pairs a snapshot with
        # another snapshot's limits.
        self._state: tuple[PolicySnapshot | None, Limits | None] = (None, None)

    def current(self) -> Limits | None:
        """The limits for the policy in force; ``None`` when this service has none."""
        snapshot = self._store.current
        state = self._state
        if state[0] is snapshot:
            return state[1]
        return self._compile(snapshot)

    def _compile(self, snapshot: PolicySnapshot) -> Limits | None:
        with self._lock:
            old_snapshot, old = self._state
            if old_snapshot is snapshot:
                return old
            policy = snapshot.policy.inbound.get(self.service)
            limits: Limits | None
            if policy is None or (
                policy.authorization is None
                and policy.rate_limit is None
                and policy.concurrency_limit is None
            ):
                limits = None
            elif old is not None and old.policy == policy:
                limits = old  # unchanged for this service: keep its buckets
            else:
                limits = Limits(
                    self.service,
                    policy,
                    old.gate if old is not None else None,
                    on_rate_limited=self.on_rate_limited,
                    on_denied=self.on_denied,
                )
            self._state = (snapshot, limits)
            return limits


#: Where a runtime keeps its :class:`InboundLimits` (on the runtime itself, so that it lives and
#: dies with it: a module-level mapping would keep every runtime alive through the store).
_ATTRIBUTE = "_asgimesh_inbound_limits"
_made_lock = threading.Lock()


def limits_for(runtime: MeshRuntime) -> InboundLimits:
    """The runtime's one :class:`InboundLimits`: every middleware on a runtime shares its
    buckets and its in-flight count, as they serve one service."""
    limits: InboundLimits | None = getattr(runtime, _ATTRIBUTE, None)
    if limits is None:
        with _made_lock:
            limits = getattr(runtime, _ATTRIBUTE, None)
            if limits is None:
                metrics = runtime.metrics
                limits = InboundLimits(
                    runtime.settings.service,
                    runtime.policy,
                    on_rate_limited=metrics.rate_limited.inc,
                    on_denied=metrics.authz_denied.inc,
                )
                setattr(runtime, _ATTRIBUTE, limits)
    return limits
