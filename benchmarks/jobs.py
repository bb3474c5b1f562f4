"""Batch runs against the online path, and cache hits against misses, on the
same worker in the same run.

    .venv/bin/python benchmarks/jobs.py [--broker URL] [--rows 200000]
        [--cache memory|redis] [--requests 2000]

1. Rows/s: ``run_batch`` (64-row chunks, 32 in flight) over ``--rows`` digits
   rows, against the online path: the same rows as one-row ``client.infer``
   calls, 64 in flight. Ratio: batch over online.
2. Latency: ``--requests`` one-row calls with a result cache (the worker fills
   it), first over distinct inputs (misses), then the same inputs again
   (hits). p50 and p99 of each, and hits over misses.

The broker defaults to ``memory://`` (no broker process); ``--broker
amqp://...`` measures on RabbitMQ. ``--cache redis`` uses FLEET_TEST_REDIS_URL
(``scripts/redis.sh start`` prints it). Loopback only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer import Client  # noqa: E402
from producer.batch import run_batch  # noqa: E402
from worker.service import Worker, WorkerSettings  # noqa: E402
from worker.zoo import build_all  # noqa: E402


async def _online(client: Client, x: np.ndarray, in_flight: int) -> float:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            await client.infer("digits", {"input": x[i : i + 1]}, timeout=60)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(x))))
    return len(x) / (time.perf_counter() - started)


async def _latencies(client: Client, x: np.ndarray) -> list[float]:
    took = []
    for i in range(len(x)):
        started = time.perf_counter()
        await client.infer("digits", {"input": x[i : i + 1]}, timeout=60)
        took.append((time.perf_counter() - started) * 1e3)
    return took


def _pct(values: list[float], q: int) -> float:
    return float(np.percentile(values, q))


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    models = ROOT / ".cache" / "bench-models"
    build_all(models)
    cache = os.environ["FLEET_TEST_REDIS_URL"] if args.cache == "redis" else "memory://jobs-bench"
    worker = Worker(WorkerSettings(broker=args.broker, models=models, cache=cache, http_port=None))
    await worker.start()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.rows, 64), dtype=np.float32)
    np.save(work / "rows.npy", x)
    async with Client(args.broker, max_in_flight=1000) as client:
        await _online(client, x[:2000], 64)  # warm
        started = time.perf_counter()
        summary = await run_batch(client, "digits", work / "rows.npy", work / "out")
        batch = summary.rows / (time.perf_counter() - started)
        online = await _online(client, x, 64)
    print(f"rows/s: batch run {batch:,.0f}, online {online:,.0f}, ratio {batch / online:.1f}x")
    distinct = rng.standard_normal((args.requests, 64), dtype=np.float32)
    async with Client(args.broker, cache=cache) as client:
        misses = await _latencies(client, distinct)
        await asyncio.sleep(1.0)  # the worker's fills land
        hits = await _latencies(client, distinct)
        ratio = client.stats.cache_hits / max(1, len(hits))
    print(
        f"latency ms ({args.cache} cache, {args.requests} calls each):"
        f" miss p50 {statistics.median(misses):.2f} p99 {_pct(misses, 99):.2f};"
        f" hit p50 {statistics.median(hits):.2f} p99 {_pct(hits, 99):.2f};"
        f" hit/miss p50 {statistics.median(hits) / statistics.median(misses):.2f}x;"
        f" hits {ratio:.0%} of the second pass"
    )
    await worker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="memory://jobs-bench")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cache", choices=["memory", "redis"], default="memory")
    asyncio.run(main(parser.parse_args()))
