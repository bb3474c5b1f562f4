"""``fleet jobs``: a job's state, its result, or its cancellation, by id.

Reads the result store only (no broker): ``--results`` or ``$FLEET_RESULTS``,
its password from ``FLEET_RESULTS_PASSWORD[_FILE]``. ``status`` prints the
job's record as JSON; ``result`` waits up to ``--timeout`` seconds for it to
end and prints its outputs' names, types and shapes (``--out FILE.npz`` saves
them) or its typed error (exit 1); ``cancel`` cancels an open job (exit 1 if
it had ended). ``watch DESTINATION --broker URL`` prints the notifications of
finished jobs that workers started with ``--notify DESTINATION`` publish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from fleet.errors import ConfigError, FleetError
from fleetctl.formatting import HelpFormatter, Subparsers


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser(
        "jobs", help="a job's state, result or cancellation, by id; notifications"
    )
    inner = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    for name, text in (
        ("status", "print a job's state as JSON"),
        ("result", "wait for a job and print (or save) its outputs"),
        ("cancel", "cancel an open job"),
    ):
        p = inner.add_parser(name, help=text, description=__doc__, formatter_class=HelpFormatter)
        p.add_argument("job_id", help="the id submit returned")
        p.add_argument(
            "--results",
            default=os.environ.get("FLEET_RESULTS"),
            help="result store URL (default: $FLEET_RESULTS)",
        )
        if name == "result":
            p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
            p.add_argument("--out", help="save the outputs to this .npz file")
        p.set_defaults(handler=run)
    watch = inner.add_parser(
        "watch",
        help="print finished jobs' notifications as JSON lines",
        description="Print the notifications that workers started with --notify DESTINATION "
        "publish, one JSON line each, from now on (at least once: an id may come twice).",
        formatter_class=HelpFormatter,
    )
    watch.add_argument("destination", help="the workers' --notify destination")
    watch.add_argument(
        "--broker",
        default=os.environ.get("FLEET_BROKER"),
        help="broker URL (default: $FLEET_BROKER; its password from FLEET_BROKER_PASSWORD)",
    )
    watch.add_argument("--count", type=int, help="exit 0 after this many (default: never)")
    watch.add_argument("--timeout", type=float, help="exit 1 when none comes for this many seconds")
    watch.set_defaults(handler=run_watch)


async def _watch(args: argparse.Namespace) -> int:
    from producer import JobEvents

    seen = 0
    async with JobEvents(args.broker, args.destination) as events:
        print(f"watching {args.destination}", file=sys.stderr, flush=True)
        while args.count is None or seen < args.count:
            try:
                event = await events.get(timeout=args.timeout)
            except FleetError as exc:
                print(f"{type(exc).__name__}: {exc.message}", file=sys.stderr)
                return 1
            print(event.encode().decode(), flush=True)
            seen += 1
    return 0


def run_watch(args: argparse.Namespace) -> int:
    if not args.broker:
        raise ConfigError("name the broker: --broker URL or $FLEET_BROKER")
    return asyncio.run(_watch(args))


async def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from producer import Jobs

    async with Jobs(args.results) as jobs:
        if args.jobs_command == "status":
            s = await jobs.status(args.job_id)
            record = {
                "id": s.id,
                "state": s.state.value,
                "model": s.model,
                "submitted_at": s.submitted_at,
                "updated_at": s.updated_at,
                "attempts": s.attempts,
                "error": None if s.error is None else repr(s.error),
            }
            print(json.dumps(record))
            return 0
        if args.jobs_command == "cancel":
            cancelled = await jobs.cancel(args.job_id)
            print("cancelled" if cancelled else "not open: nothing cancelled")
            return 0 if cancelled else 1
        try:
            outputs = await jobs.result(args.job_id, timeout=args.timeout)
        except FleetError as exc:
            print(f"{type(exc).__name__}: {exc.message}", file=sys.stderr)
            return 1
        for name, value in outputs.items():
            print(f"{name}: {value.dtype} {list(value.shape)}")
        if args.out:
            np.savez(args.out, **outputs)  # type: ignore[arg-type]
        return 0


def run(args: argparse.Namespace) -> int:
    if not args.results:
        raise ConfigError("name the result store: --results URL or $FLEET_RESULTS")
    return asyncio.run(_run(args))
