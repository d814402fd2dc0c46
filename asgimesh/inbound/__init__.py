"""Inbound: the ASGI and WSGI middleware that handle every call a service receives.

Both are thin shells around one sans-I/O decision (:mod:`asgimesh.inbound._decide`), one
exchange per request (:mod:`asgimesh.inbound._exchange`) and one set of admin paths
(:mod:`asgimesh.inbound._admin`).
"""

from __future__ import annotations

from ._asgi import MeshMiddleware
from ._tls_handoff import WSGIPeerChain, uvicorn_protocol
from ._wsgi import MeshWSGIMiddleware

__all__ = ["MeshMiddleware", "MeshWSGIMiddleware", "WSGIPeerChain", "uvicorn_protocol"]
