"""WSGI apps the inbound tests serve, in-process and under a real gunicorn."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from asgimesh import MeshWSGIMiddleware, current_context

CHUNK = b"x" * 65536

StartResponse = Callable[..., Any]


def whoami_body() -> bytes:
    context = current_context()
    assert context is not None
    return json.dumps(
        {
            "request_id": context.request_id,
            "trace_id": context.trace_id,
            "span_id": context.span_id,
            "parent_span_id": context.parent_span_id,
            "remaining": context.remaining(),
        }
    ).encode()


def bare(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A plain WSGI app: /whoami, /stream?mb=N, /upload, /boom, /status/N."""
    path = environ["PATH_INFO"]
    if path == "/whoami":
        start_response("200 OK", [("content-type", "application/json")])
        return [whoami_body()]
    if path == "/stream":
        mb = int(environ.get("QUERY_STRING", "mb=1").partition("=")[2] or 1)
        start_response("200 OK", [("content-type", "application/octet-stream")])
        return (CHUNK for _ in range(mb * 16))
    if path == "/upload":
        stream = environ["wsgi.input"]
        left = int(environ.get("CONTENT_LENGTH") or 0)
        size = 0
        while left > 0:
            chunk = stream.read(min(left, 65536))
            if not chunk:
                break
            size += len(chunk)
            left -= len(chunk)
        start_response("200 OK", [("content-type", "text/plain")])
        return [str(size).encode()]
    if path == "/boom":
        raise RuntimeError("boom from the app")
    if path == "/context-in-body":
        start_response("200 OK", [("content-type", "text/plain")])
        return _context_per_chunk()
    if path.startswith("/status/"):
        start_response(f"{path.rpartition('/')[2]} Whatever", [])
        return [b""]
    start_response("404 Not Found", [("content-type", "text/plain")])
    return [b"not found"]


def _context_per_chunk() -> Iterator[bytes]:
    """A streamed body that reads the mesh context while each chunk is produced."""
    for _ in range(2):
        context = current_context()
        yield (context.request_id if context else "none").encode() + b"\n"


app = MeshWSGIMiddleware(bare)
