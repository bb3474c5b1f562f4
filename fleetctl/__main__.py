"""``python -m fleetctl``: the ``fleet`` command line."""

import signal
import sys

from fleetctl import stop_before_start

signal.signal(signal.SIGTERM, stop_before_start)  # before the imports, which take a while

from fleetctl.cli import main  # noqa: E402

sys.exit(main())
