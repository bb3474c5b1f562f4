"""The one builder of a ``fleet worker`` command line.

The demo, the ``local`` actuator, the benchmarks and the tests all start
workers as processes; they build the argument list here, so a flag is spelled
in one place.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def worker_command(*, python: str | None = None, log_level: str | None = None) -> list[str]:
    """``python -m fleetctl [--log-level L] worker`` with this interpreter."""
    argv = [python or sys.executable, "-m", "fleetctl"]
    if log_level is not None:
        argv += ["--log-level", log_level]
    return [*argv, "worker"]


def worker_argv(
    *,
    broker: str,
    models: str | Path,
    worker_id: str,
    http_port: int = 0,
    command: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The full command that starts one worker: ``command`` (default
    :func:`worker_command`) with the broker, the repository, the worker's id
    and its HTTP port, then ``extra``."""
    return [
        *(command if command is not None else worker_command()),
        "--broker",
        broker,
        "--models",
        str(models),
        "--worker-id",
        worker_id,
        "--http-port",
        str(http_port),
        *extra,
    ]


__all__ = ["worker_argv", "worker_command"]
