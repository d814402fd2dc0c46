"""Replicas for the rolling-restart test: ``GET /work`` takes a little time and says which
replica answered (``REPLICA``); the same as a WSGI app for gunicorn."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgimesh import MeshWSGIMiddleware

REPLICA = os.environ.get("REPLICA", "?")


async def work(request: Request) -> PlainTextResponse:
    await anyio.sleep(0.02)
    return PlainTextResponse(REPLICA)


app = Starlette(routes=[Route("/work", work)])


def _wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    time.sleep(0.02)
    start_response("200 OK", [("content-type", "text/plain")])
    return [REPLICA.encode()]


wsgi_app = MeshWSGIMiddleware(_wsgi)
