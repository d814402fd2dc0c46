"""Inbound: the ASGI and WSGI middleware that handle every call a service receives."""

from __future__ import annotations

from typing import Any

__all__ = ["MeshMiddleware", "MeshWSGIMiddleware"]


class MeshMiddleware:  # placeholder until issue 2's inbound path lands
    def __init__(self, app: Any, **kwargs: Any) -> None:
        raise NotImplementedError("MeshMiddleware arrives with issue 2")


class MeshWSGIMiddleware:  # placeholder until issue 2's inbound path lands
    def __init__(self, app: Any, **kwargs: Any) -> None:
        raise NotImplementedError("MeshWSGIMiddleware arrives with issue 2")
