"""The ``fleet`` command line on a host whose wall clock is set wrong:

    python -m tests.chaos.skewed_clock SECONDS worker --broker ...

``time.time`` and ``time.time_ns`` read ``SECONDS`` ahead of the real clock
(behind, when negative) for the whole process; the monotonic clock is left as
it is, as on a host whose clock was set wrong. Used to run a worker with a
clock skewed against its clients.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    offset = float(argv[0])
    real, real_ns = time.time, time.time_ns
    time.time = lambda: real() + offset
    time.time_ns = lambda: real_ns() + int(offset * 1e9)
    from fleetctl.cli import main as fleet_main

    return fleet_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
