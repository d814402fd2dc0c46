"""Control plane: the server (``asgimesh control-plane``) and the client every service runs.

Server: :func:`create_app` (a Starlette app) over a store (SQLite file or etcd). Client:
:func:`make_policy_source`, which the runtime calls for an ``http(s)://`` or ``etcd://``
``MESH_CONFIG``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._client import ControlPlaneSource, parse_source_url
from ._server import ControlPlaneConfig, create_app

if TYPE_CHECKING:
    from .._runtime import MeshRuntime

__all__ = [
    "ControlPlaneConfig",
    "ControlPlaneSource",
    "create_app",
    "make_policy_source",
    "parse_source_url",
]


def make_policy_source(runtime: MeshRuntime) -> ControlPlaneSource:
    """The policy source for an ``http(s)://`` or ``etcd://`` ``MESH_CONFIG``."""
    assert runtime.settings.config is not None
    return ControlPlaneSource(runtime, parse_source_url(runtime.settings.config))
