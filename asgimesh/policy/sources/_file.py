"""Hot reload of a policy file: a daemon thread polls the file and applies each change.

Polling ``stat`` twice a second is portable (no inotify on macOS or in some containers), costs
nothing measurable, and works the same under asyncio, trio and WSGI servers, which share no
event loop. A refused edit is logged and counted by the store's failure listeners; the last
good policy stays in force, and the next edit is tried afresh.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..._errors import PolicyError
from ..._log import get_logger
from .._load import read_policy_file
from .._state import PolicyStore

__all__ = ["FilePolicySource"]

log = get_logger("asgimesh.policy")


class FilePolicySource:
    """Loads ``path`` into ``store`` now, then again whenever the file changes."""

    def __init__(self, path: str | Path, store: PolicyStore, *, interval: float = 0.5) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self._store = store
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int, int] | None = None

    def load(self) -> None:
        """Load the file once; raise :class:`PolicyError` if it is missing or invalid."""
        self._seen = self._stamp()
        self._store.apply(read_policy_file(self.path), source=self.name)

    def start(self) -> None:
        """Start the watcher, unless it runs: again in a forked child, whose copy of the
        parent's thread is not alive."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="asgimesh-policy-file", daemon=True
            )
            self._thread.start()

    def report_soon(self) -> None:
        """A file has no one to report to."""

    def report_final(self) -> None:
        """A file has no one to report to."""

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            stamp = self._stamp()
            if stamp is None or stamp == self._seen:
                continue
            self._seen = stamp
            try:
                snapshot = self._store.apply(read_policy_file(self.path), source=self.name)
            except PolicyError:
                pass  # the store's failure listeners logged and counted it, once
            else:
                log.info("policy_reloaded", source=self.name, version=snapshot.version)
