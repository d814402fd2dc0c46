"""The control plane's stores: :func:`open_store` picks one from ``--store``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..._errors import ConfigError
from ..._etcd_access import ETCD_PARAMETERS, EtcdAccessError, etcd_access
from ..._log import redact
from ._base import PolicyRecord, Store

__all__ = ["PolicyRecord", "Store", "open_store"]

_EXPECTED = "etcd://host:port[/prefix], etcds://host:port[/prefix], sqlite:///path or a file path"


def open_store(target: str, state_dir: Path) -> Store:
    """``etcd://host:port[/prefix]`` (``etcds://`` with TLS files and a user, as
    :mod:`asgimesh._etcd_access` describes), ``sqlite:///path``, a file path, or ``""`` (the
    default SQLite file in ``state_dir``)."""
    if target.startswith(("etcd://", "etcds://")):
        from ._etcd import EtcdStore

        shown = f"--store={redact(target)!r}"
        parts = urlsplit(target)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            access, prefix = etcd_access(parts, params, shown)
        except EtcdAccessError as exc:
            raise ConfigError(str(exc)) from None
        if params:
            raise ConfigError(
                f"{shown}: unknown parameter {sorted(params)[0]!r} "
                f"(expected {', '.join(ETCD_PARAMETERS)})"
            )
        return EtcdStore(access, prefix)
    if "://" in target and not target.startswith("sqlite://"):
        raise ConfigError(f"--store={redact(target)!r}: expected {_EXPECTED}")
    from ._sqlite import SQLiteStore

    path = target.removeprefix("sqlite://") if target else str(state_dir / "controlplane.db")
    return SQLiteStore(Path(path))
