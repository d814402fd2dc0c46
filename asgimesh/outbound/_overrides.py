"""Per-request overrides: a call's timeout, retries and idempotency, set by the app on the request.

Linkerd's proxy reads ``l5d-timeout`` and ``l5d-retry-limit`` from the request; an in-process
mesh can take them the idiomatic httpx way too, as a request extension::

    await client.get("http://search/q", extensions={"mesh": {"timeout": "300ms", "retries": 0}})
    await client.post("http://payments/charge", headers={"mesh-idempotent": "true"}, ...)

Keys (extension) and headers: ``timeout`` / ``mesh-timeout`` (the whole call, every try),
``per_try_timeout`` / ``mesh-per-try-timeout``, ``retries`` / ``mesh-retries`` (retries after the
first try), ``idempotent`` / ``mesh-idempotent``. The headers are instructions to this mesh, never
sent on. Where both carry a key, the extension's value wins (it is the app's own code; a header may
have been copied from an inbound request).

What the policy's ``overrides`` allow, :class:`OverrideBounds` holds. *Tightening* is always
allowed (a shorter timeout, fewer retries, ``idempotent: false``): it can only make a call fail
sooner or retry less. *Loosening* goes only as far as the operator allows: a longer timeout up to
``max_timeout``, more retries up to ``max_retries``, marking a call idempotent only with
``idempotent: true``; by default the policy's own values are the ceiling. ``min_timeout`` is a
floor no request goes under. A value beyond a bound is clamped (and counted), not refused: the
call still goes, within what the operator set. A value that is not a value (``mesh-timeout:
fast``) is refused, naming where it came from, the value and what was expected.

All of it is sans-I/O: :func:`requested` reads, :func:`apply` decides; the call state machine
calls them once, only for a request that carries an override.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._durations import parse_duration
from ._refusal import Refusal

if TYPE_CHECKING:
    from ._compile import CallConfig

__all__ = [
    "DEFAULT_BOUNDS",
    "EXTENSION",
    "OVERRIDE_HEADERS",
    "OverrideBounds",
    "Requested",
    "apply",
    "requested",
]

#: The request extension the app sets: ``extensions={"mesh": {...}}``.
EXTENSION = "mesh"
#: Headers read as overrides (and never sent on), and the key each sets.
OVERRIDE_HEADERS: Mapping[bytes, str] = {
    b"mesh-timeout": "timeout",
    b"mesh-per-try-timeout": "per_try_timeout",
    b"mesh-retries": "retries",
    b"mesh-idempotent": "idempotent",
}
_KEYS = frozenset(OVERRIDE_HEADERS.values())
#: The most retries any policy allows (the policy model's bound on ``attempts``).
MAX_RETRIES = 10
#: A header value longer than this is not a value (``mesh-timeout: 1000000…``).
MAX_HEADER_VALUE = 32
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


@dataclass(frozen=True, slots=True)
class OverrideBounds:
    """How far a request may loosen its call's policy (concrete, per service and route)."""

    #: Whether ``mesh-*`` override headers are read (the extension always is).
    headers: bool = True
    #: No timeout (call or per try) below this; 0: no floor.
    min_timeout: float = 0.0
    #: Ceiling of a timeout longer than the policy's own; ``None``: the policy's own value.
    max_timeout: float | None = None
    #: Ceiling of more retries (at or below the policy's own ``attempts``: no more than it).
    max_retries: int = 0
    #: Whether a request may mark itself idempotent (retryable whatever its method).
    idempotent: bool = False


#: The bounds of a service or route whose policy says nothing of overrides.
DEFAULT_BOUNDS = OverrideBounds()


@dataclass(frozen=True, slots=True)
class Requested:
    """What one request asked for (``None``: not asked), each value already parsed."""

    timeout: float | None = None
    per_try_timeout: float | None = None
    retries: int | None = None
    idempotent: bool | None = None


def _where(key: str, header: bool) -> str:
    if header:
        name = next(h for h, k in OVERRIDE_HEADERS.items() if k == key)
        return f"the {name.decode()} header"
    return f'extensions["mesh"]["{key}"]'


def _duration(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Refusal("override", f"{where}: expected a duration, got {value!r:.100}")
    if isinstance(value, str):
        if len(value) > MAX_HEADER_VALUE:
            raise Refusal("override", f"{where}: expected a duration, got {value[:40]!r}...")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise Refusal("override", f"{where}: {exc}") from None
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise Refusal(
            "override", f"{where}: expected a duration of 0 or more seconds, got {value!r}"
        )
    return seconds


def _retries(value: object, where: str) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 2:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise Refusal(
            "override", f"{where}: expected a number of retries from 0 to {MAX_RETRIES}, "
            f"got {value!r:.100}"
        )
    return value


def _flag(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise Refusal("override", f"{where}: expected true or false, got {value!r:.100}")


def requested(extension: object, headers: Mapping[str, str] | None) -> Requested | None:
    """The overrides of one request: its ``mesh`` extension, then its override headers (read
    only where ``headers`` is given: the bounds allow them); ``None`` when it asks for nothing.
    :class:`Refusal` (``override``) for a value that is not one."""
    raw: dict[str, tuple[object, bool]] = {}
    if headers:
        for key, value in headers.items():
            raw[key] = (value.strip(), True)
    if extension is not None:
        if not isinstance(extension, Mapping):
            raise Refusal(
                "override",
                f'extensions["mesh"]: expected a dict of {", ".join(sorted(_KEYS))}, '
                f"got {type(extension).__name__}",
            )
        for key, value in extension.items():
            if key not in _KEYS:
                raise Refusal(
                    "override",
                    f'extensions["mesh"]: unknown key {key!r:.100} '
                    f"(expected {', '.join(sorted(_KEYS))})",
                )
            raw[key] = (value, False)
    if not raw:
        return None
    parsed: dict[str, object] = {}
    for key, (given, header) in raw.items():
        where = _where(key, header)
        if key in ("timeout", "per_try_timeout"):
            parsed[key] = _duration(given, where)
        elif key == "retries":
            parsed[key] = _retries(given, where)
        else:
            parsed[key] = _flag(given, where)
    return Requested(**parsed)  # type: ignore[arg-type]


def _timeout(
    asked: float, policy: float | None, bounds: OverrideBounds
) -> tuple[float | None, bool]:
    """A timeout asked for (0: none), within the bounds; and whether it was clamped.

    Above the policy's own value is loosening (up to ``max_timeout``, if higher); below it,
    down to ``min_timeout`` (or the policy's own value, if that is lower still)."""
    wanted = asked if asked > 0 else math.inf
    value = wanted
    if policy is not None and wanted > policy:
        ceiling = policy if bounds.max_timeout is None else max(policy, bounds.max_timeout)
        value = min(wanted, ceiling)
    floor = bounds.min_timeout if policy is None else min(bounds.min_timeout, policy)
    value = max(value, floor)
    return (None if math.isinf(value) else value), value != wanted


def apply(config: CallConfig, method: str, asked: Requested) -> tuple[CallConfig, bool]:
    """``config`` of a ``method`` call with ``asked`` applied within ``config.overrides``; and
    whether anything was clamped to a bound (or, for ``idempotent``, ignored)."""
    bounds = config.overrides
    changes: dict[str, object] = {}
    clamped = False
    if asked.timeout is not None:
        changes["timeout"], was = _timeout(asked.timeout, config.timeout, bounds)
        clamped |= was
    if asked.per_try_timeout is not None:
        changes["per_try_timeout"], was = _timeout(
            asked.per_try_timeout, config.per_try_timeout, bounds
        )
        clamped |= was
    if asked.retries is not None:
        ceiling = max(config.attempts, bounds.max_retries)
        changes["attempts"] = min(asked.retries, ceiling)
        clamped |= asked.retries > ceiling
    if asked.idempotent is not None:
        if asked.idempotent and not bounds.idempotent and not config.is_idempotent(method):
            clamped = True
        else:
            changes["idempotent"] = asked.idempotent
    if not changes:
        return config, clamped
    return dataclasses.replace(config, **changes), clamped  # type: ignore[arg-type]
