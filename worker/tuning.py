"""Process-wide settings for a process whose main job is serving a worker.

Nothing in the worker changes process-wide state on its own: constructing or
starting a :class:`~worker.service.Worker` leaves the interpreter as it was
(tests and benchmarks run several workers, or a worker beside other code, in
one process). A program that *is* a worker (``fleet worker``, the demo) calls
:func:`tune_process_for_serving` once at start.
"""

from __future__ import annotations

import sys

#: The interpreter's thread switch interval a serving process uses, in seconds.
SERVING_SWITCH_INTERVAL = 0.0005


def tune_process_for_serving() -> None:
    """Shorten the interpreter's thread switch interval to at most 0.5 ms.

    Model runs finish on an executor thread that needs the GIL back to return
    its result; with the default 5 ms switch interval, a busy event loop makes
    every batch wait that long. 0.5 ms keeps the handoff short. A shorter
    interval already set is kept.
    """
    if sys.getswitchinterval() > SERVING_SWITCH_INTERVAL:
        sys.setswitchinterval(SERVING_SWITCH_INTERVAL)


__all__ = ["SERVING_SWITCH_INTERVAL", "tune_process_for_serving"]
