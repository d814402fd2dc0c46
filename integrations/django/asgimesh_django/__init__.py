"""asgimesh for Django.

Use these in ``wsgi.py`` / ``asgi.py`` in place of Django's own functions of the same names. The
mesh wraps the whole Django application rather than sitting in ``MIDDLEWARE``, so that it sees
every request (static files and Django's own error pages included), answers its admin paths
before Django routes them, and behaves on the wire exactly as for any other framework.

``client()`` gives one process-wide ``httpx.Client`` whose calls go through the mesh.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from asgimesh import MeshMiddleware, MeshRuntime, MeshTransport, MeshWSGIMiddleware, current_context

__all__ = ["client", "current_context", "get_asgi_application", "get_wsgi_application"]

_client: httpx.Client | None = None
_lock = threading.Lock()


def get_wsgi_application(*, runtime: MeshRuntime | None = None) -> MeshWSGIMiddleware:
    """Django's WSGI application inside :class:`asgimesh.MeshWSGIMiddleware`."""
    from django.core.wsgi import get_wsgi_application as django_wsgi_application

    return MeshWSGIMiddleware(django_wsgi_application(), runtime=runtime)


def get_asgi_application(*, runtime: MeshRuntime | None = None) -> MeshMiddleware:
    """Django's ASGI application inside :class:`asgimesh.MeshMiddleware`."""
    from django.core.asgi import get_asgi_application as django_asgi_application

    app: Any = django_asgi_application()
    return MeshMiddleware(app, runtime=runtime)


def client(*, runtime: MeshRuntime | None = None) -> httpx.Client:
    """The process's mesh ``httpx.Client`` for views (created on first use, thread-safe)."""
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = httpx.Client(transport=MeshTransport(runtime=runtime))
    return _client
