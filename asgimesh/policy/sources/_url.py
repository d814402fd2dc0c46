"""``MESH_CONFIG`` as a URL: a control plane (``http(s)://``) or etcd (``etcd(s)://``), taken apart.

Pure: parsing and naming only. Unknown parameters are refused by name, because a typo must not
silently turn serverless mode off; names shown in logs and ``/_mesh/config`` never carry the
URL's credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ..._durations import parse_duration
from ..._errors import ConfigError
from ..._etcd_access import ETCD_PARAMETERS, ETCD_SCHEMES, EtcdAccess, EtcdAccessError, etcd_access
from ..._log import redact

__all__ = ["SourceOptions", "parse_source_url"]

_PARAMETERS = ("refresh", "report", "backoff_max")


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """``MESH_CONFIG`` taken apart."""

    kind: str  # "http" or "etcd"
    base_url: str  # the control plane URL, or the etcd gateway URL
    prefix: str = "/asgimesh"  # etcd only
    #: etcd only: TLS files and user (``etcds://``); its ``repr`` hides the password.
    etcd: EtcdAccess | None = None
    #: Serverless mode: refresh at most this often, from requests. ``None``: watch.
    refresh: float | None = None
    report_every: float = 10.0
    #: Exponential backoff (full jitter) between reconnection attempts.
    backoff_base: float = 0.1
    backoff_max: float = 5.0

    @property
    def name(self) -> str:
        """The source's name in logs and snapshots: ``controlplane:URL`` or ``etcd:URL/prefix``,
        credentials redacted."""
        if self.kind == "etcd":
            return f"etcd:{redact(self.base_url)}{self.prefix}"
        return f"controlplane:{redact(self.base_url)}"


def parse_source_url(url: str) -> SourceOptions:
    """Parse ``http(s)://host:port[/path][?refresh=30s&report=10s]`` or
    ``etcd(s)://[user@]host:port/prefix[?cacert=…&cert=…&key=…&password_file=…]``."""
    shown = redact(url)
    parts = urlsplit(url)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    access: EtcdAccess | None = None
    prefix = "/asgimesh"
    if parts.scheme in ETCD_SCHEMES:
        try:
            access, prefix = etcd_access(parts, params, f"MESH_CONFIG={shown!r}")
        except EtcdAccessError as exc:
            raise ConfigError(str(exc)) from None
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        etcd = ", ".join(ETCD_PARAMETERS) + ", " if access is not None else ""
        raise ConfigError(
            f"MESH_CONFIG={shown!r}: unknown parameter {unknown[0]!r} "
            f"(expected {etcd}refresh, report or backoff_max)"
        )
    durations: dict[str, float] = {}
    for name, value in params.items():
        try:
            durations[name] = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"MESH_CONFIG={shown!r}: {name}: {exc}") from None
    refresh = durations.get("refresh")
    common: dict[str, Any] = {
        "refresh": refresh if refresh else None,
        "report_every": durations.get("report", 10.0) or 10.0,
        "backoff_max": durations.get("backoff_max", 5.0) or 5.0,
    }
    if access is not None:
        return SourceOptions(
            kind="etcd", base_url=access.endpoint, prefix=prefix, etcd=access, **common
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"MESH_CONFIG={shown!r}: expected an http(s)://, etcd:// or etcds:// URL"
        )
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    return SourceOptions(kind="http", base_url=base, **common)
