"""In-process clients for both shells, so that each shared behaviour is asserted for ASGI and WSGI
alike (the real-server tests are in test_servers.py). The fixtures are imported by the
``conftest.py`` of tests/inbound and tests/telemetry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from asgimesh import MeshMiddleware, MeshRuntime, MeshSettings, MeshWSGIMiddleware

from . import apps_asgi, apps_wsgi


@pytest.fixture
def make_runtime() -> Iterator[Callable[..., MeshRuntime]]:
    """``make_runtime(service="web", admin_token="...")``: an isolated runtime for one test."""
    made: list[MeshRuntime] = []

    def make(**settings: Any) -> MeshRuntime:
        runtime = MeshRuntime(MeshSettings.from_env(**settings))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


class Shell:
    """One middleware shell around the test app, called in-process."""

    def __init__(self, kind: str, runtime: MeshRuntime) -> None:
        self.kind = kind
        self.runtime = runtime
        if kind == "asgi":
            self.app: Any = MeshMiddleware(apps_asgi.bare, runtime=runtime)
        else:
            self.app = MeshWSGIMiddleware(apps_wsgi.bare, runtime=runtime)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        client: str = "127.0.0.1",
    ) -> httpx.Response:
        if self.kind == "wsgi":
            transport = httpx.WSGITransport(app=self.app, remote_addr=client)
            with httpx.Client(transport=transport, base_url="http://mesh.test") as http:
                return http.request(method, path, headers=headers)

        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=(client, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://mesh.test") as http:
                return await http.request(method, path, headers=headers)

        return anyio.run(call)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


@pytest.fixture(params=["asgi", "wsgi"])
def shell_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_shell(shell_kind: str, make_runtime: Callable[..., MeshRuntime]) -> Callable[..., Shell]:
    """``make_shell(**settings)``: the test app in this test's shell, on its own runtime."""
    return lambda **settings: Shell(shell_kind, make_runtime(**settings))
