"""The answers the mesh gives itself, without calling the app: admin paths and refusals.

A plain value (status, headers, body) that both shells send in their own way; kept apart from
the decisions that produce it, so that the admin paths, the admission checks and the core all
use it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "json_answer", "json_document"]


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole response the mesh gives itself, without calling the app."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def json_answer(
    status: int, error: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
) -> Answer:
    """The contract's error shape, ``{"error": ..., "detail": ...}``."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    return Answer(status, (("content-type", "application/json"), *headers), body)


def json_document(
    status: int, document: Any, headers: tuple[tuple[str, str], ...] = ()
) -> Answer:
    """Any JSON document, indented for the operators who read the admin paths."""
    body = json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"
    return Answer(status, (("content-type", "application/json"), *headers), body)
