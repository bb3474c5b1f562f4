"""``fleet demo``: workers plus a traffic run with a live display and a summary.

On ``memory://`` everything runs in this process (no services needed). On a
real broker the workers run as ``fleet worker`` subprocesses, the broker URL
in their environment (never on their command lines, which ``ps`` shows).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.errors import ConfigError, FleetError, ModelNotFound
from fleet.redact import redact_url
from fleet.settings import BROKER, resolve_password
from fleet.worker_command import worker_command, worker_launch
from fleetctl.formatting import DEFAULT_MODELS, HelpFormatter, Subparsers

if TYPE_CHECKING:
    from producer.loadgen import LoadResult


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run workers and drive traffic through them, with live progress",
        description="One command, no services needed: an embedded broker, the demo models "
        "(built if missing), workers, and a traffic run with a live display and a summary.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--broker", default="memory://demo", help="broker URL")
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="model repository")
    p.add_argument("--model", default="digits", help="model to drive traffic to")
    p.add_argument("--workers", type=int, default=1, help="workers to start")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument(
        "--rate", type=float, default=None, help="offered requests/s (default: as fast as answered)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from worker.tuning import tune_process_for_serving

    if args.broker.startswith("memory://"):
        tune_process_for_serving()  # the workers run in this process
    summary = asyncio.run(
        run_demo(
            broker=args.broker,
            models=args.models,
            model=args.model,
            workers=args.workers,
            duration=args.duration,
            concurrency=args.concurrency,
            rate=args.rate,
            timeout=args.timeout,
        )
    )
    return 0 if summary.lost == 0 else 1


def _input_width(models: Path, model: str) -> int:
    import onnx

    versions = sorted((models / model).glob("*/model.onnx"))
    if not versions:
        raise ModelNotFound(f"no model {model!r} under {models}")
    graph = onnx.load(str(versions[-1]), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ConfigError(f"the demo drives models with one [n, width] input; {model!r} is not one")
    return int(dims[1].dim_value)


@contextlib.asynccontextmanager
async def _workers(broker: str, models: Path, count: int) -> AsyncIterator[None]:
    if broker.startswith("memory://"):
        from worker.service import Worker, WorkerSettings

        workers = [
            Worker(
                WorkerSettings(broker=broker, models=models, worker_id=f"demo-{i}", http_port=None)
            )
            for i in range(count)
        ]
        await asyncio.gather(*(w.start() for w in workers))
        try:
            yield
        finally:
            await asyncio.gather(*(w.stop() for w in workers))
        return
    procs = await spawn_workers(broker, models, count)
    try:
        await wait_model_served(broker, _first_model(models))
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 60)
            except TimeoutError:
                p.kill()
                await p.wait()


async def spawn_workers(
    broker: str, models: Path, count: int, *, command: list[str] | None = None
) -> list[asyncio.subprocess.Process]:
    """Start ``count`` worker processes (``demo-0``, ...); the broker URL goes
    in their environment, not on their command lines."""
    command = command or worker_command(log_level="WARNING")
    launches = [
        worker_launch(broker=broker, models=models, worker_id=f"demo-{i}", command=command)
        for i in range(count)
    ]
    return [
        await asyncio.create_subprocess_exec(*w.argv, env={**os.environ, **w.env}) for w in launches
    ]


def _first_model(models: Path) -> str:
    return sorted(p.name for p in models.iterdir() if p.is_dir())[0]


async def wait_model_served(broker: str, name: str, timeout: float = 120.0) -> None:
    """Wait until a worker has declared the model's queues (it is then warm)."""
    from fleet.transport import connect

    async with connect(broker) as t:
        end = time.monotonic() + timeout
        while True:
            try:
                depth = await t.depth(name)
                if depth.consumers is None or depth.consumers > 0:
                    return
            except FleetError:
                pass
            if time.monotonic() > end:
                raise ConfigError(f"no worker served {name!r} within {timeout:.0f}s")
            await asyncio.sleep(0.5)


async def run_demo(
    *,
    broker: str,
    models: Path,
    model: str,
    workers: int,
    duration: float,
    concurrency: int,
    rate: float | None,
    timeout: float,
) -> LoadResult:
    from producer import Client
    from producer.loadgen import drive, random_inputs
    from worker.zoo import build_all

    broker = resolve_password(broker, BROKER)  # a URL naming only the user: FLEET_BROKER_PASSWORD
    out = sys.stderr
    if not await asyncio.to_thread((models / model).exists):
        print(f"building the demo models in {models}/ ...", file=out)
        await asyncio.to_thread(build_all, models)
    width = await asyncio.to_thread(_input_width, models, model)
    tty = out.isatty()

    def progress(r: LoadResult) -> None:
        line = f"[{r.seconds:5.1f}s] {r.line()}"
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)

    print(f"starting {workers} worker(s) on {redact_url(broker)} ...", file=out)
    async with _workers(broker, models, workers), Client(broker, timeout=timeout) as client:
        mode = f"{rate:g} req/s offered" if rate else f"{concurrency} in flight"
        print(f"driving {model!r} for {duration:g}s ({mode})", file=out)
        result = await drive(
            client,
            model,
            random_inputs(width),
            duration=duration,
            concurrency=concurrency,
            rate=rate,
            timeout=timeout,
            on_progress=progress,
        )
    if tty:
        print(file=out)
    errors = ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none"
    print(
        f"\nsummary: {result.ok} answered in {result.seconds:.1f}s = {result.rps:.1f} req/s\n"
        f"  latency p50 {result.percentile(50) * 1e3:.2f} ms, "
        f"p99 {result.percentile(99) * 1e3:.2f} ms\n"
        f"  mean batch size {result.mean_batch:.1f}\n"
        f"  errors: {errors}\n"
        f"  lost: {result.lost}"
    )
    return result


__all__ = ["add_commands", "run_demo", "spawn_workers", "wait_model_served"]
