"""What the control plane keeps, behind one small interface: policy versions, service tokens,
instance reports and (for replicated stores) the key material the replicas share.

Two implementations: :class:`~asgimesh.controlplane._sqlite.SQLiteStore` (the default, a file,
nothing to install) and :class:`~asgimesh.controlplane._etcd.EtcdStore` (several replicas on one
etcd). Both hand out version numbers atomically, so two writers never make the same version.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .._errors import ConfigError

__all__ = ["PolicyRecord", "Store", "open_store"]


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One stored, signed policy version."""

    version: int
    policy: dict[str, Any]
    signature: str
    signer: str
    created: float
    #: Why this version exists when not a plain PUT, e.g. ``"rollback to 3"``.
    note: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> PolicyRecord:
        data = json.loads(text)
        return cls(
            version=int(data["version"]),
            policy=dict(data["policy"]),
            signature=str(data["signature"]),
            signer=str(data["signer"]),
            created=float(data["created"]),
            note=data.get("note"),
        )

    def envelope(self) -> dict[str, Any]:
        """What ``GET /v1/policy`` answers and what a service verifies."""
        return {
            "version": self.version,
            "policy": self.policy,
            "signature": self.signature,
            "signer": self.signer,
        }


class Store(Protocol):
    """The control plane's state. Every method is async and safe to call concurrently."""

    #: True when other replicas may write to the same state (then :meth:`follow` matters).
    shared: bool
    description: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def latest(self) -> PolicyRecord | None: ...

    async def get(self, version: int) -> PolicyRecord | None: ...

    async def history(self, limit: int) -> list[PolicyRecord]:
        """Newest first."""

    async def append(self, make: Callable[[int], PolicyRecord]) -> PolicyRecord:
        """Store ``make(n)`` as version ``n``, the next free number, atomically."""

    def follow(self, after: int) -> AsyncIterator[PolicyRecord]:
        """Versions newer than ``after`` as other writers store them; runs until cancelled."""

    async def put_token(self, digest: str, service: str) -> None: ...

    async def token_service(self, digest: str) -> str | None: ...

    async def put_report(self, service: str, instance: str, report: dict[str, Any]) -> None: ...

    async def reports(self, newer_than: float) -> list[dict[str, Any]]:
        """Reports received after ``newer_than`` (epoch seconds); older ones may be dropped."""

    async def bootstrap_secret(self, name: str, value: str) -> str:
        """Store ``value`` under ``name`` unless something is there; return what is stored."""


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
