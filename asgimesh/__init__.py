"""asgimesh: a proxyless service mesh for Python.

``MeshMiddleware`` (ASGI) and ``MeshWSGIMiddleware`` handle every inbound call; ``MeshTransport``
and ``AsyncMeshTransport`` (httpx) handle every outbound call; one policy drives both.
"""

from .__version__ import __version__
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

# Public names say where users import them from (as httpx does): ``asgimesh.MeshMiddleware`` in
# reprs, tracebacks and docs, not the private module that happens to define it.
for _name in __all__:
    if not _name.startswith("__"):
        _member = globals()[_name]
        if isinstance(_member, type) or callable(_member):
            _member.__module__ = "asgimesh"
del _name, _member
