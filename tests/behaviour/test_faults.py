"""Faults under load: a worker killed, a worker drained, the broker restarted.

Every request must be answered exactly once, with the right answer: nothing
lost, no duplicate surfaced to a caller.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from producer import Client
from tests.helpers import WorkerProcess, direct_onnx, rows, running_worker

pytestmark = pytest.mark.faults

N = 600


async def _load(
    client: Client,
    model: str,
    x: np.ndarray,
    *,
    fault_after: int,
    fault: Callable[[], Awaitable[None]],
    concurrency: int = 64,
    timeout: float = 90.0,
) -> list[np.ndarray]:
    """Send every row of ``x`` as its own request, ``concurrency`` at a time;
    run ``fault`` once ``fault_after`` have been answered."""
    answered = 0
    fault_fired = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> np.ndarray:
        nonlocal answered
        async with gate:
            out = await client.infer(model, {"input": x[i : i + 1]}, timeout=timeout)
        answered += 1
        if answered == fault_after:
            fault_fired.set()
        return out["label"]

    async def inject() -> None:
        await fault_fired.wait()
        await fault()

    injector = asyncio.ensure_future(inject())
    labels = await asyncio.gather(*(one(i) for i in range(len(x))))
    await asyncio.wait_for(injector, timeout)
    return labels


def _check(
    labels: list[np.ndarray], model_dir: Path, x: np.ndarray, client: Client, extra: int = 0
) -> None:
    want = direct_onnx(model_dir, {"input": x})["label"]
    np.testing.assert_array_equal(np.concatenate(labels), want)  # each caller got its own answer
    assert client.stats.answered == len(x) + extra  # exactly one reply surfaced per request


async def test_killed_worker_loses_nothing(
    broker_kind: str, broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, N, seed=7)
    if broker_kind == "memory":  # one process: abort() is what a kill looks like to the broker
        async with (
            running_worker(broker_url, model_repo, worker_id="survivor"),
            running_worker(broker_url, model_repo, worker_id="victim") as victim,
            Client(broker_url) as client,
        ):
            labels = await _load(client, digits, x, fault_after=N // 4, fault=victim.abort)
        _check(labels, model_repo / digits, x, client)
        return
    survivor = await WorkerProcess(broker_url, model_repo, "survivor").start()
    victim = await WorkerProcess(broker_url, model_repo, "victim").start()
    try:
        async with Client(broker_url) as client:

            async def kill() -> None:
                victim.signal(signal.SIGKILL)

            labels = await _load(client, digits, x, fault_after=N // 4, fault=kill)
        assert await victim.wait() == -signal.SIGKILL
        _check(labels, model_repo / digits, x, client)
    finally:
        await victim.stop()
        await survivor.stop()


async def test_sigterm_drains_and_loses_nothing(
    broker_kind: str, broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, N, seed=8)
    if broker_kind == "memory":
        async with (
            running_worker(broker_url, model_repo, worker_id="stays"),
            running_worker(broker_url, model_repo, worker_id="leaves") as leaving,
            Client(broker_url) as client,
        ):
            labels = await _load(client, digits, x, fault_after=N // 4, fault=leaving.stop)
            assert leaving.state == "stopped"
        _check(labels, model_repo / digits, x, client)
        return
    stays = await WorkerProcess(broker_url, model_repo, "stays").start()
    leaving = await WorkerProcess(broker_url, model_repo, "leaves").start()
    try:
        async with Client(broker_url) as client:

            async def term() -> None:
                leaving.signal(signal.SIGTERM)

            labels = await _load(client, digits, x, fault_after=N // 4, fault=term)
        assert await leaving.wait() == 0
        events = [line.get("event") for line in leaving.lines]
        assert "draining" in events and "worker stopped" in events
        _check(labels, model_repo / digits, x, client)
    finally:
        await leaving.stop()
        await stays.stop()


async def test_broker_restart_under_load_loses_nothing(
    broker_url: str,
    model_repo: Path,
    unique_model: str,
    restart_broker: Callable[[], Awaitable[None]],
) -> None:
    digits = f"{unique_model}-digits"
    x = rows(64, 300, seed=9)
    async with running_worker(broker_url, model_repo) as worker, Client(broker_url) as client:
        labels = await _load(
            client, digits, x, fault_after=60, fault=restart_broker, concurrency=32
        )
        # both sides recovered with no manual step: a fresh request still works
        out = await client.infer(digits, {"input": x[:1]}, timeout=30)
        assert out["label"].shape == (1,)
        assert worker.transport.connected
    _check(labels, model_repo / digits, x, client, extra=1)
