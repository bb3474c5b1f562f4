"""What a Kafka client's reply path costs: one shared reply topic against a topic
per client, in the same run, against the same worker.

    .venv/bin/python benchmarks/replies.py [--clients 8,32] [--requests 200]
        [--in-flight 4]

For each inbox kind (``inbox=topic``: a topic per client, created at start and
deleted at close; ``inbox=shared``: a partition of ``fleet.replies``, keyed by
address) and each client count, ``--clients`` clients (one process, a transport
each) send ``--requests`` requests each to one ``fleet worker`` (mlp), at most
``--in-flight`` at a time per client. Printed per kind: the time a client takes
to start (connect and open its inbox), the p50 and p99 of a request, the bytes
each client reads from the broker for its replies as a multiple of its own
replies' bytes, and the inbox topics a crashed client leaves behind (a client
abandoned without ``close``). Ratios are shared against topic, same run.

The broker comes from FLEET_TEST_KAFKA_URL, else scripts/kafka.sh starts it.
Traffic goes to loopback only; every run is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from benchmarks.request_path import _service, stop_process  # noqa: E402
from fleet.transport.kafka import INBOX_PREFIX  # noqa: E402
from fleet.worker_command import worker_argv, worker_command  # noqa: E402
from fleetctl.demo import wait_model_served  # noqa: E402
from producer import Client  # noqa: E402
from worker.zoo import build_all  # noqa: E402

MODEL, WIDTH = "mlp", 256


async def _inbox_topics(url: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=url.split("://", 1)[1].split("/")[0])
    await admin.start()
    try:
        return {t for t in await admin.list_topics() if t.startswith(INBOX_PREFIX)}
    finally:
        await admin.close()


async def _settled(url: str, before: set[str]) -> set[str]:
    """The inbox topics that stay (deletion is asynchronous: up to 10 s)."""
    left = await _inbox_topics(url) - before
    for _ in range(20):
        await asyncio.sleep(0.5)
        now = await _inbox_topics(url) - before
        if now == left:
            break
        left = now
    return left


async def _delete(url: str, topics: set[str]) -> None:
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=url.split("://", 1)[1].split("/")[0])
    await admin.start()
    try:
        await admin.delete_topics(sorted(topics))
    finally:
        await admin.close()


async def _one_client(client: Client, requests: int, in_flight: int) -> list[float]:
    x = np.random.default_rng(0).standard_normal((1, WIDTH)).astype(np.float32)
    took: list[float] = []
    sem = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with sem:
            t0 = time.perf_counter()
            await client.infer(MODEL, {"input": x})
            took.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(requests)))
    return took


async def run(url: str, kind: str, clients: int, requests: int, in_flight: int) -> dict[str, Any]:
    sep = "&" if "?" in url else "/?"
    before = await _inbox_topics(url)
    made = [Client(f"{url}{sep}inbox={kind}", timeout=60) for _ in range(clients)]
    t0 = time.perf_counter()
    await asyncio.gather(*(c.connect() for c in made))
    start_s = (time.perf_counter() - t0) / clients
    took = await asyncio.gather(*(_one_client(c, requests, in_flight) for c in made))
    latencies = [t for per in took for t in per]
    tails = [c.transport._inboxes[c._reply_to] for c in made]  # type: ignore[attr-defined]
    read = [t.read_bytes for t in tails]
    own = [t.kept_bytes for t in tails]
    crashed = made.pop()  # abandoned, as a killed process would leave it
    await asyncio.gather(*(c.close() for c in made))
    for tail in crashed.transport._inboxes.values():  # type: ignore[attr-defined]
        await tail.cancel()
    await crashed.transport._stop_clients()  # type: ignore[attr-defined]
    left = await _settled(url, before)
    await _delete(url, left)  # what an operator would have to clean up
    return {
        "start_ms": 1000 * start_s,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "read_x": float(np.mean(read)) / max(1.0, float(np.mean(own))),
        "read_max_x": max(r / max(1.0, o) for r, o in zip(read, own, strict=True)),
        "kib_per_client": float(np.mean(read)) / 1024,
        "left_behind": len(left),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", default="8,32", help="client counts, comma-separated")
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    ap.add_argument("--in-flight", type=int, default=4, help="requests in flight per client")
    ap.add_argument("--models", type=Path, default=ROOT / ".cache" / "bench-models")
    args = ap.parse_args()
    build_all(args.models)
    started: list[str] = []
    url = _service("kafka", "FLEET_TEST_KAFKA_URL", started)
    worker = subprocess.Popen(
        worker_argv(
            broker=url,
            models=args.models,
            worker_id="bench-replies",
            command=worker_command(log_level="WARNING"),
        )
    )
    try:
        asyncio.run(wait_model_served(url, MODEL))
        asyncio.run(run(url, "shared", 2, 20, 2))  # warm the worker and the topic
        print(
            f"{'clients':>7} {'inbox':>6} {'start ms':>9} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'read/own':>9} {'max':>5} {'KiB/client':>10} {'topics left':>11}"
        )
        for n in [int(c) for c in args.clients.split(",")]:
            res = {
                k: asyncio.run(run(url, k, n, args.requests, args.in_flight))
                for k in ("topic", "shared")
            }
            for kind, r in res.items():
                print(
                    f"{n:>7} {kind:>6} {r['start_ms']:>9.1f}"
                    f" {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['read_x']:>9.2f}"
                    f" {r['read_max_x']:>5.1f} {r['kib_per_client']:>10.1f}"
                    f" {r['left_behind']:>11}"
                )
            s, t = res["shared"], res["topic"]
            print(
                f"{n:>7} shared/topic: start {s['start_ms'] / t['start_ms']:.2f}x,"
                f" p50 {s['p50_ms'] / t['p50_ms']:.2f}x, p99 {s['p99_ms'] / t['p99_ms']:.2f}x,"
                f" bytes read {s['kib_per_client'] / max(1e-9, t['kib_per_client']):.2f}x"
            )
    finally:
        stop_process(worker, 60)
        for name in started:
            subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
