"""Drive traffic through a :class:`Client` and measure it (demo, benchmarks, recommend).

Two modes: *closed loop* (``concurrency`` callers, each sending its next
request when the last one is answered: finds the saturation throughput) and
*open loop* (``rate`` requests/s on a fixed schedule, whatever the latency:
the honest way to measure latency at a given load).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.errors import DeadlineExceeded, FleetError
from producer.client import Client

Inputs = Mapping[str, npt.ArrayLike]


@dataclass(eq=False)
class LoadResult:
    started: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    batch_sizes: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    timed_out: int = 0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_sizes)) if self.batch_sizes else 0.0

    @property
    def lost(self) -> int:
        """Requests neither answered nor failed with an error: must be 0."""
        return self.sent - self.ok - sum(self.errors.values())

    def line(self) -> str:
        errs = sum(self.errors.values())
        return (
            f"{self.ok:>8} ok  {self.rps:>9.1f} req/s  p50 {self.percentile(50) * 1e3:7.2f} ms  "
            f"p99 {self.percentile(99) * 1e3:7.2f} ms  batch {self.mean_batch:5.1f}  errors {errs}"
        )


async def _one(
    client: Client, model: str, inputs: Inputs, timeout: float, result: LoadResult
) -> None:
    result.sent += 1
    t0 = time.perf_counter()
    try:
        reply = await client.infer_reply(model, inputs, timeout=timeout)
    except DeadlineExceeded as exc:
        result.timed_out += 1
        result.errors[type(exc).__name__] += 1
        return
    except FleetError as exc:
        result.errors[type(exc).__name__] += 1
        return
    if reply.error is not None:
        result.errors[type(reply.error.to_exception()).__name__] += 1
        return
    result.latencies.append(time.perf_counter() - t0)
    result.batch_sizes.append(reply.timings.batch_size)


async def drive(
    client: Client,
    model: str,
    make_inputs: Callable[[int], Inputs],
    *,
    duration: float,
    concurrency: int = 64,
    rate: float | None = None,
    timeout: float = 5.0,
    on_progress: Callable[[LoadResult], None] | None = None,
    progress_every: float = 0.5,
) -> LoadResult:
    """Send traffic for ``duration`` seconds, then wait for what is in flight."""
    result = LoadResult()
    end = time.perf_counter() + duration
    tasks: set[asyncio.Task[None]] = set()
    counter = iter(range(1 << 62))

    async def closed_loop() -> None:
        while time.perf_counter() < end:
            await _one(client, model, make_inputs(next(counter)), timeout, result)

    async def progress() -> None:
        while on_progress is not None:
            await asyncio.sleep(progress_every)
            on_progress(result)

    reporter = asyncio.get_running_loop().create_task(progress())
    try:
        if rate is None:
            await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
        else:
            gate = asyncio.Semaphore(concurrency)
            interval = 1.0 / rate
            next_at = time.perf_counter()
            while next_at < end:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                task = asyncio.get_running_loop().create_task(
                    _one(client, model, make_inputs(next(counter)), timeout, result)
                )
                task.add_done_callback(lambda _t: gate.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
            await asyncio.gather(*tasks)
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
    result.finished = time.perf_counter()
    return result


def random_inputs(width: int, *, seed: int = 0, pool: int = 256) -> Callable[[int], dict[str, Any]]:
    """Inputs of one row of ``width`` float32s, drawn from a fixed pool."""
    rows = np.random.default_rng(seed).standard_normal((pool, width)).astype(np.float32)
    return lambda i: {"input": rows[i % pool : i % pool + 1]}


__all__ = ["LoadResult", "drive", "random_inputs"]
