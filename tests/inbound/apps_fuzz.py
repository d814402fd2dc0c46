"""The apps the inbound fuzz suite (``test_fuzz.py``) serves: one ASGI app under uvicorn and its
WSGI twin under gunicorn, each behind the mesh with the features the fuzzer pokes at turned on
(the policy comes from the ``MESH_*`` the test gives the process).

Both answer every request that reaches them ``200`` (the ASGI app closes every WebSocket
handshake before accepting it) with a body the test recognises:
``app:<bytes of request body read>`` (``app:broken-body`` for a body that ended before its
``content-length``), ``app:secure:<bytes>`` under ``/secure`` (authorization
lets only ``orders`` in, so the test can catch an identity it never proved), and under
``/call`` ``app:called:<status or error>`` after an outbound call through the mesh to
``faulty``, whose fault injection answers 503 without a network hop: the fuzzed trace context,
request id and deadline travel on through the outbound half. Anything else (an exception from
the mesh, no mesh context) is a 500 from the server, which the test counts as the mesh's.

Access log lines are rendered by the host's structlog configuration (so every fuzzed path and
value goes through a JSON renderer) and then dropped, to keep 100,000 of them out of the log
the test scans; every other event of the mesh reaches stderr. OpenTelemetry's SDK is installed
with no exporter, so each request also gets a real SERVER span.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from asgimesh import (
    AsyncMeshTransport,
    MeshMiddleware,
    MeshTransport,
    MeshWSGIMiddleware,
    current_context,
)


class _WithoutAccessLines:
    """stderr without the access log's ``request`` events."""

    def write(self, text: str) -> None:
        if '"event": "request"' not in text:
            sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.JSONRenderer(),
    ],
    logger_factory=structlog.PrintLoggerFactory(_WithoutAccessLines()),  # type: ignore[arg-type]
)
trace.set_tracer_provider(TracerProvider())


def _body(path: str, size: int, called: str | None) -> bytes:
    if current_context() is None:
        raise RuntimeError("the app ran without a mesh context")
    if called is not None:
        return f"app:called:{called}".encode()
    return (b"app:secure:" if path.startswith("/secure") else b"app:") + str(size).encode()


# ---- ASGI, under uvicorn -------------------------------------------------------------------------

_async_client = httpx.AsyncClient(transport=AsyncMeshTransport(), timeout=2.0)


async def _asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "websocket":  # every handshake the mesh lets through is closed
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        return
    if scope["type"] != "http":
        return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    called = None
    if scope["path"].startswith("/call"):
        try:
            called = str((await _async_client.get("http://faulty/x")).status_code)
        except httpx.HTTPError as error:  # a mesh refusal is an httpx error: that is fine
            called = type(error).__name__
    body = _body(scope["path"], size, called)
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


asgi_app = MeshMiddleware(_asgi)


# ---- WSGI, under gunicorn ------------------------------------------------------------------------

_client = httpx.Client(transport=MeshTransport(), timeout=2.0)


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    size = 0
    stream = environ["wsgi.input"]
    try:
        while chunk := stream.read(65536):
            size += len(chunk)
    except Exception:  # gunicorn's NoMoreData: the caller's body ended before its length
        body = b"app:broken-body"
        start_response("200 OK", [("content-length", str(len(body)))])
        return [body]
    called = None
    if path.startswith("/call"):
        try:
            called = str(_client.get("http://faulty/x").status_code)
        except httpx.HTTPError as error:
            called = type(error).__name__
    body = _body(path, size, called)
    start_response(
        "200 OK", [("content-type", "text/plain"), ("content-length", str(len(body)))]
    )
    return [body]


wsgi_app = MeshWSGIMiddleware(_wsgi)
