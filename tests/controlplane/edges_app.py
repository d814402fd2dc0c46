"""A service for the edge tests: ``GET /ok`` answers 200, ``GET /call?to=NAME`` calls mesh
service ``NAME`` through the mesh's outbound transport and says what came back."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from asgimesh import AsyncMeshTransport, MeshMiddleware

client = httpx.AsyncClient(transport=AsyncMeshTransport())


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def call(request: Request) -> JSONResponse:
    try:
        answer = await client.get(f"http://{request.query_params['to']}/ok")
    except httpx.HTTPError as exc:
        return JSONResponse({"error": type(exc).__name__})
    return JSONResponse({"status": answer.status_code})


app = MeshMiddleware(Starlette(routes=[Route("/ok", ok), Route("/call", call)]))
