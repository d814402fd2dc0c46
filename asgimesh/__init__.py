"""asgimesh: a proxyless service mesh for Python.

``MeshMiddleware`` (ASGI) and ``MeshWSGIMiddleware`` handle every inbound call; ``MeshTransport``
and ``AsyncMeshTransport`` (httpx) handle every outbound call; one policy drives both.

``import asgimesh`` imports none of them yet: each public name is imported on first use (PEP
562's module ``__getattr__``), so a process pays at start only for the half of the mesh it uses
(a serverless cold start pays for every import), and tools that merely import the package stay
fast. ``from asgimesh import MeshMiddleware`` works as ever.
"""

import typing as _typing
from importlib import import_module as _import_module

from .__version__ import __version__

if _typing.TYPE_CHECKING:
    from ._context import MeshContext, current_context
    from ._errors import ConfigError, PolicyError
    from ._runtime import MeshRuntime, get_runtime, set_runtime
    from .inbound import MeshMiddleware, MeshWSGIMiddleware
    from .outbound import (
        AsyncMeshTransport,
        CircuitOpen,
        DeadlineExceeded,
        MeshTransport,
        NoHealthyEndpoints,
        RetryBudgetExhausted,
    )
    from .policy import Policy, PolicySnapshot
    from .settings import MeshSettings

__all__ = [
    "AsyncMeshTransport",
    "CircuitOpen",
    "ConfigError",
    "DeadlineExceeded",
    "MeshContext",
    "MeshMiddleware",
    "MeshRuntime",
    "MeshSettings",
    "MeshTransport",
    "MeshWSGIMiddleware",
    "NoHealthyEndpoints",
    "Policy",
    "PolicyError",
    "PolicySnapshot",
    "RetryBudgetExhausted",
    "__version__",
    "current_context",
    "get_runtime",
    "set_runtime",
]

#: Where each public name lives (a private module or a subpackage).
_HOMES = {
    "AsyncMeshTransport": ".outbound",
    "CircuitOpen": ".outbound",
    "ConfigError": "._errors",
    "DeadlineExceeded": ".outbound",
    "MeshContext": "._context",
    "MeshMiddleware": ".inbound",
    "MeshRuntime": "._runtime",
    "MeshSettings": ".settings",
    "MeshTransport": ".outbound",
    "MeshWSGIMiddleware": ".inbound",
    "NoHealthyEndpoints": ".outbound",
    "Policy": ".policy",
    "PolicyError": "._errors",
    "PolicySnapshot": ".policy",
    "RetryBudgetExhausted": ".outbound",
    "current_context": "._context",
    "get_runtime": "._runtime",
    "set_runtime": "._runtime",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _import_module(home, __name__)
    # Every public name of that home at once, bound here so that later look-ups are plain
    # attribute reads. Public names say where users import them from (as httpx does):
    # ``asgimesh.CircuitOpen`` in reprs and tracebacks, not the private module defining it.
    for other, where in _HOMES.items():
        if where == home:
            member = getattr(module, other)
            if isinstance(member, type) or callable(member):
                member.__module__ = __name__
            globals()[other] = member
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
