"""The two Starlette services of ``bench_chain`` and ``bench_memory``: gateway → payments.

``payments`` answers ``GET /pay/...`` with a small JSON body saying what it saw: the path, the
``traceparent`` (set by the mesh's outbound, or by nobody) and the ``x-chain-in`` /
``x-chain-out`` headers the sidecar variants' proxies add, so the benchmark can tell from one
answer which hops a request really crossed. ``gateway`` forwards any path to payments through
one shared ``httpx.AsyncClient`` (keep-alive) and answers payments' body as it came, with the
``x-chain-front`` header its own inbound sidecar added, if any.

Both are factories (``uvicorn --factory bench._chain_app:gateway``) so that each server builds
its app from its own environment, and asgimesh is imported only where the mesh is on (the
memory benchmark compares the processes): ``CHAIN_MESH=1`` wraps the app in
``MeshMiddleware`` (and the gateway's client uses ``AsyncMeshTransport``); ``CHAIN_PAYMENTS``
is where the gateway sends its calls (``http://payments`` for the mesh, resolved from
``MESH_UPSTREAMS``; the app itself, or its sidecar's outbound listener, otherwise).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _mesh() -> bool:
    return os.environ.get("CHAIN_MESH") == "1"


def _meshed(app: Starlette) -> ASGIApp:
    if not _mesh():
        return app
    from asgimesh import MeshMiddleware

    return MeshMiddleware(app)


async def pay(request: Request) -> Response:
    headers = request.headers
    seen = {
        "paid": True,
        "path": request.url.path,
        "traceparent": headers.get("traceparent"),
        "in": headers.get("x-chain-in"),
        "out": headers.get("x-chain-out"),
    }
    return Response(json.dumps(seen), media_type="application/json")


def payments() -> ASGIApp:
    return _meshed(Starlette(routes=[Route("/pay/{rest:path}", pay)]))


def gateway() -> ASGIApp:
    target = os.environ["CHAIN_PAYMENTS"].rstrip("/")
    if _mesh():
        from asgimesh import AsyncMeshTransport

        client = httpx.AsyncClient(transport=AsyncMeshTransport())
    else:
        client = httpx.AsyncClient()

    async def checkout(request: Request) -> Response:
        answer = await client.get(f"{target}/pay/{request.path_params['rest']}")
        front = request.headers.get("x-chain-front", "-")
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type="application/json",
            headers={"x-chain-front": front},
        )

    return _meshed(Starlette(routes=[Route("/{rest:path}", checkout)]))
