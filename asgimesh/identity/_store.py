"""The process's current identity, and the private files that TLS loads it from.

Python's ``ssl`` loads a certificate chain and key only from files, so each identity is written
to a directory of the process's own (``mkdtemp``: mode 0700) as one file holding key and chain
(mode 0600, replaced atomically, so that a handshake never pairs one identity's key with another's
chain) and one holding the trust bundle. The directory goes when the process ends.

Whoever needs to know when the identity changes (server contexts to reload, the expiry gauge,
outbound pools to rebuild) subscribes; a call made before the first identity arrived waits for
it with :meth:`IdentityStore.wait` (threads) or :meth:`IdentityStore.wait_async` (asyncio and
trio), bounded by the caller's deadline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from .._log import describe_error, get_logger
from ._svid import X509SVID

__all__ = ["IdentityFiles", "IdentityStore"]

log = get_logger("asgimesh.identity")


@dataclass(frozen=True)
class IdentityFiles:
    """Where the current identity is on disk, for ``ssl.SSLContext.load_cert_chain`` and
    ``load_verify_locations``."""

    #: The private key, then the chain (leaf first): ``load_cert_chain(credential)``.
    credential: Path
    bundle: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by this user only, replacing it atomically."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)


class IdentityStore:
    """The current :class:`X509SVID` of this process (``None`` until one arrived)."""

    def __init__(self) -> None:
        self._current: X509SVID | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[X509SVID], None]] = []
        self._directory: Path | None = None
        self._files: IdentityFiles | None = None

    @property
    def current(self) -> X509SVID | None:
        return self._current

    @property
    def files(self) -> IdentityFiles | None:
        """The current identity's files (``None`` before the first identity)."""
        return self._files

    def subscribe(self, callback: Callable[[X509SVID], None]) -> None:
        """Call ``callback(svid)`` after each new identity (and now, if there is one)."""
        with self._lock:
            self._subscribers.append(callback)
            current = self._current
        if current is not None:
            callback(current)

    def set(self, svid: X509SVID) -> None:
        """Make ``svid`` the identity in use: files first, then readers, then subscribers."""
        with self._lock:
            files = self._write(svid)
            self._files = files
            self._current = svid
            subscribers = list(self._subscribers)
        self._ready.set()
        for callback in subscribers:
            try:
                callback(svid)
            except Exception as exc:  # one broken subscriber must not stop the others
                kind, message = describe_error(exc)
                log.error("identity_subscriber_failed", error_type=kind, message=message)

    def _write(self, svid: X509SVID) -> IdentityFiles:
        if self._directory is None:
            directory = Path(tempfile.mkdtemp(prefix="asgimesh-identity-"))  # mode 0700
            weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
            self._directory = directory
        credential = self._directory / "credential.pem"
        bundle = self._directory / "bundle.pem"
        _write_private(credential, svid.key_pem() + svid.chain_pem())
        _write_private(bundle, svid.bundle_pem())
        return IdentityFiles(credential, bundle)

    def wait(self, timeout: float | None) -> X509SVID | None:
        """The identity, waiting up to ``timeout`` seconds for the first one (threads)."""
        if self._current is None:
            self._ready.wait(timeout)
        return self._current

    async def wait_async(self, timeout: float | None) -> X509SVID | None:  # noqa: ASYNC109
        """The identity, waiting up to ``timeout`` seconds for the first one, without blocking
        the event loop (asyncio and trio alike). Only calls made before the first identity
        arrived ever wait here, so a short poll is cheaper than a cross-thread wake-up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._current is None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await anyio.sleep(0.02)
        return self._current

    def close(self) -> None:
        """Remove the private files (also done when the store is collected or the process ends)."""
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
