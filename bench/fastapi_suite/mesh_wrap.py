"""pytest plugin: run a test suite with every ASGI app wrapped in ``asgimesh.MeshMiddleware``.

Load it with ``-p mesh_wrap`` (this folder on ``PYTHONPATH``). Each app handed to Starlette's
``TestClient`` (FastAPI's is the same class) or to ``httpx.ASGITransport`` is wrapped the way a
user wraps theirs, ``MeshMiddleware(app)``, on the process's shared runtime built from
``MESH_*`` (``MESH_SERVICE`` defaults to ``fastapi-suite`` here; no ``MESH_CONFIG``).

Deliberately configures neither structlog nor ``logging``: the point is a host that has not.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import httpx
from starlette import testclient

os.environ.setdefault("MESH_SERVICE", "fastapi-suite")

from asgimesh import MeshMiddleware  # after MESH_SERVICE is set


def _wrap(app: Any) -> Any:
    return app if isinstance(app, MeshMiddleware) else MeshMiddleware(app)


def _wrapping_init(cls: type) -> None:
    """Replace ``cls.__init__`` with one that wraps its ``app`` argument first."""
    original = cls.__init__
    if getattr(original, "_mesh_wrap", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        if "app" in kwargs:
            kwargs["app"] = _wrap(kwargs["app"])
        elif args:
            args = (_wrap(args[0]), *args[1:])
        original(self, *args, **kwargs)

    __init__._mesh_wrap = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


def install() -> None:
    _wrapping_init(testclient.TestClient)
    _wrapping_init(httpx.ASGITransport)


def pytest_configure(config: Any) -> None:
    install()


def pytest_report_header(config: Any) -> str:
    return "mesh_wrap: every TestClient / httpx.ASGITransport app wrapped in MeshMiddleware"
