"""The garbage collector's pauses under load, with the heap frozen and without.

    .venv/bin/python benchmarks/gc_pauses.py [--broker amqp] [--model digits]
        [--rate 2000] [--duration 10] [--rounds 2]

Each run is one process holding a worker (run by ``fleet worker``'s own
``serve``, its models loaded) and a client offering open-loop Poisson traffic
at ``--rate`` to it over a real broker (one process serves and sends, so it
saturates at about half the rate two processes do). ``gc.callbacks`` time every
collection on the thread's CPU clock (not the wall clock: a process the
machine's other work preempts mid-collection would count that wait), per
generation. The runs alternate: the heap frozen once the worker serves
(:func:`fleet.heap.freeze_heap`, what ``fleet worker`` does) and not frozen,
``--rounds`` times each; printed per run and as ratios of the medians.
Traffic goes to loopback only and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.arrivals import poisson  # noqa: E402
from benchmarks.latency import WIDTH  # noqa: E402
from benchmarks.request_path import _service  # noqa: E402


class Pauses:
    """Each collection's CPU time, per generation."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.times[info["generation"]].append(time.thread_time() - self._start)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from fleet.transport.base import wait_until
    from fleetctl.worker_cmd import serve
    from producer import Client
    from worker.service import Worker, WorkerSettings

    settings = WorkerSettings(broker=args.url, models=args.models, worker_id="gc", http_port=0)
    worker, stop = Worker(settings), asyncio.Event()
    serving = asyncio.ensure_future(serve(worker, stop, freeze=args.freeze))
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((256, WIDTH[args.model])).astype(np.float32)
    lat: list[float] = []
    try:
        await wait_until(lambda: worker.state == "ready" or serving.done(), 120)
        if serving.done():
            await serving  # raises why the worker did not start
        if worker.state != "ready":
            raise RuntimeError("the worker did not start within 120 s")
        async with Client(args.url, timeout=30, max_in_flight=100_000) as client:
            for i in range(200):  # warm the path
                await client.infer(args.model, {"input": pool[i % 256 : i % 256 + 1]})
            pauses = Pauses()
            gc.callbacks.append(pauses)

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                await client.infer(args.model, {"input": pool[i % 256 : i % 256 + 1]})
                lat.append(time.perf_counter() - t0)

            await poisson(one, rng, args.rate, args.duration)
            gc.callbacks.remove(pauses)
    finally:
        stop.set()
        await serving
    return {"gen": {str(g): t for g, t in pauses.times.items()}, "lat": lat}


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(_run(args))))


def _one_run(args: argparse.Namespace, url: str, freeze: bool) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", "--url", url, "--model", args.model]
    argv += ["--rate", str(args.rate), "--duration", str(args.duration)]
    argv += ["--models", str(args.models)] + (["--freeze"] if freeze else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=args.duration + 300, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"run failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _summary(run: dict[str, Any]) -> dict[str, float]:
    gen2 = np.array(run["gen"]["2"]) * 1000
    young = (sum(run["gen"]["0"]) + sum(run["gen"]["1"])) * 1000
    lat = np.array(run["lat"]) * 1000
    return {
        "gen2 n": float(len(gen2)),
        "gen2 max ms": float(gen2.max()) if len(gen2) else 0.0,
        "gen2 total ms": float(gen2.sum()),
        "gen0+1 total ms": young,
        "p50 ms": float(np.percentile(lat, 50)),
        "p99 ms": float(np.percentile(lat, 99)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--broker", default="amqp", choices=["amqp", "kafka"])
    ap.add_argument("--model", default="digits", choices=sorted(WIDTH))
    ap.add_argument("--rate", type=float, default=2000.0, help="offered requests/s")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each mode")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return 0
    started: list[str] = []
    var = "FLEET_TEST_AMQP_URL" if args.broker == "amqp" else "FLEET_TEST_KAFKA_URL"
    try:
        url = _service("rabbitmq" if args.broker == "amqp" else "kafka", var, started)
        from worker.zoo import build_all

        build_all(args.models)
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        print(f"== {args.model} over {args.broker}, {args.rate:.0f} req/s, one process")
        for _ in range(args.rounds):
            for freeze in (False, True):
                s = _summary(_one_run(args, url, freeze))
                runs[freeze].append(s)
                cells = "  ".join(f"{k} {v:8.2f}" for k, v in s.items())
                print(f"  {'frozen' if freeze else 'not frozen':>10}  {cells}", flush=True)
        print("  frozen / not frozen (medians):")
        for key in runs[False][0]:
            a = float(np.median([r[key] for r in runs[True]]))
            b = float(np.median([r[key] for r in runs[False]]))
            print(f"    {key:>16}: {a:9.2f} / {b:9.2f} = {a / b if b else float('nan'):.2f}x")
    finally:
        for name in started:
            subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
