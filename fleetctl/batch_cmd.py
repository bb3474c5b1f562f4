"""``fleet batch run``: a large input file through the fleet, resumable.

Streams every row of an ``.npy``/``.npz``/``.parquet`` file through the fleet at ``batch``
priority, a chunk of rows per request and a bounded number of requests in
flight, into one ``.npy`` per model output in the output directory (row ``i``
answers input row ``i``). Memory stays bounded: inputs stored uncompressed
and the outputs are memory-mapped. Run it again on the same output directory
after an interruption and it skips the chunks already done. Prints progress
to stderr and a summary (rows/s, errors by type) at the end; exits 1 when a
chunk failed (listed in ``errors.jsonl``; a later run tries it again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from fleet.errors import ConfigError
from fleet.settings import BROKER, resolve_password
from fleetctl.formatting import HelpFormatter, Subparsers


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    batch = sub.add_parser("batch", help="offline batch runs over large input files")
    inner = batch.add_subparsers(dest="batch_command", required=True, metavar="COMMAND")
    p = inner.add_parser(
        "run",
        help="stream an .npy/.npz/.parquet file through the fleet into .npy outputs (resumable)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--broker",
        default=os.environ.get(BROKER),
        help="broker URL (default: $FLEET_BROKER); a password from FLEET_BROKER_PASSWORD[_FILE]",
    )
    p.add_argument("--model", required=True, help="the model to run")
    p.add_argument(
        "--input",
        required=True,
        help="an .npy, .npz (one array per input) or .parquet file (list columns: inputs of "
        "their names; numeric columns: one input, --input-name), or s3://...",
    )
    p.add_argument("--output", required=True, help="the output directory (created if absent)")
    p.add_argument(
        "--input-name",
        default="input",
        help="the model input an .npy file or Parquet's numeric columns feed (default input)",
    )
    p.add_argument(
        "--chunk-rows", type=int, default=64, help="rows per request, at most the max batch (64)"
    )
    p.add_argument("--in-flight", type=int, default=32, help="requests awaiting replies (32)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    p.set_defaults(handler=run)


class _Progress:
    """A line on stderr: redrawn in place on a terminal, else every 10%."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.tenth = -1

    def __call__(self, done: int, total: int, rate: float) -> None:
        now = time.monotonic()
        tenth = done * 10 // max(total, 1)
        if self.tty and now - self.last < 0.2 and done < total:
            return
        if not self.tty and tenth == self.tenth:
            return
        self.last, self.tenth = now, tenth
        line = f"{done:,}/{total:,} rows ({100 * done / max(total, 1):.1f}%), {rate:,.0f} rows/s"
        print(f"\r{line}" if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from producer import Client
    from producer.batch import run_batch

    if not args.broker:
        raise ConfigError("name the broker: --broker URL or $FLEET_BROKER")
    broker = resolve_password(args.broker, BROKER)

    async def go() -> int:
        async with Client(broker, timeout=args.timeout, max_in_flight=args.in_flight) as client:
            summary = await run_batch(
                client,
                args.model,
                args.input,
                args.output,
                input_name=args.input_name,
                chunk_rows=args.chunk_rows,
                in_flight=args.in_flight,
                timeout=args.timeout,
                progress=_Progress(),
            )
        if sys.stderr.isatty():
            print(file=sys.stderr)
        errors = ", ".join(f"{n} {k}" for k, n in sorted(summary.errors.items())) or "none"
        print(
            f"{summary.rows:,} rows in {summary.seconds:.1f} s ({summary.rows_per_s:,.0f} rows/s); "
            f"{summary.skipped_rows:,} done before; {summary.total_rows:,} in all; "
            f"errors: {errors}"
        )
        return 0 if summary.complete else 1

    return asyncio.run(go())
