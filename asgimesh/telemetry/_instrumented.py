"""Does the app the mesh wraps make its own SERVER spans? (OpenTelemetry instrumentation inside.)

The OpenTelemetry instrumentations of ASGI, WSGI, Starlette, FastAPI, Flask and Django each start
the request's SERVER span themselves, from the request's ``traceparent``. Inside the mesh's own
SERVER span they would make a second span (Starlette's a sibling SERVER span, the others an
INTERNAL child), so the mesh steps aside where one is inside it: it starts no span and sets no
OpenTelemetry context, and the app's span is the request's span exactly as without the mesh.

This module only answers the question, by looking at the wrapped app once: the chain of
middleware objects (``.app``, ``.wsgi``, ``.application``, ``__wrapped__``, a bound method's
object), a Starlette app's ``user_middleware``, the flag the FastAPI, Starlette and Flask
instrumentors set on the app they instrumented, and Django's ``MIDDLEWARE`` setting where the
app is a Django handler. An instrumentation *outside* the mesh needs no look: its span is the
current span when the mesh is called (see :class:`~asgimesh.telemetry._otel.ServerSpans`).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["makes_server_spans"]

#: Attributes through which a middleware (or a wrapper function) names what it wraps.
_INNER = ("app", "wsgi", "application", "wsgi_app", "__wrapped__", "__self__", "middleware_stack")

#: Where the instrumentations live: OpenTelemetry's contrib packages, and Starlette's own
#: ``starlette.middleware.opentelemetry`` (Starlette 1.x ships an ``OpenTelemetryMiddleware``).
_MODULES = ("opentelemetry.instrumentation.", "starlette.middleware.opentelemetry")

#: How far down a chain of wrappers to look (a real stack is a handful deep).
_DEPTH = 64


def _attr(obj: Any, name: str) -> Any:
    """``obj.name``, or ``None`` where reading it fails in any way (a property may raise)."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _instrumentation(obj: Any) -> bool:
    """``obj`` (a class, function or instance) is defined by an OpenTelemetry instrumentation."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = getattr(type(obj), "__module__", "")
    return isinstance(module, str) and module.startswith(_MODULES)


def _django_traces(handler: Any) -> bool:
    """A Django handler whose ``MIDDLEWARE`` holds OpenTelemetry's (``DjangoInstrumentor``)."""
    if not type(handler).__module__.startswith("django.core.handlers"):
        return False
    conf = sys.modules.get("django.conf")
    middleware = getattr(getattr(conf, "settings", None), "MIDDLEWARE", None) or ()
    return any(isinstance(path, str) and path.startswith(_MODULES[0]) for path in middleware)


def makes_server_spans(app: Any) -> bool:
    """Whether ``app`` (what the mesh wraps) starts each request's SERVER span itself."""
    seen: set[int] = set()
    todo = [app]
    while todo and len(seen) < _DEPTH:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if _attr(obj, "_is_instrumented_by_opentelemetry") is True:
            return True
        if _instrumentation(obj) or _instrumentation(type(obj)) or _django_traces(obj):
            return True
        user_middleware = _attr(obj, "user_middleware")
        if isinstance(user_middleware, list) and any(
            _instrumentation(_attr(middleware, "cls")) for middleware in user_middleware
        ):
            return True
        todo.extend(_attr(obj, name) for name in _INNER)
    return False
