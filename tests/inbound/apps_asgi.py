"""ASGI apps the inbound tests serve, in-process and under a real uvicorn (``MeshMiddleware`` at
import, from the ``MESH_*`` the test gives the process)."""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgimesh import MeshMiddleware, current_context

CHUNK = b"x" * 65536


async def whoami(request: Request) -> JSONResponse:
    context = current_context()
    assert context is not None
    return JSONResponse(
        {
            "request_id": context.request_id,
            "trace_id": context.trace_id,
            "span_id": context.span_id,
            "parent_span_id": context.parent_span_id,
            "trace_flags": context.trace_flags,
            "tracestate": context.tracestate,
            "remaining": context.remaining(),
        }
    )


async def stream(request: Request) -> StreamingResponse:
    """``?mb=N`` megabytes in 64 KiB chunks, made as they are sent."""
    chunks = int(request.query_params.get("mb", "1")) * 16

    async def body():  # type: ignore[no-untyped-def]
        for _ in range(chunks):
            yield CHUNK

    return StreamingResponse(body(), media_type="application/octet-stream")


async def upload(request: Request) -> PlainTextResponse:
    """Counts the request body as it streams in, keeping none of it."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


async def boom(request: Request) -> Response:
    raise RuntimeError("boom from the app")


async def status(request: Request) -> Response:
    return Response(status_code=int(request.path_params["code"]))


async def slow(request: Request) -> PlainTextResponse:
    """Answers after ``?s=`` seconds (a request that stays in flight)."""
    await anyio.sleep(float(request.query_params.get("s", "1")))
    return PlainTextResponse("slow")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"echo: {text}")


routes = [
    Route("/whoami", whoami),
    Route("/stream", stream),
    Route("/upload", upload, methods=["POST"]),
    Route("/boom", boom),
    Route("/slow", slow),
    Route("/status/{code:int}", status, methods=["GET", "POST", "BREW"]),
    WebSocketRoute("/ws", echo),
]

bare = Starlette(routes=routes)
app = MeshMiddleware(bare)


class _Capacity:
    """A service that works on ``CAPACITY`` requests at once, 20 ms each: the rest wait."""

    def __init__(self) -> None:
        import os

        self.capacity = int(os.environ.get("CAPACITY", "4"))
        self._slots: anyio.Semaphore | None = None

    async def work(self, request: Request) -> PlainTextResponse:
        if self._slots is None:
            self._slots = anyio.Semaphore(self.capacity)
        async with self._slots:
            await anyio.sleep(0.02)
        return PlainTextResponse("done")


_capacity = _Capacity()
capacity_app = MeshMiddleware(Starlette(routes=[Route("/work", _capacity.work)]))
