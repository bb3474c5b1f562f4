"""The one builder of a ``fleet worker`` command line.

The demo, the ``local`` actuator, the benchmarks and the tests all start
workers as processes; they build the argument list here, so a flag is spelled
in one place.

A command line is world-readable (``ps``, ``/proc/<pid>/cmdline``), so a
broker URL with a password never goes on one: :func:`worker_launch` gives the
arguments without the broker, and the environment that carries it
(``FLEET_BROKER``, which only the user running the worker can read).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet.redact import redact_url

BROKER_ENV = "FLEET_BROKER"
"""The environment variable a worker reads its broker URL from."""


def worker_command(*, python: str | None = None, log_level: str | None = None) -> list[str]:
    """``python -m fleetctl [--log-level L] worker`` with this interpreter."""
    argv = [python or sys.executable, "-m", "fleetctl"]
    if log_level is not None:
        argv += ["--log-level", log_level]
    return [*argv, "worker"]


def releases_sigterm(command: Sequence[str]) -> bool:
    """Whether ``command`` is ``python -m fleetctl ...``: a process that may be
    started with SIGTERM blocked, since it unblocks it once its handler is set
    (``fleetctl/__main__.py``). A SIGTERM that comes while the interpreter
    itself still starts then waits for that handler (exit 0), where unblocked
    it would kill the process (-15). Another command may never unblock it."""
    return len(command) >= 3 and list(command[1:3]) == ["-m", "fleetctl"]


def worker_argv(
    *,
    broker: str | None,
    models: str | Path,
    worker_id: str,
    http_port: int = 0,
    command: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The full command that starts one worker: ``command`` (default
    :func:`worker_command`) with the broker (``None``: none, the worker reads
    ``FLEET_BROKER``), the repository, the worker's id and its HTTP port, then
    ``extra``. A broker URL given here is on the command line for everyone to
    read: :func:`worker_launch` keeps it off."""
    return [
        *(command if command is not None else worker_command()),
        *(["--broker", broker] if broker is not None else []),
        "--models",
        str(models),
        "--worker-id",
        worker_id,
        "--http-port",
        str(http_port),
        *extra,
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerLaunch:
    """What starts one worker process: ``argv``, and ``env`` to add to the
    environment it inherits. Its ``repr`` shows the broker's password as ``***``."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)

    def __repr__(self) -> str:
        env = {k: redact_url(v) for k, v in self.env.items()}
        return f"WorkerLaunch(argv={self.argv!r}, env={env!r})"


def worker_launch(
    *,
    broker: str,
    models: str | Path,
    worker_id: str,
    http_port: int = 0,
    command: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> WorkerLaunch:
    """The command and environment that start one worker with the broker URL
    in ``FLEET_BROKER``, not on its command line (see :func:`worker_argv`)."""
    argv = worker_argv(
        broker=None,
        models=models,
        worker_id=worker_id,
        http_port=http_port,
        command=command,
        extra=extra,
    )
    return WorkerLaunch(argv=argv, env={BROKER_ENV: broker})


__all__ = [
    "BROKER_ENV",
    "WorkerLaunch",
    "releases_sigterm",
    "worker_argv",
    "worker_command",
    "worker_launch",
]
