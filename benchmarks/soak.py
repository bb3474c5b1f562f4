"""Soak: mixed traffic under a random schedule of faults, with a ledger of every request.

    .venv/bin/python benchmarks/soak.py --broker amqp [--minutes 10] [--seed 1]

One ``fleet worker`` process serves both demo models; a client sends, for
``--minutes``: good requests to both models at online and batch priority, a
share of malformed ones (wrong width, wrong dtype: must get InvalidArgument)
and, now and then, an oversize one (must get LimitExceeded). Meanwhile faults
fire on a schedule drawn from ``--seed``:

- on both brokers, client and worker reach the broker through the fault proxy
  of ``tests/chaos/proxy.py``: latency and jitter, a bandwidth cap, resets
  mid-frame, a half-open connection; and the worker paused (SIGSTOP) past
  the deadline. On Kafka the proxy sits on the port that the broker's second
  listener advertises (``scripts/kafka.sh``), so it carries every connection;
- ``amqp`` also: a memory alarm and a disk alarm;
- ``kafka`` also: the broker paused (SIGSTOP) past the request timeout.

Every answer is checked against ONNX Runtime run here on the same input. The
ledger (``tests/chaos/ledger.py``) counts ok, each typed error, and the three
that must stay at 0: silently lost, crossed (an answer that belongs to another
request), hung past the deadline + 1 s. It also reports the worker's resident
memory after warm-up and at the end. Exit status 1 when lost, crossed, hung or
unexpected is non-zero, or the worker's RSS grew more than 20%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.contract import Priority  # noqa: E402
from fleet.errors import InvalidArgument, LimitExceeded  # noqa: E402
from fleet.logging import configure  # noqa: E402
from producer import Client  # noqa: E402
from tests.chaos.ledger import BAD, Ledger  # noqa: E402
from tests.chaos.proxy import FaultProxy  # noqa: E402
from tests.helpers import WorkerProcess, direct_onnx, rows  # noqa: E402

POOL = 4096  # distinct inputs per model; far more than are ever in flight at once
TIMEOUT = 4.0  # each request's deadline, seconds
RSS_GROWTH = 1.2
Fault = Callable[[], Awaitable[None]]


class Pool:
    """Inputs of one model and ONNX Runtime's outputs for them."""

    def __init__(self, model_dir: Path, name: str, width: int, seed: int) -> None:
        self.name = name
        self.width = width
        self.x = rows(width, POOL, seed=seed)
        self.want = direct_onnx(model_dir, {"input": self.x})
        self.next = 0

    def take(self) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
        i = self.next % POOL
        self.next += 1
        return {"input": self.x[i : i + 1]}, {k: v[i : i + 1] for k, v in self.want.items()}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def traffic(
    ledger: Ledger, client: Client, pools: list[Pool], rng: random.Random, end: float
) -> None:
    """One sender: good requests mostly, a share of malformed ones."""
    while time.monotonic() < end:
        pool = rng.choice(pools)
        roll = rng.random()
        prio = Priority.BATCH if rng.random() < 0.3 else Priority.ONLINE
        if roll < 0.05:  # wrong width
            bad = rows(pool.width + 3, 1, seed=rng.randrange(1 << 30))
            await ledger.call(
                client, pool.name, {"input": bad}, timeout=TIMEOUT, expect_error=InvalidArgument
            )
        elif roll < 0.10:  # wrong dtype
            bad64 = rows(pool.width, 1).astype(np.float64)
            await ledger.call(
                client, pool.name, {"input": bad64}, timeout=TIMEOUT, expect_error=InvalidArgument
            )
        else:
            inputs, want = pool.take()
            await ledger.call(
                client, pool.name, inputs, timeout=TIMEOUT, expect=want, priority=prio
            )


async def oversize(ledger: Ledger, client: Client, pool: Pool, end: float) -> None:
    """Now and then a request just over the broker's limit."""
    big = rows(pool.width, client.transport.max_message_bytes // (4 * pool.width) + 16)
    while time.monotonic() + 20 < end:
        await asyncio.sleep(20)
        await ledger.call(
            client, pool.name, {"input": big}, timeout=TIMEOUT, expect_error=LimitExceeded
        )


class LoopLag:
    """How late this process's event loop runs a timer, sampled every 50 ms:
    the client, the ledger and the fault proxy share this loop, so a starved
    process makes outcomes late whatever the fleet does."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic, seconds late)

    async def run(self, end: float) -> None:
        while (t := time.monotonic()) < end:
            await asyncio.sleep(0.05)
            self.samples.append((t, time.monotonic() - t - 0.05))

    def worst(self, a: float = 0.0, b: float = float("inf")) -> float:
        return max((lag for t, lag in self.samples if a <= t <= b), default=0.0)


def faults_for(
    broker: str, proxy: FaultProxy, worker: WorkerProcess, rng: random.Random
) -> dict[str, Fault]:
    async def pause_worker() -> None:
        worker.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(rng.uniform(TIMEOUT + 1, 2 * TIMEOUT))
        finally:
            worker.signal(signal.SIGCONT)

    def held(apply: Callable[[], object], seconds: tuple[float, float]) -> Fault:
        async def run() -> None:
            apply()
            try:
                await asyncio.sleep(rng.uniform(*seconds))
            finally:
                proxy.recover()

        return run

    async def resets() -> None:
        for _ in range(rng.randint(1, 3)):
            proxy.reset(mid_frame=True)
            await asyncio.sleep(rng.uniform(0.5, 2))

    faults: dict[str, Fault] = {
        "worker paused": pause_worker,
        "latency": held(lambda: proxy.set_latency(0.05, jitter=0.05), (3, 8)),
        "bandwidth": held(lambda: proxy.set_bandwidth(20_000), (3, 6)),
        "resets": resets,
        "blackhole": held(proxy.blackhole, (2, 6)),
    }
    faults.update(kafka_faults(rng) if broker == "kafka" else rabbitmq_faults(rng))
    return faults


def kafka_faults(rng: random.Random) -> dict[str, Fault]:
    from tests.chaos.conftest import kafka_pid

    pid = kafka_pid()

    async def pause_broker() -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(rng.uniform(3, 5))  # past the 2 s request timeout
        finally:
            os.kill(pid, signal.SIGCONT)

    return {"broker paused": pause_broker}


def rabbitmq_faults(rng: random.Random) -> dict[str, Fault]:
    from tests.chaos.conftest import rabbitmqctl

    async def ctl(*argv: str) -> None:
        try:
            await asyncio.to_thread(rabbitmqctl, *argv)
        except subprocess.CalledProcessError as exc:  # the node is down: an outage anyway
            print(f"rabbitmqctl {' '.join(argv)} failed: {exc.stderr!r}", flush=True)

    def alarm(raise_it: tuple[str, str], clear_it: tuple[str, str]) -> Fault:
        async def run() -> None:
            await ctl(*raise_it)
            try:
                await asyncio.sleep(rng.uniform(2, 5))
            finally:
                await ctl(*clear_it)

        return run

    return {
        "memory alarm": alarm(
            ("set_vm_memory_high_watermark", "0.0001"), ("set_vm_memory_high_watermark", "0.4")
        ),
        "disk alarm": alarm(("set_disk_free_limit", "100000GB"), ("set_disk_free_limit", "50MB")),
    }


async def schedule(
    ledger: Ledger, faults: dict[str, Fault], rng: random.Random, end: float, fired: list[str]
) -> None:
    names = sorted(faults)
    while True:
        await asyncio.sleep(rng.uniform(4, 10))
        if time.monotonic() + 20 > end:
            return
        name = rng.choice(names)
        fired.append(name)
        print(f"fault: {name}", flush=True)
        ledger.fault_started()
        try:
            await faults[name]()
        finally:
            ledger.fault_ended()


async def soak(args: argparse.Namespace) -> int:
    from worker.zoo import build_all

    rng = random.Random(args.seed)
    built = ROOT / ".cache" / "test-models"
    build_all(built)
    tag = f"soak{args.seed}x{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name in ("digits", "mlp"):
            (repo / f"{tag}-{name}").symlink_to(built / name, target_is_directory=True)
        pools = [
            Pool(repo / f"{tag}-digits", f"{tag}-digits", 64, args.seed),
            Pool(repo / f"{tag}-mlp", f"{tag}-mlp", 256, args.seed + 1),
        ]
        return await _run(args, rng, repo, pools)


async def _run(args: argparse.Namespace, rng: random.Random, repo: Path, pools: list[Pool]) -> int:
    from tests.chaos.conftest import KAFKA_PROXIED_PORT, KAFKA_PROXY_PORT, proxied, with_query

    url = args.url
    host = urlsplit(url).hostname or "127.0.0.1"
    if args.broker == "amqp":
        proxy = FaultProxy(host, urlsplit(url).port or 5672)
    else:  # through the listener that advertises the proxy's port
        proxy = FaultProxy(host, KAFKA_PROXIED_PORT, listen_port=KAFKA_PROXY_PORT)
        url = with_query(url, publish_timeout=2)
    await proxy.start()
    url = proxied(url, proxy.port)
    worker = WorkerProcess(url, repo, "soak")
    try:
        await worker.start()
    except TimeoutError:
        await worker.stop()
        print(f"the worker did not get ready: {worker.lines[-5:]}")
        raise
    ledger = Ledger(grace=10.0)
    fired: list[str] = []
    lag = LoopLag()
    try:
        async with Client(url, timeout=TIMEOUT) as client:
            warm = Ledger()
            for pool in pools:  # warm-up, not counted
                for _ in range(50):
                    inputs, want = pool.take()
                    await warm.call(client, pool.name, inputs, timeout=30, expect=want)
            assert worker.proc is not None
            rss_start = rss_kib(worker.proc.pid)
            end = time.monotonic() + args.minutes * 60
            faults = faults_for(args.broker, proxy, worker, rng)
            senders = [
                traffic(ledger, client, pools, random.Random(rng.random()), end)
                for _ in range(args.concurrency)
            ]
            await asyncio.gather(
                *senders,
                oversize(ledger, client, pools[0], end),
                schedule(ledger, faults, rng, end, fired),
                lag.run(end),
            )
            rss_end = rss_kib(worker.proc.pid)
    finally:
        await worker.stop()
        await proxy.close()
    return report(ledger, fired, rss_start, rss_end, lag)


def report(ledger: Ledger, fired: list[str], rss_start: int, rss_end: int, lag: LoopLag) -> int:
    counts = ledger.counts()
    ratio = rss_end / rss_start if rss_start else float("inf")
    print(f"faults fired: {len(fired)} ({', '.join(fired)})")
    print(f"sent: {len(ledger.entries)}")
    for key in sorted(counts):
        if key not in BAD:
            print(f"  {key}: {counts[key]}")
    for key in BAD:
        print(f"{'silently lost' if key == 'lost' else key}: {counts.get(key, 0)}")
    print(f"worker RSS: start {rss_start} KiB, end {rss_end} KiB, ratio {ratio:.3f}")
    t0 = ledger.entries[0].sent if ledger.entries else 0.0
    windows = ", ".join(f"{a - t0:.1f}-{b - t0:.1f}s" for a, b in ledger.faults)
    print(f"fault windows: {windows}")
    print(f"this process's event loop: worst lag {lag.worst():.2f}s")
    for e in ledger.bad()[:20]:
        print(
            f"  {e.outcome} (sent at {e.sent - t0:.1f}s): {e.model} {e.id} {e.detail}; "
            f"worst loop lag meanwhile {lag.worst(e.sent, e.ended):.2f}s"
        )
    failed = any(counts.get(k, 0) for k in BAD) or ratio > RSS_GROWTH
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", choices=("amqp", "kafka"), required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--url", help="the broker (default: FLEET_TEST_AMQP_URL / FLEET_TEST_KAFKA_URL)"
    )
    args = ap.parse_args()
    env = "FLEET_TEST_AMQP_URL" if args.broker == "amqp" else "FLEET_TEST_KAFKA_URL"
    args.url = args.url or os.environ.get(env)
    if not args.url:
        sys.exit(f"no broker: pass --url or set {env}")
    configure(level="WARNING", json=False)  # stdout is the report; warnings go to stderr
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
