"""The two services of ``bench_identity``: ``GET /whoami`` says who called (the verified caller
or null), ``GET /call`` asks payments' ``/whoami`` through the mesh and answers what it said.

``app`` is for ``asgimesh serve`` (which adds the mesh); ``meshed_app`` makes one carrying it, for a
plain uvicorn (HTTP, where tokens carry identity)."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgimesh import AsyncMeshTransport, MeshMiddleware, current_context

_client: httpx.AsyncClient | None = None


async def whoami(request: Request) -> JSONResponse:
    context = current_context()
    return JSONResponse({"caller": context.caller if context is not None else None})


async def call(request: Request) -> JSONResponse:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(transport=AsyncMeshTransport())
    answer = await _client.get("http://payments/whoami")
    return JSONResponse({"status": answer.status_code, "payments": answer.json()})


app = Starlette(routes=[Route("/whoami", whoami), Route("/call", call)])


def meshed_app() -> MeshMiddleware:
    """``uvicorn --factory bench._identity_app:meshed_app``: the runtime is built in the
    server process, from its environment."""
    return MeshMiddleware(app)
