"""A tiny HTTPS server on a loopback port, in a thread, for the TLS tests: it records every
request's bytes and the client certificate's URI SANs, and answers 200 with its own serial."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from asgimesh.identity import X509SVID, IdentityStore, parse_svid
from asgimesh.identity._tls import peer_ids
from asgimesh.testing import ThrowawayCA


def svid_for(ca: ThrowawayCA, spiffe_id: str) -> X509SVID:
    """A certificate of ``ca`` for ``spiffe_id``, as the identity sources parse one."""
    issued = ca.issue(spiffe_id)
    return parse_svid(
        issued.cert_pem,
        issued.key_pem,
        issued.bundle_pem,
        trust_domain="mesh.local",
        source="test",
    )


def store_for(ca: ThrowawayCA, spiffe_id: str) -> IdentityStore:
    """An identity store holding a certificate of ``ca`` for ``spiffe_id``."""
    store = IdentityStore()
    store.set(svid_for(ca, spiffe_id))
    return store


@dataclass
class TLSServer:
    port: int
    #: Bytes each connection sent after its handshake (an empty entry: handshake only).
    received: list[bytes] = field(default_factory=list)
    #: URI SANs of each connection's client certificate (empty: none presented).
    clients: list[list[str]] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextlib.contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[TLSServer]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    server = TLSServer(listener.getsockname()[1])
    stop = threading.Event()

    def handle(raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            server.handshake_errors.append(str(exc))
            raw.close()
            return
        with conn:
            server.clients.append(peer_ids(conn.getpeercert()))
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except (ssl.SSLError, OSError):
                pass
            server.received.append(data)
            if data:
                body = b"ok"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n" + body
                )

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()
