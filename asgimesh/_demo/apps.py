"""The demo's services: ``frontend`` calls ``orders``, which calls ``payments`` (two replicas).

Each is a plain Starlette app; the mesh comes from ``asgimesh serve`` (inbound) and the
``AsyncMeshTransport`` client (outbound). ``DEMO_FAIL_PERCENT`` makes a replica flaky, so the
dashboard shows retries and outlier detection at work.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import AsyncMeshTransport, current_context

_FAIL_PERCENT = float(os.environ.get("DEMO_FAIL_PERCENT", "0"))
_REPLICA = os.environ.get("DEMO_REPLICA", "1")


def _client_app(routes: list[Route]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(transport=AsyncMeshTransport()) as client:
            app.state.client = client
            yield

    return Starlette(routes=routes, lifespan=lifespan)


async def charge(request: Request) -> JSONResponse:
    if random.random() * 100 < _FAIL_PERCENT:  # noqa: S311 - a demo's chaos, not security
        return JSONResponse({"error": "unavailable", "detail": "demo fault"}, status_code=503)
    body = await request.json()
    return JSONResponse({"charged": body.get("amount", 0), "replica": _REPLICA})


async def create_order(request: Request) -> JSONResponse:
    amount = random.randint(1, 100)  # noqa: S311
    answer = await request.app.state.client.post("http://payments/charge", json={"amount": amount})
    if answer.status_code != 200:
        return JSONResponse({"error": "payment failed", "detail": answer.text}, status_code=502)
    return JSONResponse({"order": "ok", "payment": answer.json()})


async def home(request: Request) -> JSONResponse:
    answer = await request.app.state.client.post("http://orders/orders")
    ctx = current_context()
    return JSONResponse(
        {"frontend": "ok", "orders": answer.json(), "trace_id": ctx.trace_id if ctx else None},
        status_code=answer.status_code,
    )


payments = Starlette(routes=[Route("/charge", charge, methods=["POST"])])
orders = _client_app([Route("/orders", create_order, methods=["POST"])])
frontend = _client_app([Route("/", home)])
