"""Durations as operators write them: ``250ms``, ``2s``, ``1m``, ``1h`` or a number of seconds.

One parser serves the environment, policy documents and the CLI, so that a value accepted in one
place is accepted everywhere, and a refusal reads the same everywhere.
"""

from __future__ import annotations

import json
import math
import re

__all__ = ["parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# ASCII digits only: ``\d`` would also take "²" (float() refuses it) and other scripts' digits.
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.ASCII)
#: Longer text is no duration anyone writes; refusing it first bounds the work of a refusal.
_MAX_TEXT = 64

EXPECTED = 'a duration ("250ms", "2s", "1m" or a number of seconds)'


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` naming what was expected.

    Negative, infinite and NaN durations are refused: none of them means anything for a timeout.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {EXPECTED}, got {_show(value)}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int of 400 digits (JSON and YAML allow it)
            seconds = math.inf
    elif isinstance(value, str):
        match = _PATTERN.match(value) if len(value) <= _MAX_TEXT else None
        if match is None:
            raise ValueError(f"expected {EXPECTED}, got {_show(value)}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"expected {EXPECTED}, got {_show(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected {EXPECTED}, got {_show(value)}")
    return seconds


def _show(value: object) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."
