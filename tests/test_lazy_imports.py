"""``import asgimesh`` is cheap, and building the middleware imports only what it uses.

Pinned by what a fresh interpreter has in ``sys.modules``, not by timing: a cold start (a
serverless function's first request, a CLI tool that only imports the package) pays for every
module imported, and PyYAML, cryptography, PyJWT, pydantic and the control-plane client are
the heavy ones. ``python -X importtime -c "import asgimesh"`` shows the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import asgimesh
from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent

#: Heavy modules that ``import asgimesh`` alone must not import.
NOT_ON_IMPORT = [
    "yaml",
    "cryptography",
    "cryptography.x509",
    "jwt",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "structlog",
    "httpx",
    "asgimesh.policy._model",
    "asgimesh.settings",
    "asgimesh.inbound",
    "asgimesh.outbound",
]

#: What ``MeshMiddleware(app)`` with default settings (no ``MESH_CONFIG``, no mTLS, JSON or no
#: policy) has no use for.
NOT_FOR_THE_MIDDLEWARE = [
    "yaml",
    "jwt",
    "asgimesh._etcd",
    "asgimesh.policy.sources._watch",
    "asgimesh.policy.sources._feeds",
    "asgimesh.identity._issuer",
    "asgimesh.identity._jwt",
    "asgimesh.identity._jwt_issuer",
    "asgimesh.outbound",
    "asgimesh.controlplane",
    "asgimesh.cli",
    # Until the host imports (and configures) structlog, the mesh logs without it.
    "structlog",
]


def _fresh(code: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env({"MESH_SERVICE": "probe"}),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_asgimesh_imports_none_of_the_heavy_modules() -> None:
    seen = _fresh(
        "import json, sys\n"
        "import asgimesh\n"
        f"print(json.dumps({{'loaded': [m for m in {NOT_ON_IMPORT!r} if m in sys.modules],"
        " 'version': asgimesh.__version__}))"
    )
    assert seen["loaded"] == []
    assert seen["version"] == asgimesh.__version__


def test_the_middleware_with_default_settings_imports_only_what_it_uses() -> None:
    """And it still works: one request through it, in the same fresh interpreter."""
    seen = _fresh(
        "import asyncio, json, sys\n"
        "from asgimesh import MeshMiddleware\n"
        "statuses = []\n"
        "async def app(scope, receive, send):\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
        "async def send(message):\n"
        "    if message['type'] == 'http.response.start':\n"
        "        statuses.append((message['status'], dict(message['headers'])))\n"
        "async def receive():\n"
        "    return {'type': 'http.request', 'body': b''}\n"
        "scope = {'type': 'http', 'method': 'GET', 'path': '/', 'headers': [],"
        " 'query_string': b'', 'client': ('127.0.0.1', 1)}\n"
        "asyncio.run(MeshMiddleware(app)(scope, receive, send))\n"
        "[(status, headers)] = statuses\n"
        f"print(json.dumps({{'loaded': [m for m in {NOT_FOR_THE_MIDDLEWARE!r} if m in sys.modules],"
        " 'status': status, 'echo': b'x-request-id' in headers}))"
    )
    assert seen["loaded"] == []
    assert seen["status"] == 200
    assert seen["echo"] is True


def test_lazy_names_are_listed_and_unknown_ones_refused() -> None:
    assert set(asgimesh.__all__) <= set(dir(asgimesh))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        asgimesh.NoSuchThing  # noqa: B018
    # The names made lazy in the subpackages are still there when asked for.
    from asgimesh.identity import JWTIssuer
    from asgimesh.policy.sources import ControlPlaneSource

    assert JWTIssuer.__name__ == "JWTIssuer"
    assert ControlPlaneSource.__name__ == "ControlPlaneSource"


def test_the_transport_leaves_what_only_hedged_calls_use_unimported() -> None:
    """A service that hedges nothing does not carry anyio's task groups and memory streams:
    they are imported on the first hedged call."""
    seen = _fresh(
        "import json, sys\n"
        "import asgimesh.outbound\n"
        "print(json.dumps({'loaded': [m for m in ['anyio.abc', 'anyio.streams.memory']"
        " if m in sys.modules]}))"
    )
    assert seen["loaded"] == []
