"""The shop's frontend: FastAPI, with the mesh installed by ``asgimesh_fastapi``.

``GET /`` places an order through the ``orders`` service. A mesh failure (the deadline passed,
no healthy endpoint, the retry budget spent) is one log line and a 502 that says which, never a
traceback: the caller of a mesh service decides what a failure means to its own users.

    MESH_SERVICE=frontend MESH_UPSTREAMS=orders=http://127.0.0.1:8002 \\
        uvicorn frontend:app --port 8001
"""

from __future__ import annotations

import logging

import httpx
from asgimesh_fastapi import MeshClient, MeshContextDep, install
from fastapi import FastAPI
from fastapi.responses import JSONResponse

log = logging.getLogger("shop.frontend")
app = install(FastAPI(title="shop frontend"))


@app.get("/")
async def home(client: MeshClient, ctx: MeshContextDep) -> JSONResponse:
    trace_id = ctx.trace_id if ctx else None
    try:
        answer = await client.post("http://orders/orders", json={"item": "tea", "quantity": 1})
    except httpx.HTTPError as exc:
        log.warning("orders unavailable: %s: %s (trace %s)", type(exc).__name__, exc, trace_id)
        return JSONResponse(
            {"error": "orders unavailable", "detail": f"{type(exc).__name__}: {exc}"},
            status_code=502,
        )
    body = answer.json() if answer.headers.get("content-type") == "application/json" else {}
    return JSONResponse(
        {"frontend": "ok", "orders": body or answer.text, "trace_id": trace_id},
        status_code=answer.status_code,
    )
