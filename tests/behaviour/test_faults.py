"""Faults under load: a worker killed, a worker drained, the broker restarted.

Every request must be answered exactly once, with the right answer: nothing
lost, no duplicate surfaced to a caller.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from fleet.transport import connect
from fleet.transport.base import wait_until
from producer import Client
from tests.conftest import BROKERS, broker_url_for
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
        # both sides recovered with no manual step: a fresh request still works,
        # and the worker's transport says it is connected again (its data path
        # may reconnect, and serve, before its watcher's next probe sees the broker)
        out = await client.infer(digits, {"input": x[:1]}, timeout=30)
        assert out["label"].shape == (1,)
        assert await wait_until(lambda: worker.transport.connected, 30)
    _check(labels, model_repo / digits, x, client, extra=1)


@pytest.mark.parametrize(
    "broker_kind",
    [pytest.param(kind, marks=BROKERS[kind].mark) for kind in ("amqp", "kafka")],
)
async def test_a_drained_worker_and_its_successor_answer_each_request_once(
    broker_kind: str, broker_url: str, model_repo: Path, unique_model: str
) -> None:
    """Many one-row requests queued at once; SIGTERM once the first is
    answered; a second worker answers the rest. A drain acks all it answered
    before it goes, so the broker gives the successor none of it again."""
    mlp = f"{unique_model}-mlp"
    total = 2000
    x = rows(256, total, seed=3)
    # Small messages: many are on their way to the drained worker as it stops.
    leaving = await WorkerProcess(broker_url, model_repo, "leaves").start()
    after: WorkerProcess | None = None
    try:
        async with Client(broker_url, timeout=120.0, max_batch=8) as client:
            calls = [
                asyncio.ensure_future(client.infer(mlp, {"input": x[i : i + 1]}))
                for i in range(total)
            ]
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            leaving.signal(signal.SIGTERM)
            assert await leaving.wait() == 0
            after = await WorkerProcess(broker_url, model_repo, "after").start()
            answers = await asyncio.gather(*calls)
        after.signal(signal.SIGTERM)
        assert await after.wait() == 0
        want = direct_onnx(model_repo / mlp, {"input": x})["logits"]
        got = np.concatenate([a["logits"] for a in answers])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        counts = [_answered(w) for w in (leaving, after)]
        assert sum(counts) == total, (
            f"answered {counts}: {sum(counts) - total} twice; the workers said:\n"
            + "\n".join(map(str, _warnings(leaving) + _warnings(after)))
        )
    finally:
        await leaving.stop()
        if after is not None:
            await after.stop()


def _warnings(worker: WorkerProcess) -> list[dict[str, Any]]:
    """What the worker logged that explains a message delivered again."""
    return [
        line
        for line in worker.lines
        if line.get("level") in ("warning", "error")
        or any(word in str(line.get("event")) for word in ("redeliver", "restart", "closed"))
    ]


def _answered(worker: WorkerProcess) -> int:
    (stopped,) = [line for line in worker.lines if line.get("event") == "worker stopped"]
    return int(stopped["answered"])


# The suite runs Kafka on its SASL listener, where the transport uses
# aiokafka for everything. Its default data path elsewhere (plaintext and
# mutual TLS) is the transport's own protocol connections: the same faults
# on the plaintext port run it.
def _own_data_path_url() -> str:
    url = broker_url_for("kafka")
    assert urlsplit(url).scheme == "kafka" and "data_path" not in url, url
    return url


@pytest.mark.parametrize("broker_kind", [pytest.param("kafka", marks=BROKERS["kafka"].mark)])
async def test_killed_worker_loses_nothing_on_kafkas_own_data_path(
    broker_kind: str, model_repo: Path, unique_model: str
) -> None:
    await test_killed_worker_loses_nothing(
        broker_kind, _own_data_path_url(), model_repo, unique_model
    )


@pytest.mark.parametrize("broker_kind", [pytest.param("kafka", marks=BROKERS["kafka"].mark)])
async def test_broker_restart_under_load_loses_nothing_on_kafkas_own_data_path(
    broker_kind: str,
    model_repo: Path,
    unique_model: str,
    restart_broker: Callable[[], Awaitable[None]],
) -> None:
    url = _own_data_path_url()
    transport = connect(url)
    await transport.connect()
    try:
        assert getattr(transport, "wire", None) is not None  # the own connections
    finally:
        await transport.close()
    await test_broker_restart_under_load_loses_nothing(
        url, model_repo, unique_model, restart_broker
    )
