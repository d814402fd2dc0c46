"""Span trees as plain data, to compare a request's spans with and without the mesh exactly; and
the real servers, in a thread of the test process, that the span tests call.

Each finished span becomes ``(name, kind, parent, attributes)``, where ``parent`` is the index of
its parent among the spans of the same run, ``"remote:<span id>"`` for a remote parent, or
``None``. What legitimately differs between two runs is taken out: the client's ephemeral port,
and the server's port (each run has its own server), which is written ``PORT``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry.sdk.trace import ReadableSpan

from asgimesh.testing import serve_in_thread

__all__ = ["Node", "by_name", "served", "tree", "wsgi_in_thread"]

#: Attributes that hold the client's ephemeral port (old and new semantic conventions).
_EPHEMERAL = frozenset({"client.port", "net.peer.port", "net.sock.peer.port", "network.peer.port"})

Node = tuple[str, str, int | str | None, dict[str, Any]]


def _value(value: Any, port: int | None) -> Any:
    if port is None:
        return value
    if isinstance(value, int) and value == port:
        return "PORT"
    if isinstance(value, str):
        return value.replace(f":{port}", ":PORT")
    return value


def tree(spans: Sequence[ReadableSpan], port: int | None = None) -> list[Node]:
    """The spans of one run (one trace or several), in the order they finished."""
    index = {span.context.span_id: n for n, span in enumerate(spans)}
    nodes: list[Node] = []
    for span in spans:
        parent: int | str | None = None
        if span.parent is not None:
            parent = index.get(span.parent.span_id, f"remote:{span.parent.span_id:016x}")
        attributes = {
            key: _value(value, port)
            for key, value in (span.attributes or {}).items()
            if key not in _EPHEMERAL
        }
        nodes.append((_value(span.name, port), span.kind.name, parent, attributes))
    return nodes


def by_name(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [span] = [span for span in spans if span.name == name]
    return span


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def wsgi_in_thread(app: Any) -> Iterator[int]:
    """Serve the WSGI ``app`` with wsgiref on a free loopback port; stop it on exit."""
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@contextmanager
def served(kind: str, app: Any) -> Iterator[int]:
    if kind == "asgi":
        with serve_in_thread(app) as server:
            yield server.config.port
    else:
        with wsgi_in_thread(app) as port:
            yield port
