"""A publish's deadline: one timer for every publish against
``asyncio.timeout`` around each, on the Kafka producer and on a RabbitMQ
channel with confirms.

Publishes to a loopback broker, each confirm awaited, from one task at a
time (the way a request or a reply goes out at everyday load) and from
``--senders`` at once (a busy client), and measures the process's CPU per
publish in blocks of ``--sends`` that alternate between the two ways (the
order flipped every round, so a drift of the host's speed weighs on both).
Prints each way's median and the ratio of the one timer to
``asyncio.timeout``, median over the rounds' pairs.

    python benchmarks/send_deadline.py [--brokers kafka,amqp] [--senders 1,64]
        [--rounds 12] [--sends 1500]

Uses ``FLEET_TEST_KAFKA_URL`` and ``FLEET_TEST_AMQP_URL``, or starts
``scripts/kafka.sh`` and ``scripts/rabbitmq.sh`` (and stops what it started).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.library_floor import _kafka_wire, _wire, kafka_topics  # noqa: E402
from benchmarks.request_path import _service  # noqa: E402
from fleet.deadlines import Deadlines  # noqa: E402
from fleet.transport._kafka_wire import Producer  # noqa: E402

TOPIC = "fleet.bench.send-deadline"
TIMEOUT = 10.0  # seconds: never reached, only armed


async def _cpu_per_send(send: Callable[[], Awaitable[object]], n: int, senders: int = 1) -> float:
    """CPU us per publish of ``n`` publishes, made by ``senders`` tasks at once."""

    each = n // senders

    async def sender() -> None:
        for _ in range(each):
            await send()

    start = time.process_time()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return (time.process_time() - start) / (each * senders) * 1e6


async def measure_kafka(url: str, rounds: int, sends: int, senders: int) -> dict[str, list[float]]:
    await kafka_topics(url, [TOPIC])
    cluster = _kafka_wire(url, "bench")
    try:
        producer = Producer(cluster, timeout_ms=10_000)
        await producer.start()
        value = b"x" * 300  # about a small request's size

        async def per_send_timer() -> object:
            async with asyncio.timeout(TIMEOUT):
                return await producer.send(TOPIC, value, partition=0)

        async def one_timer() -> object:
            return await producer.send(TOPIC, value, partition=0, timeout=TIMEOUT)

        await _cpu_per_send(one_timer, 200)  # topic created, connection open, warm
        ways = {"asyncio.timeout": per_send_timer, "one timer": one_timer}
        return await _alternate(ways, rounds, sends, senders)
    finally:
        await cluster.close()


async def measure_amqp(url: str, rounds: int, sends: int, senders: int) -> dict[str, list[float]]:
    conn = await _wire(url)
    deadlines = Deadlines()
    try:
        channel = await conn.channel(confirms=True)
        # a queue of its own that keeps the last 1,000: publishes never pile up
        queue, _, _ = await channel.declare_queue(exclusive=True, arguments={"x-max-length": 1000})
        body = b"x" * 300

        async def per_send_timer() -> None:
            confirm = channel.publish(queue, body, persistent=False)
            async with asyncio.timeout(TIMEOUT):
                await confirm

        async def one_timer() -> None:
            confirm = channel.publish(queue, body, persistent=False)
            deadlines.add(time.monotonic() + TIMEOUT, confirm, channel.unconfirmed)
            await confirm

        await _cpu_per_send(one_timer, 200)
        ways = {"asyncio.timeout": per_send_timer, "one timer": one_timer}
        return await _alternate(ways, rounds, sends, senders)
    finally:
        deadlines.close()
        await conn.close()


async def _alternate(
    ways: Mapping[str, Callable[[], Awaitable[object]]], rounds: int, sends: int, senders: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in list(ways)[:: 1 if r % 2 else -1]:
            out[name].append(await _cpu_per_send(ways[name], sends, senders))
    return out


def _report(label: str, out: dict[str, list[float]], rounds: int, sends: int) -> None:
    base, new = out["asyncio.timeout"], out["one timer"]
    ratios = sorted(n / b for n, b in zip(new, base, strict=True))
    print(f"{label}: CPU per publish, median of {rounds} blocks of {sends}:")
    print(f"  asyncio.timeout per publish: {statistics.median(base):.1f} us")
    print(f"  one timer for all publishes: {statistics.median(new):.1f} us")
    print(
        f"  ratio {statistics.median(ratios):.3f}x (pairs from {ratios[0]:.3f}x"
        f" to {ratios[-1]:.3f}x)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--brokers", default="kafka,amqp", help="comma-separated: kafka, amqp")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--sends", type=int, default=1500, help="sends per block")
    ap.add_argument(
        "--senders",
        default="1,64",
        help="comma-separated: how many publish at once (1: everyday load; more: a busy client)",
    )
    args = ap.parse_args()
    counts = [int(n) for n in args.senders.split(",") if n]
    if not all(1 <= n <= args.sends for n in counts):
        ap.error(f"--senders: each count from 1 to --sends ({args.sends}), not {args.senders}")
    services = {
        "kafka": ("kafka", "FLEET_TEST_KAFKA_URL", measure_kafka),
        "amqp": ("rabbitmq", "FLEET_TEST_AMQP_URL", measure_amqp),
    }
    brokers = [b for b in args.brokers.split(",") if b]
    if unknown := set(brokers) - set(services):
        ap.error(f"--brokers: kafka or amqp, not {', '.join(sorted(unknown))}")
    started: list[str] = []
    try:
        for broker in brokers:
            name, var, measure = services[broker]
            url = _service(name, var, started)
            for senders in counts:
                out = asyncio.run(measure(url, args.rounds, args.sends, senders))
                _report(f"{broker}, {senders} at once", out, args.rounds, args.sends)
    finally:
        for name in started:
            subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), "stop"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
