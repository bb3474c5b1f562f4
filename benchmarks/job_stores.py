"""Result stores side by side: what a job's life costs in each, in the same run.

    .venv/bin/python benchmarks/job_stores.py [--jobs 300] [--concurrency 32]

A job's life in a store is four calls: ``create`` (the client), ``start`` and
``finish`` (the worker), ``get`` (whoever reads the result, once). For each
store: the p50 and p99 of one life run alone (ms), and lives per second with
``--concurrency`` at once; then each store against Redis.

Stores: ``memory://`` (in this process: the floor), Redis
(``FLEET_TEST_REDIS_URL``; ``scripts/redis.sh start`` prints it) and S3
(``FLEET_TEST_AWS_URL``, moto's server: ``scripts/moto.sh start``). moto is a
Python process on loopback, so its figures are not AWS's (an S3 request there
takes tens of ms); what they show is the number of requests a life costs
(S3: six, each change reading before its conditional write) against Redis's four. Loopback
only; bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.jobs import ResultStore, new_job_id, open_store  # noqa: E402

RESULT = b"r" * 2048  # a small reply frame


async def _life(store: ResultStore) -> None:
    job = new_job_id()
    await store.create(job, model="digits")
    assert await store.start(job)
    assert await store.finish(job, ok=True, result=RESULT)
    record = await store.get(job)
    assert record is not None and record.result == RESULT


async def _measure(store: ResultStore, jobs: int, concurrency: int) -> tuple[float, float, float]:
    took = []
    for _ in range(jobs):
        started = time.perf_counter()
        await _life(store)
        took.append((time.perf_counter() - started) * 1e3)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await _life(store)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    rate = jobs / (time.perf_counter() - started)
    p99 = statistics.quantiles(took, n=100)[98]
    return statistics.median(took), p99, rate


def _s3_url() -> str | None:
    endpoint = os.environ.get("FLEET_TEST_AWS_URL")
    if not endpoint:
        return None
    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    bucket = f"bench-jobs-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/bench"


async def main(args: argparse.Namespace) -> None:
    stores = {"memory": f"memory://bench-{uuid.uuid4().hex[:6]}"}
    if os.environ.get("FLEET_TEST_REDIS_URL"):
        stores["redis"] = os.environ["FLEET_TEST_REDIS_URL"]
    s3 = _s3_url()
    if s3:
        stores["s3 (moto)"] = s3
    results = {}
    for name, url in stores.items():
        async with open_store(url) as store:
            await _measure(store, 20, 4)  # warm up: connections, first requests
            results[name] = await _measure(store, args.jobs, args.concurrency)
        p50, p99, rate = results[name]
        print(f"{name:10} life p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  {rate:8.0f} lives/s")
    if "redis" in results:
        base = results["redis"]
        for name, (p50, _, rate) in results.items():
            print(f"{name:10} vs redis: p50 {p50 / base[0]:.2f}x  lives/s {rate / base[2]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
