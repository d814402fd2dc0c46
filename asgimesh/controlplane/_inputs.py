"""What the control plane reads from the network, bounded before anything else sees it.

One home for the rules every handler follows (issue 12): digits are ASCII and bounded, JSON
parsing survives any nesting and any number, and a refusal is an :class:`ApiError` that the app
answers as JSON ``{"error", "detail"}`` with a 4xx, the offending value shown cut short and
escaped, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

__all__ = [
    "MAX_VERSION",
    "ApiError",
    "ApiJSONResponse",
    "json_value",
    "show",
    "whole_number",
]

#: The largest policy version (and history limit) accepted anywhere: exact in a JSON double,
#: within SQLite's INTEGER and etcd's int64, and further than any mesh will count.
MAX_VERSION = 2**53 - 1


class ApiError(HTTPException):
    """A refusal the app answers as ``{"error": error, "detail": detail, **extra}``."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status, detail, dict(headers) if headers else None)
        self.error = error
        self.extra = extra


class ApiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped and no NaN or Infinity.

    Escaping is what lets a refusal quote what it refused: a lone surrogate (``"\\ud800"`` is
    valid JSON) cannot be encoded as UTF-8, and Starlette's default rendering would turn the 422
    into a 500. A NaN would be no JSON at all, so it fails here, in the app, not in a client.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def show(value: object, limit: int = 80) -> str:
    """``value`` as a refusal quotes it: JSON-escaped (ASCII only) and cut to ``limit``."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def whole_number(value: str | None, name: str, maximum: int = MAX_VERSION) -> int | None:
    """A query parameter as an integer from 0 to ``maximum``; ``None`` when absent or empty.

    ``str.isdigit`` accepts ``"²"`` and a few hundred other characters ``int`` refuses, and
    ``int`` itself refuses more than 4300 digits with a ``ValueError``: both used to be 500s.
    The length check comes first, so a 5000-digit value costs nothing to refuse.
    """
    if value is None or value == "":
        return None
    if (
        len(value) > len(str(maximum))
        or not value.isascii()
        or not value.isdigit()
        or int(value) > maximum
    ):
        raise ApiError(
            400,
            "bad_parameter",
            f"{name}: expected a whole number from 0 to {maximum}, got {show(value)}",
        )
    return int(value)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def json_value(raw: bytes) -> Any:
    """Parse a request body as strict JSON; anything else is a 400 ``bad_json``.

    Beyond syntax errors this refuses what Python's parser lets through or raises on: ``NaN``
    and ``Infinity`` (not JSON, and unrenderable later), integers longer than the interpreter's
    digit limit (a ``ValueError``), and nesting deep enough to exhaust the stack (a
    ``RecursionError``; 100,000 ``[`` fit in a 1 MiB body).
    """
    try:
        return json.loads(raw or b"null", parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        detail = f"expected JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except UnicodeDecodeError:
        detail = "expected JSON in UTF-8"
    except RecursionError:
        detail = "expected JSON nested less deeply"
    except ValueError as exc:  # NaN/Infinity (above) or the interpreter's digit limit
        detail = f"expected JSON: {str(exc)[:120]}"
    raise ApiError(400, "bad_json", detail)
