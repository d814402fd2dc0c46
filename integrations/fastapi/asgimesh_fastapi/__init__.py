"""asgimesh for FastAPI.

``install(app)`` adds :class:`asgimesh.MeshMiddleware` as the outermost middleware, so the mesh
sees every request before FastAPI's own handling. Two dependencies give endpoints what the mesh
knows: ``MeshContextDep`` (trace, request id, deadline, verified caller) and ``MeshClient``, one
``httpx.AsyncClient`` per app whose calls go through :class:`asgimesh.AsyncMeshTransport` and that
is closed when the app shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request

from asgimesh import (
    AsyncMeshTransport,
    MeshContext,
    MeshMiddleware,
    MeshRuntime,
    current_context,
    get_runtime,
)

__all__ = ["MeshClient", "MeshContextDep", "install", "mesh_client", "mesh_context"]

_STATE_CLIENT = "asgimesh_client"
_STATE_RUNTIME = "asgimesh_runtime"
_STATE_INSTALLED = "asgimesh_installed"


def install(app: FastAPI, *, runtime: MeshRuntime | None = None) -> FastAPI:
    """Put the mesh in front of ``app``; returns ``app`` for chaining.

    The runtime is resolved here, not when Starlette first builds its middleware stack: that
    happens inside the server's lifespan start-up, where an error (a bad ``MESH_*`` setting)
    makes uvicorn decide lifespan is unsupported and serve 500s. Here it stops the import
    with its one-line message, as ``MeshMiddleware(app)`` does.
    """
    if getattr(app.state, _STATE_INSTALLED, False):
        raise RuntimeError("asgimesh is already installed on this FastAPI app")
    if runtime is None:
        runtime = get_runtime()
    app.add_middleware(MeshMiddleware, runtime=runtime)
    setattr(app.state, _STATE_INSTALLED, True)
    setattr(app.state, _STATE_RUNTIME, runtime)
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with original(application) as state:
            try:
                yield state
            finally:
                client: httpx.AsyncClient | None = getattr(app.state, _STATE_CLIENT, None)
                if client is not None:
                    setattr(app.state, _STATE_CLIENT, None)
                    await client.aclose()

    app.router.lifespan_context = lifespan
    return app


async def mesh_context() -> MeshContext | None:
    """Dependency: the mesh context of the request being handled.

    A coroutine, so FastAPI runs it on the request's own task: a plain function would be sent
    to a worker thread for each request, a thread hop for one context-variable read, and the
    idle worker would outlive the request (on Lambda, into the frozen sandbox).
    """
    return current_context()


async def mesh_client(request: Request) -> httpx.AsyncClient:
    """Dependency: the app's mesh ``httpx.AsyncClient`` (created on first use)."""
    state = request.app.state
    client: httpx.AsyncClient | None = getattr(state, _STATE_CLIENT, None)
    if client is None:
        runtime: MeshRuntime | None = getattr(state, _STATE_RUNTIME, None)
        client = httpx.AsyncClient(transport=AsyncMeshTransport(runtime=runtime))
        setattr(state, _STATE_CLIENT, client)
    return client


MeshContextDep = Annotated[MeshContext | None, Depends(mesh_context)]
MeshClient = Annotated[httpx.AsyncClient, Depends(mesh_client)]
