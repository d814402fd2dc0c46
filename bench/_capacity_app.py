"""The service of the adaptive-concurrency benchmark: it works on ``CAPACITY`` requests at once,
``WORK_MS`` each (a pool of database connections, say); the rest wait for a slot. So it can
answer ``CAPACITY / WORK_MS`` requests a second, and anything offered beyond that queues."""

from __future__ import annotations

import os

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgimesh import MeshMiddleware

CAPACITY = int(os.environ.get("CAPACITY", "4"))
WORK = float(os.environ.get("WORK_MS", "20")) / 1000
_slots: list[anyio.Semaphore] = []


async def work(request: Request) -> PlainTextResponse:
    if not _slots:
        _slots.append(anyio.Semaphore(CAPACITY))
    async with _slots[0]:
        await anyio.sleep(WORK)
    return PlainTextResponse("done")


app = MeshMiddleware(Starlette(routes=[Route("/work", work)]))
