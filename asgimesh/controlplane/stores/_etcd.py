"""The control plane's store on etcd: several replicas share one state.

``<prefix>/policy/latest`` holds the highest version number, and a compare-and-swap transaction
on its ``mod_revision`` writes the counter and the record together, so two replicas never make
the same version. Replicas learn of each other's writes through a watch on the version prefix
(:meth:`~asgimesh._etcd.EtcdPolicyReader.follow`). The gateway client and the key layout are in
:mod:`asgimesh._etcd`, which services share.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..._etcd import EtcdAccess, EtcdError, EtcdPolicyReader
from ...policy import PolicyRecord

__all__ = ["EtcdStore"]


class EtcdStore(EtcdPolicyReader):
    """The control plane's state in etcd, for several replicas: the reads services make too
    (:class:`~asgimesh._etcd.EtcdPolicyReader`) and the writes only the control plane makes."""

    shared = True

    def __init__(self, endpoint: str | EtcdAccess, prefix: str = "/asgimesh") -> None:
        super().__init__(endpoint, prefix)
        self._latest = f"{self.prefix}/policy/latest"

    async def history(self, limit: int) -> list[PolicyRecord]:
        kvs, _ = await self.etcd.range(self._versions, prefix=True, limit=limit, descending=True)
        return [PolicyRecord.from_json(value) for _, value, _ in kvs]

    async def append(self, make: Callable[[int], PolicyRecord]) -> PolicyRecord:
        for attempt in range(100):
            kvs, _ = await self.etcd.range(self._latest)
            highest, mod_revision = (int(kvs[0][1]), kvs[0][2]) if kvs else (0, 0)
            record = make(highest + 1)
            won = await self.etcd.txn(
                [self.etcd.unchanged_since(self._latest, mod_revision)],
                [
                    (self._latest, str(record.version)),
                    (self._version_key(record.version), record.to_json()),
                ],
            )
            if won:
                return record
            # Another replica took that number: back off a little and take the next.
            await anyio.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # noqa: S311
        raise EtcdError("could not allocate a policy version after 100 attempts")

    async def refresh(self, record: PolicyRecord) -> None:
        """Rewrite the version's key. Watchers of the prefix see the write but take only
        versions newer than theirs, so no one mistakes it for a new version."""
        await self.etcd.put(self._version_key(record.version), record.to_json())

    async def put_token(self, digest: str, service: str) -> None:
        body = json.dumps({"service": service, "created": time.time()})
        await self.etcd.put(f"{self.prefix}/tokens/{digest}", body)

    async def token_service(self, digest: str) -> str | None:
        kvs, _ = await self.etcd.range(f"{self.prefix}/tokens/{digest}")
        return str(json.loads(kvs[0][1])["service"]) if kvs else None

    async def reports(self, newer_than: float) -> list[dict[str, Any]]:
        kvs, _ = await self.etcd.range(f"{self.prefix}/reports/", prefix=True)
        fresh = []
        for key, value, _ in kvs:
            report = json.loads(value)
            if float(report.get("received", 0)) > newer_than:
                fresh.append(report)
            else:
                await self.etcd.delete(key)
        return fresh

    async def bootstrap_secret(self, name: str, value: str) -> str:
        key = f"{self.prefix}/bootstrap/{name}"
        await self.etcd.txn([self.etcd.unchanged_since(key, 0)], [(key, value)])
        kvs, _ = await self.etcd.range(key)
        return kvs[0][1].decode()

    async def delete_bootstrap(self, name: str) -> None:
        await self.etcd.delete(f"{self.prefix}/bootstrap/{name}")
