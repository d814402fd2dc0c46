"""Identities delivered as files by someone else, re-read when they change.

Two layouts (contract, section 8, first found wins):

* ``MESH_CERT`` + ``MESH_KEY`` + ``MESH_CA``: the chain, the key and the trust bundle in three
  PEM files, as an Istio agent, cert-manager's csi-driver or a SPIFFE helper writes them.
* ``SPIFFE_CREDENTIAL_FOLDER``: the SPIFFE filesystem delivery, the layout Kubernetes pod
  certificates write: ``credential-bundle.pem`` (also accepted under the name
  ``credential-bundle.private-key.pem``), one file whose first PEM block is the private key and
  whose other blocks are the chain, leaf first (one file, so a reader never pairs one rotation's
  key with another's certificate), and ``<trust domain>.spiffe-trust-bundle.pem``.

The files are looked at every :attr:`FileIdentitySource.interval` seconds (modification time,
size and inode); a changed delivery is checked whole before it replaces the identity in use, and
one that fails (half-written, expired, another trust domain) is logged and ignored until the
files change again: the last good identity stays.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .._log import get_logger
from ._store import IdentityStore
from ._svid import X509SVID, IdentityError, parse_svid

__all__ = ["FileIdentitySource", "files_reader", "folder_reader"]

log = get_logger("asgimesh.identity")

#: The largest identity file read: a chain of 32 certificates fits many times over.
MAX_FILE = 1 << 20
_CREDENTIAL_NAMES = ("credential-bundle.pem", "credential-bundle.private-key.pem")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL
)


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE + 1)
    except OSError as exc:
        raise IdentityError(f"{what}={path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE:
        raise IdentityError(f"{what}={path}: larger than {MAX_FILE} bytes")
    return data


def files_reader(
    cert: Path, key: Path, ca: Path, trust_domain: str
) -> tuple[Callable[[], X509SVID], tuple[Path, ...]]:
    """The reader of a ``MESH_CERT``/``MESH_KEY``/``MESH_CA`` identity and the files it reads."""

    def read() -> X509SVID:
        return parse_svid(
            _read(cert, "MESH_CERT"),
            _read(key, "MESH_KEY"),
            _read(ca, "MESH_CA"),
            trust_domain=trust_domain,
            source=f"MESH_CERT={cert}",
        )

    return read, (cert, key, ca)


def folder_reader(
    folder: Path, trust_domain: str
) -> tuple[Callable[[], X509SVID], tuple[Path, ...]]:
    """The reader of a ``SPIFFE_CREDENTIAL_FOLDER`` identity and the files it reads."""
    bundle = folder / f"{trust_domain}.spiffe-trust-bundle.pem"
    candidates = tuple(folder / name for name in _CREDENTIAL_NAMES)
    what = f"SPIFFE_CREDENTIAL_FOLDER={folder}"

    def read() -> X509SVID:
        credential = next((path for path in candidates if path.exists()), None)
        if credential is None:
            names = " or ".join(_CREDENTIAL_NAMES)
            raise IdentityError(f"{what}: expected a credential bundle named {names}")
        key, chain = _split_credential(_read(credential, what), f"{what}: {credential.name}")
        return parse_svid(
            chain, key, _read(bundle, what), trust_domain=trust_domain, source=f"{what}"
        )

    return read, (*candidates, bundle)


def _split_credential(data: bytes, what: str) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) of a credential bundle: the key block first, then certificates."""
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    if not blocks or not blocks[0][0].endswith(b"PRIVATE KEY"):
        raise IdentityError(f"{what}: expected a PRIVATE KEY block first, then the certificates")
    certificates = [block for kind, block in blocks[1:] if kind == b"CERTIFICATE"]
    if not certificates:
        raise IdentityError(f"{what}: expected CERTIFICATE blocks after the private key")
    return blocks[0][1], b"".join(certificates)


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


class FileIdentitySource:
    """Keeps the store's identity equal to what the files hold, checking every few seconds."""

    #: Seconds between looks at the files (an Istio agent rotates about every 12 h).
    interval = 2.0

    def __init__(
        self,
        read: Callable[[], X509SVID],
        paths: Sequence[Path],
        store: IdentityStore,
        name: str,
        *,
        interval: float | None = None,
    ) -> None:
        self.name = name
        self._read = read
        self._paths = tuple(paths)
        self._store = store
        if interval is not None:
            self.interval = interval
        self._seen = _stamp(self._paths)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """The first read, at start-up: a bad delivery stops start-up with its message."""
        self._seen = _stamp(self._paths)
        self._store.set(self._read())

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="asgimesh-identity-files", daemon=True
        )
        self._thread.start()

    def check(self) -> bool:
        """Re-read the files if they changed; ``True`` if a new identity is in use."""
        stamp = _stamp(self._paths)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            svid = self._read()
        except IdentityError as exc:
            log.warning("identity_refused", source=self.name, problem=str(exc))
            return False
        current = self._store.current
        if current is not None and current.chain_pem() == svid.chain_pem():
            return False
        self._store.set(svid)
        log.info(
            "identity_rotated", source=self.name, spiffe_id=svid.spiffe_id, serial=hex(svid.serial)
        )
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def close(self) -> None:
        self._stop.set()
