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
    """Set up structlog once for the process (the CLI calls this).

    Records of the standard library's logging (the broker libraries', ONNX
    Runtime's) go through the same renderer: a JSON line each, with the
    logger's name, and a traceback inside its line as ``exception``. The
    root logger gets this handler only where it has none yet, as with
    ``logging.basicConfig``: a program that set up its own logging keeps it."""
    global _configured
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(STDERR)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    stamp,
                ],
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
            )
        )
        root.addHandler(handler)
        root.setLevel(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
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
