"""Apps whose endpoints fail while holding the request's credentials in their locals: what a
pretty traceback (rich, better-exceptions) would print, and what the mesh must never log.

``HOST_LOGGING=console`` makes the host configure structlog with its console renderer (rich
tracebacks with locals where rich is installed); unset, structlog stays unconfigured.
"""

# ruff: noqa: F841 - the unused locals are the point: a pretty traceback would print them

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgimesh import MeshMiddleware, MeshWSGIMiddleware

if os.environ.get("HOST_LOGGING") == "console":
    structlog.configure(processors=[structlog.dev.ConsoleRenderer()])


async def charge(request: Request) -> Response:
    authorization = request.headers.get("authorization")
    cookie = request.headers.get("cookie")
    identity = request.headers.get("mesh-identity")
    scope = request.scope
    raise RuntimeError(f"charge of order {request.path_params['order']} failed")


app = MeshMiddleware(Starlette(routes=[Route("/charge/{order}", charge)]))


def _charge_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    authorization = environ.get("HTTP_AUTHORIZATION")
    cookie = environ.get("HTTP_COOKIE")
    identity = environ.get("HTTP_MESH_IDENTITY")
    raise RuntimeError("charge failed")


wsgi_app = MeshWSGIMiddleware(_charge_wsgi)
