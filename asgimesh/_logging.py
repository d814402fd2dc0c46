"""Logging set-up for the CLI and the demo only: a library never configures its host's logging."""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging"]


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
