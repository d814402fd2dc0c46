"""TLS with SPIFFE identities: client contexts that check the server's ID before a byte of the
request is sent, and server contexts that ask for client certificates and follow rotations.

Python's ``ssl`` verifies a chain against a trust bundle, but checks host names, not URI SANs.
A mesh service is known by its SPIFFE ID, not by a host name, so the client contexts made here
turn host-name checking off and check the ID instead, at the end of the handshake, in the
context's own ``SSLObject`` (asyncio, anyio and trio wrap a memory BIO with it) and ``SSLSocket``
(sync httpx) classes. A server presenting another ID fails the handshake with an
``ssl.SSLCertVerificationError`` naming both IDs, which httpx raises as ``httpx.ConnectError``;
the request was not sent.

Certificates rotate without a restart. A client context reloads its certificate in place (new
handshakes present the new one); a server context hands each new handshake to the newest context
built from the store (through the SNI callback, which OpenSSL calls for every ClientHello, with or
without a server name), so a new certificate *and* a new trust bundle apply at once.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from ._spiffe import is_spiffe_id
from ._store import IdentityStore
from ._svid import X509SVID

__all__ = [
    "MISMATCH",
    "MeshClientContext",
    "identity_mismatch",
    "peer_ids",
    "server_context",
]

#: How the message of a refused server identity starts.
MISMATCH = "mesh identity mismatch: "


def peer_ids(certificate: dict[str, Any] | None) -> list[str]:
    """The URI SANs of a peer certificate as ``getpeercert()`` returns it."""
    if not certificate:
        return []
    return [value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI"]


def _check(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    context = ssl_object.context
    expected = getattr(context, "expected_id", None)
    if expected is None:
        return
    ids = peer_ids(ssl_object.getpeercert())
    presented = ids[0] if len(ids) == 1 and is_spiffe_id(ids[0]) else None
    if presented != expected:
        shown = presented or (f"{len(ids)} URI SANs" if ids else "no SPIFFE ID")
        raise ssl.SSLCertVerificationError(
            f"{MISMATCH}expected {expected}, the server presented {shown}"
        )


def identity_mismatch(error: BaseException) -> str | None:
    """The mismatch message behind ``error`` (an httpx error whose cause chain holds the check's
    ``SSLCertVerificationError``), or ``None``. trio's ``SSLStream`` re-raises a failed handshake
    as a bare ``BrokenResourceError``, so httpx's message is empty there: the transport puts this
    one back."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 16:
        if isinstance(current, ssl.SSLCertVerificationError):
            text = str(current.args[0]) if current.args else ""
            if text.startswith(MISMATCH):
                return text
        current = current.__cause__ or current.__context__
        seen += 1
    return None


class _VerifyingObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check(self)


class _VerifyingSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _check(self)


class MeshClientContext(ssl.SSLContext):
    """A client context that presents this service's certificate (if given a store) and accepts
    only a server chained to the trust bundle whose one URI SAN is ``expected_id``."""

    expected_id: str
    sslobject_class = _VerifyingObject
    sslsocket_class = _VerifyingSocket

    def __new__(
        cls, expected_id: str, store: IdentityStore | None = None, bundle_pem: bytes | None = None
    ) -> MeshClientContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(
        self, expected_id: str, store: IdentityStore | None = None, bundle_pem: bytes | None = None
    ) -> None:
        self.expected_id = expected_id
        self.check_hostname = False  # SPIFFE IDs are checked, host names are not
        self.verify_mode = ssl.CERT_REQUIRED
        self.minimum_version = ssl.TLSVersion.TLSv1_2
        self._loaded: X509SVID | None = None
        self._lock = threading.Lock()
        self._store = store
        if bundle_pem is not None:
            self.load_verify_locations(cadata=bundle_pem.decode("ascii"))
        if store is not None:
            store.subscribe(self._reload)

    def _reload(self, svid: X509SVID) -> None:
        # The store writes an identity's files before it tells its subscribers.
        files = self._store.files if self._store is not None else None
        if files is None:  # pragma: no cover - a store notifies only with files in place
            return
        with self._lock:
            if self._loaded is svid:
                return
            self.load_cert_chain(files.credential)
            self.load_verify_locations(files.bundle)
            self._loaded = svid


def server_context(store: IdentityStore) -> ssl.SSLContext:
    """A server context for ``asgimesh serve``: this service's certificate, client certificates
    asked for but optional (a caller without one reaches the mesh's own 401, not a broken
    handshake), verified against the trust bundle; rotations reach new handshakes."""
    current: list[ssl.SSLContext] = []
    lock = threading.Lock()

    def build(svid: X509SVID) -> None:
        files = store.files
        assert files is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_cert_chain(files.credential)
        context.load_verify_locations(files.bundle)
        with lock:
            current[:] = [context]

    def newest(ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = current[0]

    store.subscribe(build)
    if not current:
        raise RuntimeError("server_context() needs an identity in the store")
    outer = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    outer.minimum_version = ssl.TLSVersion.TLSv1_2
    outer.verify_mode = ssl.CERT_OPTIONAL
    files = store.files
    assert files is not None
    outer.load_cert_chain(files.credential)
    outer.load_verify_locations(files.bundle)
    outer.sni_callback = newest
    return outer
