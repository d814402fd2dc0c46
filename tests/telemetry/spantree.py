"""Span trees as plain data, to compare a request's spans with and without the mesh exactly.

Each finished span becomes ``(name, kind, parent, attributes)``, where ``parent`` is the index of
its parent among the spans of the same run, ``"remote:<span id>"`` for a remote parent, or
``None``. What legitimately differs between two runs is taken out: the client's ephemeral port,
and the server's port (each run has its own server), which is written ``PORT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["Node", "by_name", "tree"]

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
