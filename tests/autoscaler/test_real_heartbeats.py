"""The capacity signal on a real worker's heartbeats. A worker whose batches
take the same time whatever their size (as on a GPU, up to its batch limit) is
busy nearly all the time at a load that fills a small part of its batches.
Its heartbeats say so: busy time near 1, saturation (busy time times batch
fill) low. The default policy, which scales on saturation, holds one such
worker where a policy on busy time would add instances."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from autoscaler.actuators.base import Capacity
from autoscaler.policy import DefaultPolicy, PolicyConfig
from autoscaler.signals import Signals
from autoscaler.types import Snapshot
from fleet.transport import connect
from producer import Client
from tests.helpers import running_worker
from tests.worker.fakes import DoublingRuntime, doubling_repo
from worker.repository import ModelSpec
from worker.runtime import RUNTIMES, Array, Feeds, ModelRuntime, RuntimeSpec

pytestmark = [pytest.mark.memory, pytest.mark.timeout(120)]

BATCH_S = 0.02  # every batch, of 1 row or 32
MAX_BATCH = 32  # so one worker serves up to 1,600 req/s
RATE = 60.0  # more batches a second than it can run one row at a time: busy ~1


class FixedBatchTimeRuntime(DoublingRuntime):
    """``y = 2 * x`` in ``BATCH_S`` whatever the batch's size."""

    provider = "FixedBatchTimeProvider"
    max_batch_size = MAX_BATCH

    def run(self, feeds: Mapping[str, Array]) -> Feeds:
        time.sleep(BATCH_S)
        return super().run(feeds)


def _load(spec: ModelSpec) -> ModelRuntime:
    return FixedBatchTimeRuntime(spec)


@pytest.fixture
def fixed_time_runtime() -> Iterator[RuntimeSpec]:
    spec = RuntimeSpec(name="fixed-batch-time", load=_load, description="GPU-like batch time")
    with RUNTIMES.registered(spec) as registered:
        yield registered


async def _traffic(client: Client, model: str, seconds: float) -> int:
    """``RATE`` one-row requests a second, sent by the clock."""
    x = np.ones((1, 2), np.float32)
    calls: list[asyncio.Future[object]] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        while len(calls) < elapsed * RATE:
            calls.append(asyncio.ensure_future(client.infer(model, {"x": x})))
        await asyncio.sleep(0.005)
    await asyncio.gather(*calls)
    return len(calls)


async def test_a_busy_worker_with_small_batches_is_not_scaled_out(
    fixed_time_runtime: RuntimeSpec, tmp_path: Path, unique_model: str
) -> None:
    config = f'runtime = "fixed-batch-time"\nmax_batch_size = {MAX_BATCH}\n'
    root = doubling_repo(tmp_path, unique_model, config)
    url = f"memory://{unique_model}"
    policy = DefaultPolicy(PolicyConfig(max_capacity=8))
    state = policy.initial_state()
    snaps: list[Snapshot] = []
    async with (
        running_worker(url, root, heartbeat_interval=0.5),
        Client(url, timeout=30.0) as client,
    ):
        transport = connect(url)
        await transport.connect()
        # what `fleet recommend` measures for this worker: full batches
        signals = Signals(
            transport,
            [unique_model],
            per_instance_rps=0.9 * MAX_BATCH / BATCH_S,
            arrival_smoothing_s=0.0,
        )
        await signals.start()
        traffic = asyncio.ensure_future(_traffic(client, unique_model, 12.0))
        try:
            await asyncio.sleep(4.0)  # heartbeats under load, and a measured arrival rate
            while not traffic.done():
                snap = await signals.collect(Capacity(in_service=1, pending=0, desired=1))
                decision, state = policy.decide(snap, state)
                snaps.append(snap)
                assert decision.desired == 1, (decision, snap)
                await asyncio.sleep(1.0)
            sent = await traffic
        finally:
            await signals.close()
            await transport.close()
    print(f"\nsent {sent}; busy, saturation: {[(s.busy_fraction, s.saturation) for s in snaps]}")
    assert sent >= 0.5 * RATE * 12.0
    measured = [s for s in snaps if s.busy_fraction is not None and s.saturation is not None]
    assert len(measured) >= 4, snaps
    busy = statistics.median(s.busy_fraction for s in measured if s.busy_fraction is not None)
    sat = statistics.median(s.saturation for s in measured if s.saturation is not None)
    # busy time alone would say "scale out" (the default target is 0.75) ...
    assert busy >= 0.75, measured
    # ... while the batches are mostly empty
    assert sat <= 0.25, measured
