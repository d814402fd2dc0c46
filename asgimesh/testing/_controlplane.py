"""A real control plane for users' tests: on a loopback port, in a thread, with a temp store.

```python
from asgimesh.testing import control_plane

with control_plane() as cp:
    httpx.put(cp.url + "/v1/policy", json={...}, headers=cp.admin_headers)
    runtime = MeshRuntime(MeshSettings(config=cp.url))   # follows it like a deployed service
```

It is the same app ``asgimesh control-plane`` serves, on uvicorn, over real sockets; only the
process boundary is missing, so it starts in a few milliseconds and needs no free-port dance.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from ..controlplane import ControlPlaneConfig, create_app
from ..controlplane._keys import new_admin_token

__all__ = ["ControlPlaneHandle", "control_plane", "serve_in_thread"]


@dataclass
class ControlPlaneHandle:
    url: str
    admin_token: str
    state_dir: Path
    server: uvicorn.Server = field(repr=False)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}


@contextlib.contextmanager
def serve_in_thread(app: Any, *, timeout: float = 10.0) -> Iterator[uvicorn.Server]:
    """Serve the ASGI ``app`` on ``127.0.0.1`` and a free port in a thread; stop it on exit.

    The port is bound before uvicorn starts (``fd``-less ``sockets=``), so no other process can
    take it in between. ``server.config.port`` holds the port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="asgimesh-test-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the test server did not start (see its log above)")
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@contextlib.contextmanager
def control_plane(
    *,
    store: str = "",
    admin_token: str | None = None,
    trust_domain: str = "mesh.local",
    state_dir: Path | None = None,
    stale_after: float = 60.0,
    max_parked_polls: int = ControlPlaneConfig.max_parked_polls,
    max_parked_per_client: int = ControlPlaneConfig.max_parked_per_client,
    cert_lifetime: float = ControlPlaneConfig.cert_lifetime,
    resign_every: float = ControlPlaneConfig.resign_every,
) -> Iterator[ControlPlaneHandle]:
    """Run a control plane (SQLite in a temp dir unless ``store`` says otherwise)."""
    token = admin_token or new_admin_token()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="asgimesh-cp-"))
            )
        app = create_app(
            ControlPlaneConfig(
                store=store,
                state_dir=state_dir,
                admin_token=token,
                trust_domain=trust_domain,
                stale_after=stale_after,
                max_parked_polls=max_parked_polls,
                max_parked_per_client=max_parked_per_client,
                cert_lifetime=cert_lifetime,
                resign_every=resign_every,
            )
        )
        server = stack.enter_context(serve_in_thread(app))
        yield ControlPlaneHandle(
            url=f"http://127.0.0.1:{server.config.port}",
            admin_token=token,
            state_dir=state_dir,
            server=server,
        )
