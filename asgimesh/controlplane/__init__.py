"""Control plane: the server (``asgimesh control-plane``) and the client every service runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._runtime import MeshRuntime, PolicySource

__all__ = ["make_policy_source"]


def make_policy_source(runtime: MeshRuntime) -> PolicySource:
    """The policy source for an ``http(s)://`` or ``etcd://`` ``MESH_CONFIG``."""
    raise NotImplementedError("control-plane policy sources arrive with issue 4")
