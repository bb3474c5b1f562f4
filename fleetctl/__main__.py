"""``python -m fleetctl``: the ``fleet`` command line."""

import signal
import sys


def _stop_before_start(signum: int, frame: object) -> None:
    # SIGTERM while the command is still importing (a worker stopped while it
    # boots): nothing has started, so there is nothing to drain; exit cleanly.
    raise SystemExit(0)


signal.signal(signal.SIGTERM, _stop_before_start)

from fleetctl.cli import main  # noqa: E402  (after the handler: imports take a while)

sys.exit(main())
