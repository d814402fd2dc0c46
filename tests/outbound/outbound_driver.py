"""One interface over the four transports (httpx/httpx2 x sync/async), so each integration test
runs the same case through every one of them.

Async clients live on one event loop in a background thread (an anyio blocking portal, asyncio
or trio) for the whole test, as a service's client would; the test itself stays synchronous.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio.from_thread
import httpx
import httpx2

import asgimesh.outbound
import asgimesh.outbound.httpx2
from asgimesh import MeshContext, MeshRuntime, MeshSettings
from asgimesh._context import _current

VARIANTS = ["httpx-sync", "httpx-asyncio", "httpx-trio", "httpx2-sync", "httpx2-asyncio"]

#: The transport tests' policy defaults: short timeouts and backoff, so failures show fast.
FAST = {"timeout": "2s", "per_try_timeout": "1s",
        "retries": {"backoff": {"base": "1ms", "max": "5ms"}}}  # fmt: skip


def runtime(services: dict[str, Any], defaults: dict[str, Any] | None = None, *,
            base: dict[str, Any] | None = None, **settings: Any) -> MeshRuntime:
    """A runtime whose policy has ``services`` and ``defaults`` over ``base`` (else
    :data:`FAST`); ``settings`` are more :class:`MeshSettings` (``zone=...``)."""
    policy = {"defaults": {**(FAST if base is None else base), **(defaults or {})},
              "services": services}  # fmt: skip
    return MeshRuntime(MeshSettings(policy=json.dumps(policy), **settings))


def sample(rt: MeshRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"service": "app", **labels}) or 0.0


def dead_url() -> str:
    """A loopback URL that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


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
