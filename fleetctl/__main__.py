"""``python -m fleetctl``: the ``fleet`` command line."""

import signal
import sys

from fleetctl import stop_before_start

signal.signal(signal.SIGTERM, stop_before_start)  # before the imports, which take a while
# a launcher may start us with SIGTERM blocked, to cover the interpreter's own
# start-up (fleet.worker_command.releases_sigterm): one sent meanwhile comes now
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

from fleetctl.cli import main  # noqa: E402

sys.exit(main())
