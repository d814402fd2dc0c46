"""One interface over the four transports (httpx/httpx2 x sync/async), so each integration test
runs the same case through every one of them.

Async clients live on one event loop in a background thread (an anyio blocking portal, asyncio
or trio) for the whole test, as a service's client would; the test itself stays synchronous.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio.from_thread
import httpx
import httpx2

import asgimesh.outbound
import asgimesh.outbound.httpx2
from asgimesh import MeshContext, MeshRuntime
from asgimesh._context import _current

VARIANTS = ["httpx-sync", "httpx-asyncio", "httpx-trio", "httpx2-sync", "httpx2-asyncio"]


class Driver:
    def __init__(self, variant: str, runtime: MeshRuntime | None, portal: Any = None,
                 **kwargs: Any) -> None:
        lib, _, mode = variant.partition("-")
        self.variant = variant
        self.mod: ModuleType = httpx if lib == "httpx" else httpx2
        self.mesh: ModuleType = asgimesh.outbound if lib == "httpx" else asgimesh.outbound.httpx2
        self.sync = mode == "sync"
        self._portal = portal
        if self.sync:
            self.transport = self.mesh.MeshTransport(runtime=runtime, **kwargs)
            self.client = self.mod.Client(transport=self.transport, timeout=5)
        else:
            self.transport = self.mesh.AsyncMeshTransport(runtime=runtime, **kwargs)
            self.client = self.mod.AsyncClient(transport=self.transport, timeout=5)

    def request(self, method: str, url: str, *, context: MeshContext | None = None, **kwargs: Any) -> Any:
        """Send and read a whole request; raises what the client raises."""
        if self.sync:
            token = _current.set(context)
            try:
                return self.client.request(method, url, **kwargs)
            finally:
                _current.reset(token)

        async def send() -> Any:
            token = _current.set(context)
            try:
                return await self.client.request(method, url, **kwargs)
            finally:
                _current.reset(token)

        return self._portal.call(send)

    def stream_chunks(self, url: str) -> list[bytes]:
        """Stream a response and return its raw chunks as they came."""
        if self.sync:
            with self.client.stream("GET", url) as response:
                return list(response.iter_raw())

        async def read() -> list[bytes]:
            async with self.client.stream("GET", url) as response:
                return [chunk async for chunk in response.aiter_raw()]

        return list(self._portal.call(read))

    def close(self) -> None:
        if self.sync:
            self.client.close()
        else:
            self._portal.call(self.client.aclose)


@contextlib.contextmanager
def driver(variant: str, runtime: MeshRuntime | None, **kwargs: Any) -> Iterator[Driver]:
    mode = variant.partition("-")[2]
    if mode == "sync":
        d = Driver(variant, runtime, **kwargs)
        try:
            yield d
        finally:
            d.close()
        return
    with anyio.from_thread.start_blocking_portal(backend=mode) as portal:
        d = portal.call(lambda: Driver(variant, runtime, portal, **kwargs))
        try:
            yield d
        finally:
            d.close()
