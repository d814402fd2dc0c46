"""Handing the client certificate the server verified to the middleware, for servers that do
not do it themselves.

The standard slot is the ASGI ``tls`` extension (``scope["extensions"]["tls"]
["client_cert_chain"]``): a server that fills it needs nothing from here. uvicorn does not yet,
so ``asgimesh serve`` runs it with :func:`uvicorn_protocol`, whose connections wrap the app once
per connection, after the handshake, in :class:`TLSScope`. gunicorn puts the connection's socket
in the WSGI environ; :class:`WSGIPeerChain` reads the client certificate from it into
``environ["asgimesh.client_cert_chain"]``.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._wsgi import PEER_CHAIN

__all__ = ["TLSScope", "WSGIPeerChain", "tls_extension", "uvicorn_protocol"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[str]:
    """The client's certificate as PEM (Python's ``ssl`` gives the leaf, not the chain)."""
    der = ssl_object.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI ``tls`` extension's dict for one connection."""
    return {
        "server_cert": None,
        "client_cert_chain": peer_chain(ssl_object),
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class TLSScope:
    """One connection's app: adds the connection's ``tls`` extension to each scope."""

    __slots__ = ("app", "tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    def __call__(self, scope: Scope, receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] != "lifespan":
            extensions = scope.get("extensions")
            if extensions is None:
                scope["extensions"] = {"tls": self.tls}
            else:
                extensions["tls"] = self.tls
        return self.app(scope, receive, send)


def uvicorn_protocol(base: type) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` whose connections hand their TLS
    details to the app. asyncio calls ``connection_made`` once the handshake is done."""

    class TLSHandoffProtocol(base):  # type: ignore[misc]
        app: ASGIApp

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.app = TLSScope(self.app, tls_extension(ssl_object))

    TLSHandoffProtocol.__name__ = f"TLSHandoff{base.__name__}"
    return TLSHandoffProtocol


class WSGIPeerChain:
    """A WSGI app that puts gunicorn's verified client certificate into the environ."""

    __slots__ = ("app",)

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if isinstance(sock, ssl.SSLSocket):
            environ[PEER_CHAIN] = peer_chain(sock)
        return self.app(environ, start_response)
