"""An upstream that answers with the mesh headers it received, to check what callers propagate."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MESH_HEADERS = ("traceparent", "tracestate", "x-request-id", "mesh-deadline-ms", "mesh-attempt")


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({name: request.headers.get(name) for name in MESH_HEADERS})


app = Starlette(routes=[Route("/echo", echo)])
