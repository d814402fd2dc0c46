"""The policy document of the contract, section 4, as frozen pydantic models.

The same shape arrives from a file, ``MESH_POLICY``, the control plane or etcd. Every model forbids
unknown fields: a typo (``timout``) is a refusal with its path, not a silently ignored setting.
Durations are stored as float seconds.

``defaults`` holds concrete values (the built-in defaults unless a layer sets them); services and
routes hold only what they override (``None`` = inherit), which :mod:`asgimesh.outbound._compile`
folds into one concrete ``CallConfig`` per service and route.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .._durations import parse_duration
from .._wire import (
    HTTP_METHODS,
    SERVICE_NAME,
    ZONE_NAME_EXPECTED,
    is_service_name,
    is_zone_name,
)
from ..identity import is_spiffe_id

__all__ = [
    "AdaptiveConcurrency",
    "AuthorizationRule",
    "Backoff",
    "BackoffOverride",
    "Defaults",
    "Fault",
    "FaultAbort",
    "FaultDelay",
    "Hedge",
    "InboundPolicy",
    "LoadBalancer",
    "Mirror",
    "OutlierDetection",
    "OutlierOverride",
    "Overrides",
    "Policy",
    "RateLimit",
    "Retries",
    "RetriesOverride",
    "RetryBudget",
    "RetryBudgetOverride",
    "Route",
    "RouteMatch",
    "ServicePolicy",
    "SplitTarget",
    "ValueMatch",
    "ZonedEndpoint",
    "parse_dns_target",
]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Percent = Annotated[float, Field(ge=0, le=100)]
LoadBalancer = Literal["p2c_ewma", "round_robin", "least_request", "random"]


def _retry_condition(value: object) -> str | int:
    if value in ("connect-failure", "reset"):
        return str(value)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    raise ValueError(
        f'expected "connect-failure", "reset" or a status from 400 to 599, got {value!r}'
    )


#: ``connect-failure``, ``reset`` or an HTTP status (400-599) that makes a try worth retrying.
RetryCondition = Annotated[str | int, BeforeValidator(_retry_condition)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _method(value: str) -> str:
    upper = value.upper()
    if upper not in HTTP_METHODS:
        raise ValueError(
            f"expected an HTTP method ({', '.join(sorted(HTTP_METHODS))}), got {value!r}"
        )
    return upper


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"expected a path starting with '/', got {value!r}")
    if "*" in value[:-1]:
        raise ValueError(f"expected an exact path or a prefix ending in '*', got {value!r}")
    return value


Method = Annotated[str, BeforeValidator(lambda v: _method(v) if isinstance(v, str) else v)]
PathPattern = Annotated[str, BeforeValidator(lambda v: _path(v) if isinstance(v, str) else v)]


# ---- retries -----------------------------------------------------------------------------------


class Backoff(_Model):
    """Exponential backoff, full jitter: retry *n* sleeps ``uniform(0, min(max, base * 2**n))``."""

    base: Duration = 0.025
    max: Duration = 0.25


class RetryBudget(_Model):
    """Retries: at most ``ratio`` of requests over ``ttl``, plus ``min_per_second`` (Linkerd)."""

    ratio: float = Field(default=0.2, ge=0, le=10)
    min_per_second: float = Field(default=10, ge=0)
    ttl: Duration = 10.0

    @field_validator("ttl")
    @classmethod
    def _positive_ttl(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration above zero")
        return value


class Retries(_Model):
    attempts: int = Field(default=2, ge=0, le=10)
    on: tuple[RetryCondition, ...] = ("connect-failure", "reset", 502, 503, 504)
    backoff: Backoff = Backoff()
    budget: RetryBudget = RetryBudget()


class BackoffOverride(_Model):
    base: Duration | None = None
    max: Duration | None = None


class RetryBudgetOverride(_Model):
    ratio: float | None = Field(default=None, ge=0, le=10)
    min_per_second: float | None = Field(default=None, ge=0)
    ttl: Duration | None = None


class RetriesOverride(_Model):
    attempts: int | None = Field(default=None, ge=0, le=10)
    on: tuple[RetryCondition, ...] | None = None
    backoff: BackoffOverride | None = None
    budget: RetryBudgetOverride | None = None


# ---- outlier detection -------------------------------------------------------------------------


class OutlierDetection(_Model):
    consecutive_failures: int = Field(default=5, ge=1)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: Percent = 50


class OutlierOverride(_Model):
    consecutive_failures: int | None = Field(default=None, ge=1)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: Percent | None = None


# ---- traffic -----------------------------------------------------------------------------------


class SplitTarget(_Model):
    service: str = Field(min_length=1)
    weight: Percent


class FaultAbort(_Model):
    percent: Percent = 0
    status: int = Field(default=503, ge=200, le=599)


class FaultDelay(_Model):
    percent: Percent = 0
    duration: Duration = 0.1


class Fault(_Model):
    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


#: The percentiles a hedge's ``delay`` may name: ``p50`` to ``p99``.
_PERCENTILE = re.compile(r"p([5-9][0-9])")
_HEDGE_DELAY = (
    'a duration above zero ("50ms") or a percentile of the service\'s latency, '
    '"p50" to "p99" (such as "p95")'
)


def _hedge_delay(value: object) -> float | str:
    """A fixed delay in seconds (above zero), or ``pNN``: that percentile of the service's
    observed try latencies, kept as the text (compiled into a quantile)."""
    if isinstance(value, str) and _PERCENTILE.fullmatch(value.strip().lower()):
        return value.strip().lower()
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError(f"expected {_HEDGE_DELAY}, got {value!r}")
    return seconds


def _hedge_max(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 3:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_HEDGES:
        return value
    raise ValueError(
        f"expected 0 (no hedging) to {MAX_HEDGES} hedges per call, got {value!r}"
    )


#: Hedges one call may send at most: each one is a whole extra request to the service.
MAX_HEDGES = 3


class Hedge(_Model):
    """Hedged requests: an idempotent call's try unanswered after ``delay`` is raced by another
    try to another endpoint (up to ``max`` of them); the first usable answer wins."""

    #: Seconds, or ``"pNN"``: that percentile of the service's recent try latencies.
    delay: Annotated[float | str, BeforeValidator(_hedge_delay)] = "p95"
    #: Hedges per call at most; ``0`` turns hedging off (a route opting out of its service's).
    max: Annotated[int, BeforeValidator(_hedge_max)] = 1


class Mirror(_Model):
    """Traffic mirroring (shadowing): ``percent`` of the calls are also sent, fire-and-forget,
    to ``service``; its answers are discarded. ``{percent: 0}`` (no service) spares a route."""

    service: str | None = None
    #: Istio's ``mirrorPercentage``: all of them unless told otherwise.
    percent: Percent = 100

    @field_validator("service")
    @classmethod
    def _service(cls, value: str | None) -> str | None:
        if value is not None and not is_service_name(value):
            raise ValueError(
                "expected a service name (letters, digits, '.', '_' and '-', starting and "
                f"ending with a letter or digit), got {value[:100]!r}"
            )
        return value

    @model_validator(mode="after")
    def _target(self) -> Mirror:
        if self.service is None and self.percent > 0:
            raise ValueError(
                "expected service, the mesh service to mirror to "
                "(or percent: 0, to mirror none of these calls)"
            )
        return self


def _check_split(split: tuple[SplitTarget, ...]) -> tuple[SplitTarget, ...]:
    total = sum(target.weight for target in split)
    if total > 100:
        raise ValueError(f"expected weights that add up to at most 100, got {total:g}")
    return split


#: Header names are HTTP tokens, matched without regard to case (kept lower case).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
#: Conditions one route may set on headers, and on query parameters.
MAX_CONDITIONS = 16


class ValueMatch(_Model):
    """One condition on a header or query parameter: equal to ``exact``, starting with
    ``prefix``, or ``present`` (``false``: absent). A bare string means ``exact``."""

    exact: str | None = Field(default=None, max_length=1000)
    prefix: str | None = Field(default=None, min_length=1, max_length=1000)
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> ValueMatch:
        given = [k for k in ("exact", "prefix", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "expected exactly one of exact, prefix or present "
                f"(or a string, for exact), got {', '.join(given) or 'none'}"
            )
        return self

    def matches(self, value: str | None) -> bool:
        if self.present is not None:
            return (value is not None) is self.present
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        assert self.prefix is not None
        return value.startswith(self.prefix)


def _value_match(value: object) -> object:
    return {"exact": value} if isinstance(value, str) else value


Condition = Annotated[ValueMatch, BeforeValidator(_value_match)]


def _header_names(value: dict[str, ValueMatch]) -> dict[str, ValueMatch]:
    lowered: dict[str, ValueMatch] = {}
    for name, condition in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"expected header names of letters, digits and -, got {name[:100]!r}")
        if name.lower() in lowered:
            raise ValueError(f"expected each header once, got {name!r} twice (names ignore case)")
        lowered[name.lower()] = condition
    return lowered


class RouteMatch(_Model):
    method: Method | None = None
    path: PathPattern | None = None
    #: Request headers the call must carry (all of them): canaries by header, per-tenant routes.
    headers: Annotated[
        dict[str, Condition], AfterValidator(_header_names), Field(max_length=MAX_CONDITIONS)
    ] = {}
    #: Query parameters the URL must carry (all of them; the first value of each counts).
    query: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=100)], Condition],
        Field(max_length=MAX_CONDITIONS),
    ] = {}


class Overrides(_Model):
    """How far a request's own overrides (the httpx extension ``mesh``, ``mesh-timeout``-style
    headers) may loosen its call's policy. Tightening (a shorter timeout, fewer retries) is
    always allowed; by default the policy's own values are the ceiling."""

    #: Read the ``mesh-timeout``, ``mesh-per-try-timeout``, ``mesh-retries`` and
    #: ``mesh-idempotent`` request headers (``false``: only the extension counts).
    headers: bool = True
    #: No per-request timeout below this (0: no floor).
    min_timeout: Duration = 0.0
    #: A request may raise its timeouts up to this (default: not above the policy's).
    max_timeout: Duration | None = None
    #: A request may ask for up to this many retries (default: not more than the policy's).
    max_retries: int | None = Field(default=None, ge=0, le=10)
    #: A request may mark itself idempotent (retryable whatever its method).
    idempotent: bool = False

    @model_validator(mode="after")
    def _order(self) -> Overrides:
        if self.max_timeout is not None and 0 < self.max_timeout < self.min_timeout:
            raise ValueError(
                f"expected min_timeout <= max_timeout, got {self.min_timeout:g}s > "
                f"{self.max_timeout:g}s"
            )
        return self


class Route(_Model):
    match: RouteMatch = RouteMatch()
    #: Send matching calls to this service instead (its endpoints, balancer and outlier
    #: state; this route's timeouts and retries). A split on the route divides them further.
    service: str | None = Field(default=None, pattern=f"^{SERVICE_NAME}$")
    timeout: Duration | None = None
    per_try_timeout: Duration | None = None
    retries: RetriesOverride | None = None
    #: Marks a route safe to retry whatever its method (the operator vouches it is idempotent).
    idempotent: bool | None = None
    split: tuple[SplitTarget, ...] | None = None
    fault: Fault | None = None
    #: What a request may override of this route's settings (default: the service's).
    overrides: Overrides | None = None
    #: As the service's ``zone_affinity``, for matching calls.
    zone_affinity: bool | None = None
    #: Hedged requests for matching calls (idempotent ones only); ``{max: 0}``: none here.
    hedge: Hedge | None = None
    #: Overrides the service's ``mirror`` for matching calls (``{percent: 0}``: none).
    mirror: Mirror | None = None

    @field_validator("split")
    @classmethod
    def _weights(cls, value: tuple[SplitTarget, ...] | None) -> tuple[SplitTarget, ...] | None:
        return None if value is None else _check_split(value)

    @field_validator("retries")
    @classmethod
    def _no_route_budget(cls, value: RetriesOverride | None) -> RetriesOverride | None:
        if value is not None and value.budget is not None:
            raise ValueError(
                "expected no budget here: a retry budget is per service "
                "(set it under the service's or the defaults' retries)"
            )
        return value


def _endpoint_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http:// or https:// URLs, got {url[:200]!r}")
    return url.rstrip("/")


class ZonedEndpoint(_Model):
    """An endpoint with the zone it runs in, for ``zone_affinity``."""

    url: str
    #: The zone it runs in (``us-east-1a``), compared with the caller's ``MESH_ZONE``.
    zone: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _endpoint_url(value)

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if not is_zone_name(value):
            raise ValueError(f"expected {ZONE_NAME_EXPECTED}, got {value[:100]!r}")
        return value


class ServicePolicy(_Model):
    #: Origins, each a URL or ``{url, zone}``.
    endpoints: tuple[str | ZonedEndpoint, ...] = ()
    #: ``host:port`` whose A/AAAA records are this service's endpoints (a headless service).
    dns: str | None = None
    timeout: Duration | None = None
    per_try_timeout: Duration | None = None
    retries: RetriesOverride | None = None
    load_balancer: LoadBalancer | None = None
    outlier_detection: OutlierOverride | None = None
    routes: tuple[Route, ...] = ()
    split: tuple[SplitTarget, ...] = ()
    fault: Fault | None = None
    #: What a request may override of this service's settings (timeout, retries, idempotency).
    overrides: Overrides | None = None
    #: Prefer endpoints in this instance's zone (``MESH_ZONE``) while they are healthy and
    #: not overloaded; the others take the spill-over (``docs/outbound.md``).
    zone_affinity: bool | None = None
    #: Hedged requests for this service's idempotent calls (see ``docs/outbound.md``).
    hedge: Hedge | None = None
    #: A copy of ``percent`` of the calls, sent to another service and its answer discarded.
    mirror: Mirror | None = None
    #: The SPIFFE ID its ``https://`` endpoints must present, where it is not the mesh's
    #: default for the service's name (``spiffe://<trust domain>/ns/<namespace>/sa/<name>``):
    #: another namespace's service, a differently named workload, a federated trust domain.
    identity: str | None = None

    @field_validator("identity")
    @classmethod
    def _identity(cls, value: str | None) -> str | None:
        if value is not None and not is_spiffe_id(value):
            raise ValueError(
                f"expected a SPIFFE ID (spiffe://<trust domain>/<path>), got {value[:100]!r}"
            )
        return value

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: tuple[str | ZonedEndpoint, ...]) -> tuple[str | ZonedEndpoint, ...]:
        return tuple(e if isinstance(e, ZonedEndpoint) else _endpoint_url(e) for e in endpoints)

    def endpoint_urls(self) -> tuple[str, ...]:
        return tuple(e.url if isinstance(e, ZonedEndpoint) else e for e in self.endpoints)

    def endpoint_zones(self) -> tuple[tuple[str, str], ...]:
        """``(url, zone)`` of the endpoints given with a zone."""
        return tuple((e.url, e.zone) for e in self.endpoints if isinstance(e, ZonedEndpoint))

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: str | None) -> str | None:
        if value is not None:
            parse_dns_target(value)
        return value

    @field_validator("split")
    @classmethod
    def _weights(cls, value: tuple[SplitTarget, ...]) -> tuple[SplitTarget, ...]:
        return _check_split(value)

    @model_validator(mode="after")
    def _one_discovery(self) -> ServicePolicy:
        if self.dns is not None and self.endpoints:
            raise ValueError("expected either endpoints or dns, not both")
        return self


class Defaults(_Model):
    timeout: Duration = 10.0
    per_try_timeout: Duration = 2.0
    retries: Retries = Retries()
    load_balancer: LoadBalancer = "p2c_ewma"
    outlier_detection: OutlierDetection = OutlierDetection()


def parse_dns_target(value: str) -> tuple[str, str, int]:
    """``host:port`` or ``https://host:port`` to ``(scheme, host, port)``; ``ValueError`` else."""
    text = value if "://" in value else f"http://{value}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
    ):
        raise ValueError(f'expected "host:port" (or "https://host:port"), got {value!r}')
    return parts.scheme, parts.hostname, port


# ---- inbound -----------------------------------------------------------------------------------


class Allow(_Model):
    from_: tuple[str, ...] | None = Field(default=None, alias="from")
    methods: tuple[Method, ...] | None = None
    paths: tuple[PathPattern, ...] | None = None

    @field_validator("from_")
    @classmethod
    def _identities(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for identity in value or ():
            if identity != "*" and not identity.startswith("spiffe://"):
                raise ValueError(f"expected SPIFFE IDs (spiffe://...) or '*', got {identity!r}")
        return value


class AuthorizationRule(_Model):
    allow: Allow


class RateLimit(_Model):
    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)


class AdaptiveConcurrency(_Model):
    """An inbound concurrency limit found from observed latency (see ``docs/policy.md``)."""

    enabled: bool = True
    #: Where the limit starts, and the bounds it moves within.
    initial_limit: int = Field(default=20, ge=1, le=100_000)
    min_limit: int = Field(default=4, ge=1, le=100_000)
    max_limit: int = Field(default=1000, ge=1, le=100_000)
    #: How much slower than the long-term latency requests may get before the limit shrinks.
    tolerance: float = Field(default=1.5, ge=1.0, le=10.0)

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveConcurrency:
        if not self.min_limit <= self.max_limit:
            raise ValueError(
                f"expected min_limit <= max_limit, got {self.min_limit} > {self.max_limit}"
            )
        return self


class InboundPolicy(_Model):
    authorization: tuple[AuthorizationRule, ...] | None = None
    rate_limit: RateLimit | None = None
    concurrency_limit: int | None = Field(default=None, ge=1)
    #: A concurrency limit that adapts to latency; ``concurrency_limit``, if set too, caps it.
    adaptive_concurrency: AdaptiveConcurrency | None = None
    #: Proxies (IP addresses or networks) whose forwarded client certificates are believed.
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"expected IP addresses or networks, got {item!r}") from None
        return value


# ---- the document ------------------------------------------------------------------------------


class Policy(_Model):
    """A whole, valid policy document. Build it with :func:`asgimesh.policy.parse_policy`."""

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    services: dict[str, ServicePolicy] = {}
    inbound: dict[str, InboundPolicy] = {}

    @model_validator(mode="after")
    def _mirrors_elsewhere(self) -> Policy:
        """A mirror must copy the calls to another service than the one they go to: a copy to
        the same service would double its traffic (and its writes) for nothing to compare.
        Checked here, where the service's name (its key) is known, with the field's path."""
        problems: list[InitErrorDetails] = []
        for name, service in self.services.items():
            checks: list[tuple[tuple[str | int, ...], Mirror | None, str]] = [
                (("mirror",), service.mirror, name)
            ]
            checks.extend(
                (("routes", index, "mirror"), route.mirror, route.service or name)
                for index, route in enumerate(service.routes)
            )
            for where, mirror, destination in checks:
                if mirror is not None and mirror.service == destination:
                    # Service names hold no braces (checked above): safe as a message template.
                    message = (
                        f"expected another service than {destination!r}, where these calls "
                        f"go already, got {mirror.service!r}"
                    )
                    problems.append(
                        InitErrorDetails(
                            type=PydanticCustomError("value_error", message),
                            loc=("services", name, *where, "service"),
                            input=mirror.service,
                        )
                    )
        if problems:
            raise ValidationError.from_exception_data("Policy", problems)
        return self
