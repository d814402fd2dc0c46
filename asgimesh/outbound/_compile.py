"""Policy resolution: ``defaults`` ← service ← matching route, folded into one concrete config.

The policy document keeps overrides sparse (``None`` = inherit). A call must not walk three layers
of optional fields on every request, so :func:`compile_policy` folds them once per policy version
into frozen :class:`CallConfig` objects (one per service and per route) and :class:`BackendConfig`
objects (what the per-service state needs: endpoints, balancer, outlier detection, budget). The
transport recompiles only when ``runtime.policy.current`` is a different snapshot, so a policy
change applies to the calls that start after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import parse_qsl

from .._wire import IDEMPOTENT_METHODS
from ..policy import (
    Defaults,
    Fault,
    Hedge,
    Mirror,
    OutlierDetection,
    Overrides,
    Policy,
    Retries,
    RetriesOverride,
    RetryBudget,
    Route,
    ServicePolicy,
    SplitTarget,
    ValueMatch,
)
from ._overrides import DEFAULT_BOUNDS, OverrideBounds

__all__ = [
    "BackendConfig",
    "CallConfig",
    "CompiledPolicy",
    "FaultConfig",
    "HeaderLookup",
    "HedgeConfig",
    "MirrorConfig",
    "ServiceRoutes",
    "compile_policy",
]

@dataclass(frozen=True, slots=True)
class FaultConfig:
    abort_percent: float = 0.0
    abort_status: int = 503
    delay_percent: float = 0.0
    delay: float = 0.0

    @classmethod
    def of(cls, fault: Fault | None) -> FaultConfig | None:
        if fault is None:
            return None
        abort, delay = fault.abort, fault.delay
        config = cls(
            abort_percent=abort.percent if abort else 0.0,
            abort_status=abort.status if abort else 503,
            delay_percent=delay.percent if delay else 0.0,
            delay=delay.duration if delay else 0.0,
        )
        return config if config.abort_percent or config.delay_percent else None


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """A hedge policy, concrete: after ``delay`` seconds (or, with ``quantile`` set, that
    quantile of the service's observed try latencies) without an answer, another try races the
    ones in flight, up to ``max`` per call."""

    delay: float
    #: ``0.95`` for ``p95``; ``None`` for a fixed ``delay``.
    quantile: float | None
    max: int

    @classmethod
    def of(cls, hedge: Hedge | None) -> HedgeConfig | None:
        """``None`` when the policy sets none, or turns it off (``max: 0``)."""
        if hedge is None or hedge.max == 0:
            return None
        if isinstance(hedge.delay, str):
            return cls(0.0, int(hedge.delay[1:]) / 100, hedge.max)
        return cls(hedge.delay, None, hedge.max)


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """Copy ``percent`` of the calls to ``service`` (a key of the compiled backends)."""

    service: str
    percent: float

    @classmethod
    def of(cls, mirror: Mirror | None) -> MirrorConfig | None:
        """``None`` for no mirror, and for one that copies nothing (``percent: 0``)."""
        if mirror is None or mirror.service is None or mirror.percent <= 0:
            return None
        return cls(mirror.service, mirror.percent)


@dataclass(frozen=True, slots=True)
class CallConfig:
    """Everything one call of one service and route needs, concrete (no ``None`` = inherit)."""

    #: Overall timeout, all tries together; ``None`` when the policy sets 0 (no timeout).
    timeout: float | None
    per_try_timeout: float | None
    #: Retries after the first try.
    attempts: int
    retry_connect: bool
    retry_reset: bool
    retry_statuses: frozenset[int]
    backoff_base: float
    backoff_max: float
    #: The route's ``idempotent`` flag: ``True``/``False`` overrides the method's own semantics.
    idempotent: bool | None
    #: ``(service, percent)`` pairs; the rest of the traffic stays with the called service.
    split: tuple[tuple[str, float], ...]
    fault: FaultConfig | None
    #: The service a route sends its calls to instead of the one called (``None``: that one).
    service: str | None = None
    #: How far a request's own overrides may loosen this config (``_overrides``).
    overrides: OverrideBounds = DEFAULT_BOUNDS
    #: Prefer endpoints in the caller's zone (``None``: as the service called says).
    zone_affinity: bool | None = None
    #: Hedged requests (``None``: none, the call is one try at a time).
    hedge: HedgeConfig | None = None
    #: Traffic mirroring: a fire-and-forget copy of some calls to another service.
    mirror: MirrorConfig | None = None

    def is_idempotent(self, method: str) -> bool:
        return self.idempotent if self.idempotent is not None else method in IDEMPOTENT_METHODS


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What the state of one service (its endpoints and their statistics) is built from."""

    name: str
    endpoints: tuple[str, ...]
    dns: str | None
    load_balancer: str
    outlier: OutlierDetection
    budget: RetryBudget
    #: The ID its ``https://`` endpoints must present (``None``: the default for its name).
    identity: str | None = None
    #: ``(url, zone)`` of the endpoints the policy gives a zone, and whether calls to this
    #: service prefer the caller's zone.
    zones: tuple[tuple[str, str], ...] = ()
    zone_affinity: bool = False
    #: Whether a hedge policy with a percentile delay (``p95``) sends calls here: only then
    #: does the service keep a window of its tries' latencies.
    latency_window: bool = False


#: Reads one request header (case-insensitive), as ``httpx.Headers.get`` does.
HeaderLookup = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class _CompiledRoute:
    method: str | None
    path: str | None
    prefix: bool
    config: CallConfig
    headers: tuple[tuple[str, ValueMatch], ...] = ()
    query: tuple[tuple[str, ValueMatch], ...] = ()


def _query_values(query: bytes | str) -> dict[str, str]:
    """The first value of each query parameter (``a=1&a=2``: ``1``)."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    values: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, max_num_fields=1000):
        values.setdefault(name, value)
    return values


@dataclass(frozen=True, slots=True)
class ServiceRoutes:
    """One service's call configs: the service-wide one and one per route, first match wins."""

    name: str
    default: CallConfig
    routes: tuple[_CompiledRoute, ...]

    def config_for(
        self,
        method: str,
        path: str,
        header: HeaderLookup | None = None,
        query: bytes | str = b"",
    ) -> CallConfig:
        """The first route whose every condition holds (method, path, headers, query), else
        the service's own. The query string is parsed only if a route asks about it."""
        parsed: dict[str, str] | None = None
        for route in self.routes:
            if route.method is not None and route.method != method:
                continue
            if route.path is not None:
                if route.prefix:
                    if not path.startswith(route.path):
                        continue
                elif path != route.path:
                    continue
            if route.headers and not all(
                condition.matches(header(name) if header is not None else None)
                for name, condition in route.headers
            ):
                continue
            if route.query:
                if parsed is None:
                    parsed = _query_values(query)
                if not all(condition.matches(parsed.get(n)) for n, condition in route.query):
                    continue
            return route.config
        return self.default


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    services: dict[str, ServiceRoutes]
    backends: dict[str, BackendConfig]


def _none_if_zero(seconds: float) -> float | None:
    """Envoy's convention: a timeout of 0 means none."""
    return seconds if seconds > 0 else None


def _merge_retries(base: Retries, override: RetriesOverride | None) -> Retries:
    if override is None:
        return base
    backoff = base.backoff
    if override.backoff is not None:
        backoff = backoff.model_copy(update=override.backoff.model_dump(exclude_none=True))
    budget = base.budget
    if override.budget is not None:
        budget = budget.model_copy(update=override.budget.model_dump(exclude_none=True))
    update: dict[str, object] = {"backoff": backoff, "budget": budget}
    if override.attempts is not None:
        update["attempts"] = override.attempts
    if override.on is not None:
        update["on"] = override.on
    return base.model_copy(update=update)


def _call_config(
    timeout: float,
    per_try: float,
    retries: Retries,
    idempotent: bool | None,
    split: tuple[SplitTarget, ...],
    fault: Fault | None,
    service: str | None = None,
    overrides: Overrides | None = None,
    zone_affinity: bool | None = None,
    hedge: Hedge | None = None,
    mirror: Mirror | None = None,
) -> CallConfig:
    on = retries.on
    return CallConfig(
        timeout=_none_if_zero(timeout),
        per_try_timeout=_none_if_zero(per_try),
        attempts=retries.attempts,
        retry_connect="connect-failure" in on,
        retry_reset="reset" in on,
        retry_statuses=frozenset(c for c in on if isinstance(c, int)),
        backoff_base=retries.backoff.base,
        backoff_max=max(retries.backoff.max, retries.backoff.base),
        idempotent=idempotent,
        split=tuple((t.service, t.weight) for t in split if t.weight > 0),
        fault=FaultConfig.of(fault),
        service=service,
        overrides=DEFAULT_BOUNDS if overrides is None else _bounds(overrides),
        zone_affinity=zone_affinity,
        hedge=HedgeConfig.of(hedge),
        mirror=MirrorConfig.of(mirror),
    )


def _bounds(overrides: Overrides) -> OverrideBounds:
    return OverrideBounds(
        headers=overrides.headers,
        min_timeout=overrides.min_timeout,
        max_timeout=overrides.max_timeout or None,
        max_retries=overrides.max_retries or 0,
        idempotent=overrides.idempotent,
    )


def _service_routes(name: str, defaults: Defaults, service: ServicePolicy) -> ServiceRoutes:
    timeout = service.timeout if service.timeout is not None else defaults.timeout
    per_try = (
        service.per_try_timeout if service.per_try_timeout is not None else defaults.per_try_timeout
    )
    retries = _merge_retries(defaults.retries, service.retries)
    default = _call_config(
        timeout,
        per_try,
        retries,
        None,
        service.split,
        service.fault,
        None,
        service.overrides,
        hedge=service.hedge,
        mirror=service.mirror,
    )
    return ServiceRoutes(
        name=name,
        default=default,
        routes=tuple(_route(route, timeout, per_try, retries, service) for route in service.routes),
    )


def _route(
    route: Route, timeout: float, per_try: float, retries: Retries, service: ServicePolicy
) -> _CompiledRoute:
    path = route.match.path
    prefix = path is not None and path.endswith("*")
    config = _call_config(
        route.timeout if route.timeout is not None else timeout,
        route.per_try_timeout if route.per_try_timeout is not None else per_try,
        _merge_retries(retries, route.retries),
        route.idempotent,
        route.split if route.split is not None else service.split,
        route.fault if route.fault is not None else service.fault,
        route.service,
        route.overrides if route.overrides is not None else service.overrides,
        route.zone_affinity,
        route.hedge if route.hedge is not None else service.hedge,
        mirror=route.mirror if route.mirror is not None else service.mirror,
    )
    return _CompiledRoute(
        method=route.match.method,
        path=path[:-1] if prefix and path is not None else path,
        prefix=prefix,
        config=config,
        headers=tuple(route.match.headers.items()),
        query=tuple(route.match.query.items()),
    )


def _backend(name: str, defaults: Defaults, service: ServicePolicy) -> BackendConfig:
    outlier = defaults.outlier_detection
    if service.outlier_detection is not None:
        outlier = outlier.model_copy(
            update=service.outlier_detection.model_dump(exclude_none=True)
        )
    return BackendConfig(
        name=name,
        endpoints=service.endpoint_urls(),
        dns=service.dns,
        load_balancer=service.load_balancer or defaults.load_balancer,
        outlier=outlier,
        budget=_merge_retries(defaults.retries, service.retries).budget,
        identity=service.identity,
        zones=service.endpoint_zones(),
        zone_affinity=bool(service.zone_affinity),
    )


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Fold ``policy`` into the per-service and per-route configs calls look up.

    A split or route target the policy does not define gets a backend without endpoints: its
    share of the calls fails with ``NoHealthyEndpoints`` (as Envoy answers for a missing weighted
    cluster) rather than silently going elsewhere. A mirror target is a backend the same way
    (its own endpoints, balancer and outlier state); an undefined one fails its copies, counted.
    """
    defaults = policy.defaults
    backends = {
        name: _backend(name, defaults, service) for name, service in policy.services.items()
    }
    for service in policy.services.values():
        targets = [t.service for t in service.split]
        if service.mirror is not None and service.mirror.service is not None:
            targets.append(service.mirror.service)
        for route in service.routes:
            targets.extend(t.service for t in route.split or ())
            if route.service is not None:
                targets.append(route.service)
            if route.mirror is not None and route.mirror.service is not None:
                targets.append(route.mirror.service)
        for target in targets:
            if target not in backends:
                backends[target] = _backend(target, defaults, ServicePolicy())
    services = {
        # Keyed as httpx spells hosts (lower case); each keeps the name the policy gives it.
        name.lower(): _service_routes(name, defaults, service)
        for name, service in policy.services.items()
    }
    for name in _percentile_backends(services):
        backends[name] = replace(backends[name], latency_window=True)
    return CompiledPolicy(services=services, backends=backends)


def _percentile_backends(services: dict[str, ServiceRoutes]) -> set[str]:
    """The services a hedge with a percentile delay may call: each keeps a latency window."""
    names: set[str] = set()
    for routes in services.values():
        for config in (routes.default, *(route.config for route in routes.routes)):
            if config.hedge is not None and config.hedge.quantile is not None:
                names.add(config.service or routes.name)
                names.update(target for target, _ in config.split)
    return names
