"""How to reach etcd, in the spirit of ``etcdctl``: the endpoint, TLS files and a user.

Both ends of the mesh name etcd with one URL (the control plane's ``--store``, a service's
``MESH_CONFIG``)::

    etcd://host:2379/prefix                          plain HTTP, no credentials
    etcds://host:2379/prefix?cacert=ca.pem           HTTPS, etcd's certificate checked
        &cert=client.pem&key=client-key.pem          a client certificate (--client-cert-auth)
    etcds://mesh@host:2379/prefix?password_file=F    user auth, the password read from file F

``cacert``/``cert``/``key`` are ``etcdctl``'s ``--cacert``/``--cert``/``--key``; the user name
is the URL's userinfo, the password comes from ``password_file`` (a mounted secret; the file is
read again whenever etcd asks for a new token, so a rotated password is picked up), or, less
advisably, from the userinfo (``mesh:secret@``), which :func:`~asgimesh._log.redact` hides.

Parsing is pure apart from checking that the named files can be read, so a typo is refused at
start with one line naming the parameter, rather than on the first reconnection. Nothing here
ever shows the password: :class:`EtcdAccess` leaves it out of its ``repr``.
"""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, unquote

from ._ssl import tls_context

__all__ = ["ETCD_PARAMETERS", "ETCD_SCHEMES", "EtcdAccess", "EtcdAccessError", "etcd_access"]

ETCD_SCHEMES = ("etcd", "etcds")
#: The URL parameters :func:`etcd_access` takes (and removes from what the caller parses).
ETCD_PARAMETERS = ("cacert", "cert", "key", "password_file")
#: The longest password file read: a password, not a file of anything.
MAX_PASSWORD = 4096


class EtcdAccessError(ValueError):
    """An etcd URL or a file it names cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """Where etcd is and how to prove who we are to it. ``repr`` never shows the password."""

    endpoint: str  # http://host:port or https://host:port
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.endpoint.startswith("https://")

    def ssl_context(self) -> ssl.SSLContext:
        """The client TLS context (built once per set of files and their modification times,
        since services make a client per connection cycle). Raises :class:`EtcdAccessError`
        naming the file that does not load."""
        if not self.tls:
            return tls_context()
        files = (self.cacert, self.cert, self.key)
        stamps = tuple(_mtime(path) for path in files)
        return _context(files, stamps)

    def read_password(self) -> str | None:
        """The password (from ``password_file`` when given, read now: it may have rotated)."""
        if self.password_file is None:
            return self.password
        try:
            with self.password_file.open("rb") as handle:
                raw = handle.read(MAX_PASSWORD + 1)
        except OSError as exc:
            raise EtcdAccessError(
                f"password_file={str(self.password_file)!r}: cannot read it ({exc.strerror})"
            ) from None
        if len(raw) > MAX_PASSWORD:
            raise EtcdAccessError(
                f"password_file={str(self.password_file)!r}: expected a password, "
                f"got more than {MAX_PASSWORD} bytes"
            )
        return raw.decode("utf-8", "replace").rstrip("\r\n")


def _mtime(path: Path | None) -> float:
    if path is None:
        return 0.0
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


@functools.lru_cache(maxsize=16)
def _context(
    files: tuple[Path | None, Path | None, Path | None], stamps: tuple[float, ...]
) -> ssl.SSLContext:
    del stamps  # part of the cache key only: a rewritten file makes a new context
    cacert, cert, key = files
    context = ssl.create_default_context()
    if cacert is not None:
        # cacert replaces the system's CAs, as etcdctl's --cacert does.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cafile=str(cacert))
        except ssl.SSLError:  # before OSError, of which it is a kind
            raise EtcdAccessError(f"cacert={str(cacert)!r}: expected PEM CA certificates") from None
        except OSError as exc:
            problem = f"cannot read it ({exc.strerror})"
            raise EtcdAccessError(f"cacert={str(cacert)!r}: {problem}") from None
    if cert is not None and key is not None:
        for name, path in (("cert", cert), ("key", key)):
            if not os.access(path, os.R_OK):
                raise EtcdAccessError(f"{name}={str(path)!r}: cannot read it")
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError):
            raise EtcdAccessError(
                f"cert={str(cert)!r}, key={str(key)!r}: expected a PEM certificate and its "
                "private key (unencrypted)"
            ) from None
    return context


def etcd_access(parts: SplitResult, params: dict[str, str], what: str) -> tuple[EtcdAccess, str]:
    """The :class:`EtcdAccess` and key prefix an ``etcd://``/``etcds://`` URL names.

    ``params`` are the URL's query parameters: the ones in :data:`ETCD_PARAMETERS` are taken
    out of it, the caller refuses what is left. ``what`` names the URL in errors
    (``MESH_CONFIG='…'``, credentials already redacted). The files named are checked now.
    """
    if parts.scheme not in ETCD_SCHEMES or not parts.hostname or not _port(parts):
        raise EtcdAccessError(
            f"{what}: expected etcd://host:port[/prefix] or etcds://host:port[/prefix]"
        )
    tls = parts.scheme == "etcds"
    taken = {name: params.pop(name) for name in ETCD_PARAMETERS if name in params}
    paths: dict[str, Path] = {}
    for name, value in taken.items():
        if not value:
            raise EtcdAccessError(f"{what}: {name}= is empty; expected a file path")
        paths[name] = Path(value).expanduser()
    if not tls:
        given = [name for name in ("cacert", "cert", "key") if name in paths]
        if given:
            raise EtcdAccessError(
                f"{what}: {given[0]}= needs TLS; expected etcds://host:port[/prefix]"
            )
    if ("cert" in paths) != ("key" in paths):
        raise EtcdAccessError(f"{what}: expected cert= and key= together (a client certificate)")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if "password_file" in paths:
        if user is None:
            raise EtcdAccessError(
                f"{what}: password_file= needs a user name, as in etcds://USER@host:port/prefix"
            )
        if password is not None:
            raise EtcdAccessError(
                f"{what}: expected the password in the URL or in password_file=, not both"
            )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    access = EtcdAccess(
        endpoint=f"{'https' if tls else 'http'}://{host}:{_port(parts)}",
        cacert=paths.get("cacert"),
        cert=paths.get("cert"),
        key=paths.get("key"),
        user=user,
        password_file=paths.get("password_file"),
        password=password,
    )
    try:
        access.ssl_context()
        if user is not None and access.read_password() is None:
            raise EtcdAccessError(
                "a user needs a password: expected password_file=FILE (or USER:PASSWORD@)"
            )
    except EtcdAccessError as exc:
        raise EtcdAccessError(f"{what}: {exc}") from None
    return access, parts.path.rstrip("/") or "/asgimesh"


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None
