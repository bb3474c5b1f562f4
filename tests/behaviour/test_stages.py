"""Where a request's time goes: stage times from the client, through the
broker and the worker, back to the caller, on every broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fleet.stages import CLIENT_STAGES, WORKER_STAGES
from fleet.transport.base import wait_until
from producer import Client
from tests.helpers import rows, running_worker

# queue_ms and inference_ms travel as f32: the stages sum to the total up to that rounding
_F32_MS = 0.01


async def test_stages_add_up_to_the_total(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    async with running_worker(broker_url, model_repo) as worker:
        async with Client(broker_url, timeout=20) as client:
            replies = [
                await client.infer_reply(digits, {"input": rows(64, 2, seed=i)}, stages=True)
                for i in range(5)
            ]
        # a worker counts a reply's stage once its publish returned: maybe after the client has it
        counted = [
            f'fleet_worker_stage_seconds_count{{model="{digits}",stage="{stage}"}} 5.0'
            for stage in WORKER_STAGES
        ]
        assert await wait_until(
            lambda: all(c in worker.metrics.render().decode() for c in counted), timeout=10
        )
        beat = worker.heartbeat()
    for reply in replies:
        s = reply.stages
        assert reply.ok and s is not None
        assert min(vars_of(s)) >= 0.0
        assert s.inference_ms > 0.0 and s.total_ms > 0.0
        assert s.inference_ms == pytest.approx(reply.timings.inference_ms)
        sequential = (
            s.coalesce_ms
            + s.request_broker_ms
            + s.batch_wait_ms
            + s.inference_ms
            + s.reply_ms
            + s.reply_broker_ms
            + s.decode_ms
        )
        assert sequential == pytest.approx(s.total_ms, abs=_F32_MS)
    # the client's histograms hold every stage of every reply
    registry = CollectorRegistry()
    registry.register(client.stages)
    text = generate_latest(registry).decode()
    for stage in CLIENT_STAGES:
        assert f'fleet_client_stage_seconds_count{{model="{digits}",stage="{stage}"}} 5.0' in text
    # the worker's heartbeat shows compute apart from waiting
    assert beat.inference_ms_p50 > 0.0


async def test_stages_are_only_made_when_asked(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    digits = f"{unique_model}-digits"
    async with running_worker(broker_url, model_repo), Client(broker_url, timeout=20) as client:
        reply = await client.infer_reply(digits, {"input": rows(64, 1)})
    assert reply.ok and reply.stages is None


def vars_of(stages: object) -> list[float]:
    return [getattr(stages, name) for name in stages.__slots__]  # type: ignore[attr-defined]
