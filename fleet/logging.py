"""Structured logs: JSON lines for machines, key=value for a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was
    configured: a stream replaced since (and perhaps closed) is never written to."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


STDERR = _Stderr()


def configure(*, level: str = "INFO", json: bool = True) -> None:
    """Set up structlog once for the process (the CLI calls this)."""
    global _configured
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    logging.basicConfig(format="%(message)s", stream=STDERR, level=level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=STDERR),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


__all__ = ["configure", "get_logger"]
