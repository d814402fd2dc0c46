"""Hello, mesh: a Starlette app behind ``MeshMiddleware``.

    uvicorn examples.hello_asgi:app --port 8000
    curl -i localhost:8000/            # x-request-id comes back
    curl localhost:8000/_mesh/health   # {"status": "ok", ...}
    curl localhost:8000/_mesh/metrics  # mesh_inbound_requests_total{...}

``bare`` is the same app without the mesh: the benchmark runs both side by side.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgimesh import MeshMiddleware


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello, mesh!\n")


bare = Starlette(routes=[Route("/", hello)])
app = MeshMiddleware(bare)
