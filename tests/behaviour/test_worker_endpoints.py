"""The worker's HTTP endpoints and heartbeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from fleet.heartbeat import Heartbeat
from fleet.transport import connect
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import rows
from worker.health import READY_PATH
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.memory


async def test_health_ready_and_metrics(model_repo: Path, unique_model: str) -> None:
    url = f"memory://{unique_model}"
    worker = Worker(WorkerSettings(broker=url, models=model_repo, worker_id="h1", http_port=0))
    await worker.start()
    base = f"http://127.0.0.1:{worker.http_port}"
    try:
        async with aiohttp.ClientSession() as http, Client(url) as client:
            await client.infer(f"{unique_model}-digits", {"input": rows(64, 2)})
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}{READY_PATH}") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            labels = f'model="{unique_model}-digits",outcome="ok",version="1"'
            assert f"fleet_worker_requests_total{{{labels}}} 1.0" in text
            assert "fleet_worker_batch_size_bucket" in text
            assert "fleet_worker_ready 1.0" in text
            stopping = asyncio.ensure_future(worker.stop())
            await asyncio.sleep(0)
            async with http.get(f"{base}{READY_PATH}") as r:
                assert r.status == 503  # draining: not ready
            await stopping
    finally:
        await worker.stop()


async def test_heartbeats_carry_throughput_and_state(model_repo: Path, unique_model: str) -> None:
    url = f"memory://{unique_model}"
    beats: list[Heartbeat] = []
    async with connect(url) as t:
        await t.subscribe_heartbeats(lambda b: beats.append(Heartbeat.decode(b)))
        worker = Worker(
            WorkerSettings(
                broker=url,
                models=model_repo,
                worker_id="hb",
                http_port=None,
                heartbeat_interval=0.2,
            )
        )
        await worker.start()
        async with Client(url) as client:
            await asyncio.gather(
                *(client.infer(f"{unique_model}-mlp", {"input": rows(256, 1)}) for _ in range(50))
            )
        # a heartbeat counting every answer (they are sent every 0.2 s, delivered asynchronously)
        assert await wait_until(lambda: any(b.answered_total == 50 for b in beats), 10)
        await worker.stop()
        assert await wait_until(lambda: beats[-1].state == "stopped", 10)
    assert beats and beats[0].worker_id == "hb"
    assert beats[-1].state == "stopped"
    assert beats[-1].answered_total == 50
    assert max(b.throughput_rps for b in beats) > 0
    assert max(b.busy_fraction for b in beats) > 0
    assert max(b.mean_batch_size for b in beats) >= 1
    assert max(b.requests_per_message for b in beats) > 1  # the client coalesced
    assert beats[0].provider == "CPUExecutionProvider"
    assert sorted(beats[0].models) == [f"{unique_model}-digits", f"{unique_model}-mlp"]
