"""asgimesh for Flask.

``Mesh(app)`` wraps the app's WSGI callable in :class:`asgimesh.MeshWSGIMiddleware` — below Flask,
so every request, 404s and errors included, crosses the mesh exactly as it would for any other
WSGI or ASGI service — and offers ``mesh.client``, one thread-safe ``httpx.Client`` per process
that makes outbound calls through :class:`asgimesh.MeshTransport`.
"""

from __future__ import annotations

import threading

import httpx
from flask import Flask

from asgimesh import MeshContext, MeshRuntime, MeshTransport, MeshWSGIMiddleware, current_context

__all__ = ["Mesh", "current_context"]


class Mesh:
    """The Flask extension. ``Mesh(app)``, or ``mesh = Mesh()`` then ``mesh.init_app(app)``."""

    def __init__(self, app: Flask | None = None, *, runtime: MeshRuntime | None = None) -> None:
        self._runtime = runtime
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if "asgimesh" in app.extensions:
            raise RuntimeError(f"asgimesh is already installed on the Flask app {app.name!r}")
        app.wsgi_app = MeshWSGIMiddleware(app.wsgi_app, runtime=self._runtime)  # type: ignore[method-assign]
        app.extensions["asgimesh"] = self

    @property
    def client(self) -> httpx.Client:
        """An ``httpx.Client`` whose calls go through the mesh; created once, shared by threads."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(transport=MeshTransport(runtime=self._runtime))
        return self._client

    @property
    def context(self) -> MeshContext | None:
        """The mesh context of the request being handled (trace, request id, deadline, caller)."""
        return current_context()

    def close(self) -> None:
        """Close the outbound client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None
