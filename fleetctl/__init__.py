"""fleetctl: the composition root of the inference fleet.

The only package that imports :mod:`producer`, :mod:`worker` and
:mod:`autoscaler` together: the ``fleet`` command line and its subcommands,
the demo, the simulator's commands and ``recommend``. The kernel
(:mod:`fleet`) and the three parts above it know nothing of this package.
"""

import contextlib
import os
import sys


def stop_before_start(signum: int, frame: object) -> None:
    """SIGTERM while a command is still importing or setting up (a worker
    stopped while it boots): nothing has started, so nothing is lost; exit 0.
    Installed by ``python -m fleetctl`` before anything heavy is imported, and
    by :func:`fleetctl.cli.main`; a command that serves replaces it.

    The process ends at once (``os._exit``) rather than by raising
    ``SystemExit``: raised in the middle of an extension module's import, an
    exception becomes that import's ``ImportError`` and the exit status 1."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # interrupted in the middle of a write
            stream.flush()
    os._exit(0)
