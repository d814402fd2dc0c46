"""The mesh's loggers, and what may go into them.

A library must not configure its host's logging (structlog's advice for libraries), so every
logger here follows the host's structlog configuration as soon as the host has one. Until then
structlog's *default* configuration is the wrong one for a library that runs inside every
request: its console renderer prints to stdout and, where ``rich`` or ``better-exceptions`` is
installed, draws each exception's traceback with the locals of every frame, which costs
milliseconds to seconds of CPU per event and copies whatever the frames hold (an ASGI scope with
an ``Authorization`` header, a cookie) into the log.

So, while the host has not configured structlog, the mesh's events go through a pipeline of its
own: level, timestamp, one JSON line on stderr, INFO and above, and never a traceback. The events
themselves carry no traceback in either case: an error is described by :func:`describe_error`
(type, bounded message, credentials redacted) and the server that receives the re-raised
exception prints its own plain traceback once.

What the mesh logs never holds a header value other than the request id and trace ids, nor a
token, a cookie or URL credentials; :func:`redact` is the one scrubber for text that might.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["MeshLogger", "Throttle", "describe_error", "get_logger", "redact"]

#: The longest exception message or path the mesh writes into one event.
MAX_TEXT = 200


class _OwnLogger:
    """The pipeline for hosts that have not configured structlog: one JSON line per event on
    stderr (looked up at each write, so hosts and tests that replace it are followed), INFO and
    above, with the fields structlog's JSON processors would give (``logger``, ``event``, the
    event's own, ``level``, ``timestamp``) and never a traceback.

    It is the three processors' work done in one call rather than through a bound logger:
    an app that fails on every request pays for this line each time (about 3 µs instead of 8).
    """

    __slots__ = ("_file", "_name")

    def __init__(self, name: str, file: TextIO | None) -> None:
        self._name = name
        self._file = file

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        # Nothing in the mesh passes exc_info; should a caller, it is dropped here rather than
        # rendered, with the locals that a pretty renderer would show.
        fields.pop("exc_info", None)
        fields.pop("stack_info", None)
        line = {"logger": self._name, "event": event, **fields, "level": level}
        line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        text = json.dumps(line, default=repr) + "\n"
        file = self._file if self._file is not None else sys.stderr
        file.write(text)
        file.flush()


class MeshLogger:
    """A structlog logger for one part of the mesh (``asgimesh.inbound``, ...).

    Each call goes to the host's structlog configuration when there is one (decided at the call,
    so a host that configures structlog after importing the mesh is followed), else to the mesh's
    own minimal pipeline. Events are rare (errors, reloads) but for the opt-in access log and an
    app that fails on every request, where the choice costs one function call.

    structlog itself is not imported here: a host that has not imported it cannot have
    configured it, so until it does the mesh's own pipeline is the answer without it (importing
    structlog costs a serverless cold start about 20 ms, most of it ``structlog.dev`` loading
    ``rich`` where that is installed).
    """

    __slots__ = ("_host", "_name", "_own")

    def __init__(self, name: str, file: TextIO | None = None) -> None:
        self._name = name
        self._host: Any = None
        self._own = _OwnLogger(name, file)

    def _configured(self) -> Any:
        """The host's structlog logger if the host has configured structlog, else ``None``."""
        structlog = sys.modules.get("structlog")
        if structlog is None or not structlog.is_configured():
            return None
        host = self._host
        if host is None:
            host = self._host = structlog.get_logger(self._name)
        return host

    def debug(self, event: str, **fields: Any) -> None:
        host = self._configured()
        if host is not None:  # below the own pipeline's INFO: dropped
            host.debug(event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        host = self._configured()
        if host is not None:
            host.info(event, **fields)
        else:
            self._own.emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        host = self._configured()
        if host is not None:
            host.warning(event, **fields)
        else:
            self._own.emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        host = self._configured()
        if host is not None:
            host.error(event, **fields)
        else:
            self._own.emit("error", event, fields)


def get_logger(name: str) -> MeshLogger:
    """The logger for ``name``; modules make theirs once, at import."""
    return MeshLogger(name)


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_CUT_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*$")
_AUTH_VALUE = re.compile(r"(?i)\b(bearer|basic|token|password)(\s+|=)[^\s,;&\"']+")


def redact(text: str) -> str:
    """``text`` with URL credentials, bearer/basic credentials and ``token=``/``password=``
    values replaced by ``<redacted>``."""
    if "@" in text:
        text = _URL_CREDENTIALS.sub(r"\1<redacted>@", text)
    return _AUTH_VALUE.sub(r"\1\2<redacted>", text)


def bounded(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters (marked with an ellipsis where cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_error(error: BaseException, limit: int = MAX_TEXT) -> tuple[str, str]:
    """``(type name, message)`` of an exception, fit for a log line: the message on one line,
    cut to ``limit`` characters, credentials redacted. Never raises (an exception's ``__str__``
    may)."""
    kind = type(error).__qualname__
    try:
        message = str(error)
    except Exception:  # an app's broken __str__ must not turn its error into ours
        message = "<unprintable>"
    cut = len(message) > limit
    if cut:
        # Only the head is logged: redact that, and drop a URL cut before its '@' could show
        # that what follows '://' is a password.
        message = _CUT_URL.sub(r"\1…", message[:limit])
    message = " ".join(redact(message).split())
    return kind, bounded(message + ("…" if cut else ""), limit)


class Throttle:
    """Admits at most ``burst`` events per key in each ``period`` seconds and counts the rest.

    For errors that repeat per request or per ``accept()``: when a server runs out of file
    descriptors every attempt fails the same way (issue 12 counted 131k EMFILE tracebacks in a
    minute), and a log that grows that fast becomes the next outage. The first events of each
    window are kept, and the next one admitted says how many were dropped in between. Keys are
    bounded too: past ``max_keys`` distinct ones, the rest share one. Thread-safe (stdlib log
    filters run on whichever thread logs).
    """

    def __init__(
        self,
        burst: int = 10,
        period: float = 10.0,
        max_keys: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.period, self.max_keys = burst, period, max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> [window start, events admitted in the window, events dropped since the last]
        self._keys: dict[str, list[float]] = {}

    def admit(self, key: str) -> int | None:
        """``None`` to drop this event; else how many of ``key``'s were dropped before it."""
        now = self._clock()
        with self._lock:
            if key not in self._keys and len(self._keys) >= self.max_keys:
                key = "(other)"
            state = self._keys.setdefault(key, [now, 0, 0])
            if now - state[0] >= self.period:
                state[0], state[1] = now, 0
            if state[1] >= self.burst:
                state[2] += 1
                return None
            state[1] += 1
            dropped, state[2] = int(state[2]), 0
            return dropped
