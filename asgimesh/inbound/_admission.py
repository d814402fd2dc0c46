"""What a service admits (``inbound.<service>`` of the policy), sans-I/O: authorization first,
then the rate limit, then the concurrency limit.

:class:`InboundAdmission` follows the policy store: for each new :class:`PolicySnapshot` it
compiles this service's :class:`~asgimesh.policy.InboundPolicy` once into an :class:`Admission`
(rules as sets and prefixes, a bucket, a gate) and keeps it until the next snapshot, so a request
pays one identity check of the snapshot when nothing changed, and nothing more when the service
has no inbound policy. A snapshot whose inbound policy for this service is unchanged keeps the
same compiled object, buckets and all; a changed one gets fresh buckets, while the concurrency
gate keeps counting the requests already in flight (only its limit changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from ..policy import AdaptiveConcurrency, InboundPolicy, PolicySnapshot
from ._adaptive import AdaptiveGate, GradientLimit
from ._answers import Answer, json_answer
from ._authentication import TrustedProxies
from ._authorization import Authorizer
from ._limits import ConcurrencyGate, TokenBucket

__all__ = ["Admission", "InboundAdmission"]


def _noop() -> None:
    pass


class Admission:
    """One version of this service's inbound policy, compiled for the hot path: its
    authorizer, token bucket and concurrency gate."""

    __slots__ = (
        "authorizer",
        "bucket",
        "gate",
        "on_denied",
        "on_rate_limited",
        "policy",
        "service",
        "trusted",
    )

    def __init__(
        self,
        service: str,
        policy: InboundPolicy,
        gate: ConcurrencyGate | None = None,
        *,
        on_rate_limited: Callable[[], None] = _noop,
        on_denied: Callable[[], None] = _noop,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        self.on_rate_limited = on_rate_limited
        self.on_denied = on_denied
        self.authorizer = (
            Authorizer(service, policy.authorization) if policy.authorization is not None else None
        )
        #: The peers whose forwarded client certificates are believed (``None``: nobody's).
        self.trusted = TrustedProxies(policy.trusted_proxies) if policy.trusted_proxies else None
        rate = policy.rate_limit
        self.bucket = TokenBucket(rate.requests_per_second, rate.burst) if rate else None
        limit = policy.concurrency_limit
        adaptive = policy.adaptive_concurrency
        self.gate: ConcurrencyGate | None
        if adaptive is not None and adaptive.enabled:
            self.gate = _adaptive_gate(adaptive, limit, gate, on_limit)
        elif limit is None:
            self.gate = None
        elif gate is not None and not isinstance(gate, AdaptiveGate):
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
            if isinstance(gate, AdaptiveGate):
                detail = (
                    f"{self.service!r} is at the {gate.limit} concurrent requests its "
                    "latency allows now (adaptive concurrency)"
                )
                return json_answer(503, "overloaded", detail, (("retry-after", "1"),)), None
            detail = (
                f"{self.service!r} is already handling its limit of {gate.limit} "
                "concurrent requests"
            )
            return json_answer(429, "rate_limited", detail, (("retry-after", "1"),)), None
        return None, gate


def _adaptive_gate(
    config: AdaptiveConcurrency,
    cap: int | None,
    old: ConcurrencyGate | None,
    on_limit: Callable[[int], None] | None,
) -> AdaptiveGate:
    """The adaptive gate for ``config``: the old one, still counting its requests in flight
    and keeping what it learnt, where only the bounds changed."""
    max_limit = min(config.max_limit, cap) if cap is not None else config.max_limit
    min_limit = min(config.min_limit, max_limit)
    if isinstance(old, AdaptiveGate):
        algorithm = old.algorithm
        algorithm.min_limit, algorithm.max_limit = min_limit, max_limit
        algorithm.tolerance = config.tolerance
        algorithm.limit = max(float(min_limit), min(float(max_limit), algorithm.limit))
        old.limit = int(algorithm.limit)
        return old
    algorithm = GradientLimit(
        config.initial_limit,
        min_limit=min_limit,
        max_limit=max_limit,
        tolerance=config.tolerance,
    )
    return AdaptiveGate(algorithm, on_limit=on_limit)


class _Store(Protocol):
    @property
    def current(self) -> PolicySnapshot: ...


class InboundAdmission:
    """This service's :class:`Admission` for the snapshot in force, recompiled when it changes.

    One per runtime (:attr:`asgimesh.MeshRuntime.inbound_admission`): every middleware on a
    runtime shares its buckets and its in-flight count, as they serve one service.
    """

    __slots__ = (
        "_lock",
        "_state",
        "_store",
        "on_denied",
        "on_limit",
        "on_rate_limited",
        "service",
    )

    def __init__(
        self,
        service: str,
        store: _Store,
        *,
        on_rate_limited: Callable[[], None] = _noop,
        on_denied: Callable[[], None] = _noop,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        self.service = service
        self._store = store
        self.on_rate_limited = on_rate_limited
        self.on_denied = on_denied
        #: Told each new adaptive concurrency limit (the runtime's gauge).
        self.on_limit = on_limit
        self._lock = threading.Lock()
        # One attribute, so that a reader in another thread never pairs a snapshot with
        # another snapshot's limits.
        self._state: tuple[PolicySnapshot | None, Admission | None] = (None, None)

    def current(self) -> Admission | None:
        """The admission for the policy in force; ``None`` when this service has none."""
        snapshot = self._store.current
        state = self._state
        if state[0] is snapshot:
            return state[1]
        return self._compile(snapshot)

    def _compile(self, snapshot: PolicySnapshot) -> Admission | None:
        with self._lock:
            old_snapshot, old = self._state
            if old_snapshot is snapshot:
                return old
            policy = snapshot.policy.inbound.get(self.service)
            admission: Admission | None
            if policy is None or (
                policy.authorization is None
                and policy.rate_limit is None
                and policy.concurrency_limit is None
                and policy.adaptive_concurrency is None
                and not policy.trusted_proxies
            ):
                admission = None
            elif old is not None and old.policy == policy:
                admission = old  # unchanged for this service: keep its buckets
            else:
                admission = Admission(
                    self.service,
                    policy,
                    old.gate if old is not None else None,
                    on_rate_limited=self.on_rate_limited,
                    on_denied=self.on_denied,
                    on_limit=self.on_limit,
                )
            self._state = (snapshot, admission)
            return admission
