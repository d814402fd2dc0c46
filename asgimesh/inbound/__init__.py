"""Inbound: the ASGI and WSGI middleware that handle every call a service receives.

Both are thin shells around one sans-I/O core (:mod:`asgimesh.inbound._core`) and one set of
admin paths (:mod:`asgimesh.inbound._admin`).
"""

from __future__ import annotations

from ._asgi import MeshMiddleware
from ._wsgi import MeshWSGIMiddleware

__all__ = ["MeshMiddleware", "MeshWSGIMiddleware"]
