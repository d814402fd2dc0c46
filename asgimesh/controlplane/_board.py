"""The newest policy version in memory, and the long polls waiting for a newer one.

Waiters are coroutines parked on one ``anyio.Event``, replaced at each publish: a thousand long
polls cost a thousand small objects, not a thousand threads, and a publish wakes them all at
once. The answer body is rendered once per version and shared by every waiter it wakes.
"""

from __future__ import annotations

import json

import anyio

from .stores import PolicyRecord

__all__ = ["VersionBoard"]


class VersionBoard:
    """Create inside the event loop (``anyio.Event`` needs one)."""

    def __init__(self) -> None:
        self.record: PolicyRecord | None = None
        self.body: bytes = b""
        self._changed = anyio.Event()

    @property
    def version(self) -> int:
        return self.record.version if self.record is not None else 0

    def publish(self, record: PolicyRecord) -> bool:
        """Make ``record`` current if it is newer; wake every waiter. Whether it was newer."""
        if record.version <= self.version:
            return False
        self.body = json.dumps(record.envelope(), separators=(",", ":")).encode()
        self.record = record
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
        return True

    async def wait_newer(self, after: int, wait: float) -> PolicyRecord | None:
        """The current record once its version exceeds ``after``; ``None`` after ``wait`` s."""
        with anyio.move_on_after(wait):
            while True:
                record = self.record
                if record is not None and record.version > after:
                    return record
                await self._changed.wait()
        return None
