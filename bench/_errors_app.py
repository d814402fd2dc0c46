"""An endpoint that always fails, for ``bench_app_errors.py``: bare, and behind the mesh.

``HOST_LOGGING=console`` makes the host configure structlog's console renderer (rich tracebacks
with locals where rich is installed): the mesh must stay cheap under a host's pretty logging too.
"""

from __future__ import annotations

import os

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgimesh import MeshMiddleware

if os.environ.get("HOST_LOGGING") == "console":
    structlog.configure(processors=[structlog.dev.ConsoleRenderer()])


async def fail(request: Request) -> Response:
    authorization = request.headers.get("authorization")  # a local a pretty traceback would show
    raise RuntimeError(f"payment refused for {authorization is not None}")


bare = Starlette(routes=[Route("/fail", fail)])
app = MeshMiddleware(bare)
