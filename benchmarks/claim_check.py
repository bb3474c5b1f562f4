"""What the claim check costs: a request and its reply of N MB in the broker
message against the same through a payload store, in the same run.

    .venv/bin/python benchmarks/claim_check.py [--broker URL] [--sizes 1,4,16,48]
        [--repeat 5] [--store file|s3]

One worker (in this process) serves a model that doubles a float32 input
``[n, 262144]`` (1 MiB a row), so the reply is as large as the request. For
each size, ``--repeat`` calls are made inline (the whole request and reply in
the broker messages; only where the broker's limit allows) and ``--repeat``
through the claim check (``--store``: a local directory, or ``s3://`` on moto's
server from FLEET_TEST_AWS_URL). Printed per size: the median call time of
each, the claim check's time as a multiple of inline, and its extra
milliseconds per MB of request (request and reply both go through the store).

The broker defaults to ``memory://`` (no broker process: the store's cost
alone); ``--broker amqp://...`` measures on RabbitMQ. Loopback only; bounded.
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
from tests.jobs.conftest import build_doubler  # noqa: E402
from worker.service import Worker, WorkerSettings  # noqa: E402

WIDTH = 1 << 18  # float32: 1 MiB a row


def _s3_store(name: str) -> str:
    import boto3

    url = os.environ.get("FLEET_TEST_AWS_URL", "http://127.0.0.1:5055")
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=url,
    )
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/claims"


async def _calls(client: Client, model: str, x: np.ndarray, repeat: int) -> list[float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        got = await client.infer(model, {"x": x}, timeout=300)
        took.append(time.perf_counter() - started)
        assert got["y"].shape == x.shape
    return took


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="claim-bench-"))
    build_doubler(work / "models", "big", WIDTH)
    store = _s3_store(f"claim-bench-{os.getpid()}") if args.store == "s3" else f"file://{work}/b"
    settings = WorkerSettings(
        broker=args.broker,
        models=work / "models",
        payloads=store,
        claim_threshold=1 << 20,
        http_port=None,
        max_message_bytes=1 << 30,
    )
    worker = Worker(settings)
    await worker.start()
    inline = Client(args.broker, max_message_bytes=1 << 30)
    claimed = Client(args.broker, payloads=store, claim_threshold=1 << 10)
    limit = inline.max_message_bytes
    print(f"broker {args.broker.split('@')[-1]}, store {args.store}, {args.repeat} calls each")
    print(f"{'MB':>5} {'inline ms':>10} {'claim ms':>10} {'ratio':>6} {'extra ms/MB':>12}")
    async with inline, claimed:
        for mb in args.sizes:
            x = np.random.default_rng(mb).standard_normal((mb, WIDTH), dtype=np.float32)
            await _calls(claimed, "big", x, 1)  # warm
            via_store = statistics.median(await _calls(claimed, "big", x, args.repeat)) * 1e3
            fits = x.nbytes + 4096 < limit
            direct = (
                statistics.median(await _calls(inline, "big", x, args.repeat)) * 1e3
                if fits
                else None
            )
            if direct is None:
                print(f"{mb:>5} {'over limit':>10} {via_store:>10.1f}")
                continue
            extra = (via_store - direct) / (x.nbytes / 1e6)
            ratio = via_store / direct
            print(f"{mb:>5} {direct:>10.1f} {via_store:>10.1f} {ratio:>6.2f} {extra:>12.2f}")
    await worker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="memory://claim-bench")
    parser.add_argument(
        "--sizes", default="1,4,16,48", type=lambda v: [int(s) for s in v.split(",")]
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", choices=["file", "s3"], default="file")
    asyncio.run(main(parser.parse_args()))
