"""The newest policy version in memory, and the long polls waiting for a newer one.

Waiters are coroutines parked on one ``anyio.Event``, replaced at each publish: a thousand long
polls cost a thousand small objects, not a thousand threads, and a publish wakes them all at
once. The answer body is rendered once per version and shared by every waiter it wakes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio

from .stores import PolicyRecord

__all__ = ["PollSlots", "VersionBoard"]


class VersionBoard:
    """Create inside the event loop (``anyio.Event`` needs one)."""

    def __init__(self) -> None:
        self.record: PolicyRecord | None = None
        self.body: bytes = b""
        self._changed = anyio.Event()
        self._closed = False

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

    def close(self) -> None:
        """The server is stopping: every parked poll ends now with nothing new (and any that
        comes later at once), so the server's graceful shutdown is not spent waiting on them."""
        self._closed = True
        self._changed.set()

    def refresh(self, record: PolicyRecord) -> bool:
        """Serve ``record``, a re-signed copy of the current version, from now on. Wakes no
        one: it is not a new version, and no watcher needs it. Whether it was the current one
        (a newer version may have landed meanwhile; then the copy is dropped)."""
        if self.record is None or record.version != self.record.version:
            return False
        self.body = json.dumps(record.envelope(), separators=(",", ":")).encode()
        self.record = record
        return True

    async def wait_newer(self, after: int, wait: float) -> PolicyRecord | None:
        """The current record once its version exceeds ``after``; ``None`` after ``wait`` s,
        or as soon as the board is closed."""
        with anyio.move_on_after(wait):
            while True:
                record = self.record
                if record is not None and record.version > after:
                    return record
                if self._closed:
                    return None
                await self._changed.wait()
        return None


class PollSlots:
    """Bounds how many long polls are parked at once, overall and per client address.

    A parked poll holds a socket (a file descriptor) for up to ``max_wait`` seconds and costs
    the caller nothing, so without a bound anyone who can reach the port can hold them all
    (issue 12: 20,000 polls took the control plane to its fd limit). The per-client share keeps
    one address from taking the whole bound: others still get a slot while it is refused.
    Plain counters: they are only touched from the event loop, between awaits.
    """

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.parked = 0
        self._by_client: dict[str, int] = {}

    def hold(self, client: str) -> Callable[[], None] | None:
        """Take a slot for ``client``: the function that gives it back (calling it twice gives
        it back once), or ``None`` when the total or the client's share is used up."""
        held = self._by_client.get(client, 0)
        if self.parked >= self.total or held >= self.per_client:
            return None
        self.parked += 1
        self._by_client[client] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.parked -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

        return release
