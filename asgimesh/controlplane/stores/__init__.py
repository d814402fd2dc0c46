"""The control plane's stores: :func:`open_store` picks one from ``--store``."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..._errors import ConfigError
from ._base import PolicyRecord, Store

__all__ = ["PolicyRecord", "Store", "open_store"]


def open_store(target: str, state_dir: Path) -> Store:
    """``etcd://host:port[/prefix]``, ``sqlite:///path``, a file path, or ``""`` (the default
    SQLite file in ``state_dir``)."""
    if target.startswith("etcd://"):
        from ._etcd import EtcdStore

        parts = urlsplit(target)
        if not parts.hostname or not parts.port:
            raise ConfigError(f"--store={target!r}: expected etcd://host:port[/prefix]")
        prefix = parts.path.rstrip("/") or "/asgimesh"
        return EtcdStore(f"http://{parts.hostname}:{parts.port}", prefix)
    if "://" in target and not target.startswith("sqlite://"):
        raise ConfigError(
            f"--store={target!r}: expected etcd://host:port[/prefix], sqlite:///path or a file path"
        )
    from ._sqlite import SQLiteStore

    path = target.removeprefix("sqlite://") if target else str(state_dir / "controlplane.db")
    return SQLiteStore(Path(path))
