"""What the control plane keeps, behind one small interface: policy versions, service tokens,
instance reports and (for replicated stores) the public key material the replicas agree on
and, sealed, the private keys they share (see :mod:`asgimesh.controlplane._keys`).

Two implementations, in modules of their own that import only this one: the SQLite store (the
default, a file, nothing to install) and the etcd store (several replicas on one etcd). Both
hand out version numbers atomically, so two writers never make the same version.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ...policy import PolicyRecord

__all__ = ["PolicyRecord", "Store"]


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

    async def refresh(self, record: PolicyRecord) -> None:
        """Replace the stored ``record.version`` (a version already stored) with ``record``: the
        same version and document re-signed with a new signing time."""

    def follow(self, after: int) -> AsyncIterator[PolicyRecord]:
        """Versions newer than ``after`` as other writers store them; runs until cancelled."""

    async def put_token(self, digest: str, service: str) -> None: ...

    async def token_service(self, digest: str) -> str | None: ...

    async def put_report(self, service: str, instance: str, report: dict[str, Any]) -> None: ...

    async def reports(self, newer_than: float) -> list[dict[str, Any]]:
        """Reports received after ``newer_than`` (epoch seconds); older ones may be dropped."""

    async def bootstrap_secret(self, name: str, value: str) -> str:
        """Store ``value`` under ``name`` unless something is there; return what is stored."""

    async def read_bootstrap(self, name: str) -> str | None:
        """What :meth:`bootstrap_secret` stored under ``name``, if anything."""

    async def delete_bootstrap(self, name: str) -> None:
        """Forget ``name`` (a key moved elsewhere by ``--migrate-keys``)."""
