"""Parsing and making the mesh's wire headers (contract, section 5). Pure functions.

Whatever a caller sends, these return a value or ``None``: a header the mesh cannot parse is
treated as absent, never as an error.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import TypeGuard

__all__ = [
    "HTTP_METHODS",
    "IDEMPOTENT_METHODS",
    "SERVICE_NAME",
    "ZONE_NAME_EXPECTED",
    "bearer_token",
    "is_service_name",
    "is_zone_name",
    "new_id",
    "new_span_id",
    "parse_deadline_ms",
    "parse_envoy_timeout_ms",
    "parse_grpc_timeout",
    "parse_request_id",
    "parse_traceparent",
    "parse_tracestate",
]

#: The methods of RFC 9110 (and PATCH, RFC 5789): what metrics label and policy rules name; any
#: other method counts as ``_OTHER``, so made-up methods cannot grow label sets.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

# Matched with ``fullmatch``: ``$`` would also match before a trailing newline.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")
#: W3C ``tracestate``: at most 32 comma-separated ``key=value`` members, printable ASCII.
_TRACESTATE = re.compile(r"[\x20-\x7e]{0,512}")
#: A service (or namespace) name: letters, digits, ``.``, ``_`` and ``-``, starting and ending
#: with a letter or digit, at most 253 characters, as a DNS name or a Kubernetes object name.
SERVICE_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?"
_SERVICE_NAME = re.compile(SERVICE_NAME)


def is_service_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a string that is a valid service or namespace name."""
    return isinstance(value, str) and _SERVICE_NAME.fullmatch(value) is not None


#: A zone (failure domain), as clouds and Kubernetes' ``topology.kubernetes.io/zone`` spell
#: them (``us-east-1a``, ``europe-west4-b``): what ``MESH_ZONE`` and an endpoint's ``zone`` hold.
_ZONE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: Says what a zone name is, in the errors refusing one.
ZONE_NAME_EXPECTED = (
    "a zone name (letters, digits, '.', '_' and '-', at most 63, such as us-east-1a)"
)


def is_zone_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a string that is a valid zone name."""
    return isinstance(value, str) and _ZONE_NAME.fullmatch(value) is not None


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, else ``None`` (absent,
    another scheme, or empty). The scheme is case-insensitive (RFC 9110, section 11.1)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

#: RFC 9110, section 9.2.2: a retry of these cannot do what the first try did not already do.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_span_id, flags)`` from a valid W3C ``traceparent``, else ``None``."""
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, flags


def parse_tracestate(value: str | None) -> str | None:
    """A caller's ``tracestate`` if it is at most 512 printable ASCII characters in at most 32
    ``key=value`` members, else ``None``. Vendors' values are opaque: kept, not interpreted."""
    if not value or not _TRACESTATE.fullmatch(value):
        return None
    members = [m.strip() for m in value.split(",") if m.strip()]
    if not members or len(members) > 32 or any("=" not in m for m in members):
        return None
    return ",".join(members)


def parse_request_id(value: str | None) -> str | None:
    """A caller's ``x-request-id`` if it is 1-200 visible ASCII characters, else ``None``."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None


def _positive_number(value: str | None, limit: int = 12) -> float | None:
    if not value:
        return None
    text = value.strip()
    # isascii(): str.isdigit() also accepts "²" and other digits that float() refuses.
    if not text or len(text) > limit or not text.isascii() or not text.isdigit():
        return None
    return float(text)


def parse_deadline_ms(value: str | None) -> float | None:
    """Seconds from ``mesh-deadline-ms`` (whole milliseconds), else ``None``."""
    millis = _positive_number(value)
    return None if millis is None else millis / 1000.0


def parse_envoy_timeout_ms(value: str | None) -> float | None:
    """Seconds from ``x-envoy-expected-rq-timeout-ms``; Envoy's 0 means no timeout."""
    millis = _positive_number(value)
    return None if not millis else millis / 1000.0


def parse_grpc_timeout(value: str | None) -> float | None:
    """Seconds from ``grpc-timeout`` (at most 8 digits and a unit: H M S m u n), else ``None``."""
    if not value or len(value) < 2 or len(value) > 9:
        return None
    digits, unit = value[:-1], value[-1]
    if not digits.isascii() or not digits.isdigit() or unit not in _GRPC_UNITS:
        return None
    return int(digits) * _GRPC_UNITS[unit]


def new_id(bits: int, randbits: Callable[[int], int] = random.getrandbits) -> str:
    """A W3C id of ``bits`` bits (128: trace and request ids, 64: span ids) as lower-case hex,
    never all zeros. From ``random.getrandbits`` (reseeded after fork) by default: ids must be
    unique, not secret, and ``os.urandom`` would cost a system call on every request."""
    return (randbits(bits) or 1).to_bytes(bits // 8, "big").hex()


def new_span_id() -> str:
    """A W3C span id: :func:`new_id` of 64 bits."""
    return new_id(64)
