"""The ``fleet`` command line: every subcommand, registered statically.

Each command module registers its parsers with ``add_commands(sub)``; heavy
libraries (ONNX Runtime, the broker clients, NumPy, matplotlib) are imported
by the handlers, so ``fleet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from fleet import __version__
from fleet.errors import FleetError
from fleet.logging import configure
from fleetctl import (
    autoscaler_cmd,
    batch_cmd,
    demo,
    jobs_cmd,
    models_cmd,
    simulate_cmd,
    stop_before_start,
    topology_cmd,
    worker_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="An asynchronous, queue-driven inference fleet: clients publish requests to "
        "RabbitMQ or Kafka, batching ONNX Runtime workers answer, an autoscaler follows traffic.",
    )
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", choices=("json", "console"), default="json", help="log line format"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_commands(sub)
    worker_cmd.add_commands(sub)
    models_cmd.add_commands(sub)
    autoscaler_cmd.add_commands(sub)
    simulate_cmd.add_commands(sub)
    topology_cmd.add_commands(sub)
    batch_cmd.add_commands(sub)
    jobs_cmd.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A SIGTERM that arrives before the command has set up its
    own handling (a worker stopped while it still loads) ends it with 0:
    nothing has started, so nothing is lost."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop_before_start)
    args = build_parser().parse_args(argv)
    configure(level=args.log_level, json=args.log_format == "json")
    try:
        return int(args.handler(args))
    except FleetError as exc:
        print(f"fleet {args.command}: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
