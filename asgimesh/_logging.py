"""Logging set-up for the CLI and the demo only: a library never configures its host's logging."""

from __future__ import annotations

import logging
import sys

import structlog

from ._log import Throttle

__all__ = ["configure_logging", "throttle_server_logs"]


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Render structlog events as JSON lines (or for a console) on stderr."""
    # Plain tracebacks even where rich is installed: a pretty one renders every frame's locals
    # (slow, and they may hold request headers). The mesh itself never logs one (asgimesh._log).
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class _ThrottleFilter(logging.Filter):
    """Drops a stdlib record past its :class:`Throttle` budget, keyed by logger, level and the
    message's first line (where asyncio and uvicorn put what failed)."""

    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        first = str(record.msg).partition("\n")[0][:80]
        dropped = self.throttle.admit(f"{record.name}:{record.levelno}:{first}")
        if dropped is None:
            return False
        if dropped and isinstance(record.msg, str):
            record.msg += f"\n({dropped} similar lines were dropped before this one)"
        return True


def throttle_server_logs(
    names: tuple[str, ...] = ("asyncio", "uvicorn.error"), throttle: Throttle | None = None
) -> None:
    """Bound what the server's own loggers write when one failure repeats: asyncio logs every
    failed ``accept()`` (EMFILE) with a traceback, uvicorn every request's unhandled error."""
    shared = _ThrottleFilter(throttle or Throttle())
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ThrottleFilter) for f in logger.filters):
            logger.addFilter(shared)
