"""Workers joining and leaving under load, and more workers than partitions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.heartbeat import Heartbeat
from fleet.transport import connect
from producer import Client
from tests.behaviour.conftest import secure_url
from tests.helpers import direct_onnx, rows, running_worker

pytestmark = pytest.mark.faults


async def test_a_worker_joins_then_leaves_under_load(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    """Two rebalances on Kafka (join, leave): nothing lost, nothing surfaced
    twice, and both workers did work."""
    digits = f"{unique_model}-digits"
    x = rows(64, 256, seed=11)
    want = direct_onnx(model_repo / digits, {"input": x})["label"]
    answered = 0
    stop_load = asyncio.Event()

    async def caller(client: Client, k: int) -> int:
        """Requests back to back until told to stop; checks every answer."""
        nonlocal answered
        done = 0
        while not stop_load.is_set():
            i = (k * 7 + done) % len(x)
            out = await client.infer(digits, {"input": x[i : i + 1]}, timeout=90)
            assert out["label"][0] == want[i]
            done += 1
            answered += 1
        return done

    async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
        for _ in range(int(timeout / 0.05)):
            if pred():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async with running_worker(broker_url, model_repo, worker_id="first") as first:
        async with Client(broker_url) as client:
            load = asyncio.ensure_future(asyncio.gather(*(caller(client, k) for k in range(16))))
            await until(lambda: answered >= 100, 60, "load to start")
            async with running_worker(broker_url, model_repo, worker_id="second") as second:
                await until(lambda: second.stats.answered_total >= 20, 60, "the second to work")
            left_at = answered
            await until(lambda: answered >= left_at + 100, 60, "load after the second left")
            stop_load.set()
            per_caller = await asyncio.wait_for(load, 120)
    assert sum(per_caller) == answered == client.stats.answered
    assert first.stats.answered_total > 0 and second.stats.answered_total >= 20
    assert first.stats.answered_total + second.stats.answered_total >= answered


@pytest.mark.kafka
async def test_workers_beyond_the_partition_count_idle_and_say_so(
    model_repo: Path, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = secure_url("kafka", monkeypatch)
    url = f"{base}{'&' if '?' in base else '?'}partitions=1"
    model = f"{unique_model}-digits"
    beats: dict[str, Heartbeat] = {}
    async with connect(url) as t:
        await t.declare_model(model)
        await t.subscribe_heartbeats(
            lambda b: beats.__setitem__((hb := Heartbeat.decode(b)).worker_id, hb)
        )
        async with (
            running_worker(url, model_repo, worker_id="a", heartbeat_interval=0.5) as a,
            running_worker(url, model_repo, worker_id="b", heartbeat_interval=0.5) as b,
        ):
            online = f"fleet.{model}.online"

            def idle_on_online() -> list[str]:
                return [w for w, h in beats.items() if online in (h.idle_reason or "")]

            for _ in range(200):  # the group settles: one of them owns the partition
                if idle_on_online():
                    break
                await asyncio.sleep(0.1)
            idle = idle_on_online()
            assert len(idle) == 1, {w: h.idle_reason for w, h in beats.items()}
            assert "no partitions assigned" in (beats[idle[0]].idle_reason or "")
            async with Client(url) as client:
                await asyncio.gather(
                    *(client.infer(model, {"input": rows(64, 1)}, timeout=30) for _ in range(50))
                )
            busy, lazy = (a, b) if idle[0] == "b" else (b, a)
            assert busy.stats.answered_total == 50 and lazy.stats.answered_total == 0
