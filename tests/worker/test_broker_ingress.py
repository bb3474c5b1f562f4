"""The broker ingress on the memory broker: replies coalesced per address, acks
after the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import Priority, Request
from fleet.tensor import Tensor
from fleet.transport import connect
from fleet.transport.base import wait_until
from fleet.transport.memory import MemoryBroker, _MemoryDelivery
from tests.helpers import running_worker
from tests.worker.fakes import doubling_repo, loaded
from worker.runtime import RuntimeSpec

pytestmark = pytest.mark.memory


def _request(rid: str, model: str, value: float) -> Request:
    now = time.time()
    x = np.full((1, 2), value, np.float32)
    return Request(
        id=rid, model=model, inputs=(Tensor.from_numpy("x", x),), deadline=now + 10, sent_at=now
    )


async def test_one_batch_answers_one_address_in_one_frame_then_acks(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str
) -> None:
    # a long batching wait: both messages' requests make one batch
    config = 'runtime = "doubling"\nmax_batch_size = 4\nmax_wait_ms = 300\n'
    root = doubling_repo(tmp_path, unique_model, config)
    url = f"memory://{unique_model}"
    frames: list[bytes] = []
    try:
        async with running_worker(url, root) as worker, connect(url) as raw:
            inbox = await raw.open_inbox(frames.append)
            for i, rid in enumerate(("a", "b")):  # two messages, one caller
                body = wire.encode_requests([_request(rid, unique_model, float(i))], inbox)
                await raw.publish_request(unique_model, Priority.ONLINE, body)
            assert await wait_until(lambda: worker.stats.answered_total == 2, 10)
            assert await wait_until(lambda: bool(frames), 10)

            async def settled() -> bool:
                depth = await raw.depth(unique_model)
                return depth.ready == 0 and depth.in_flight == 0

            deadline = time.monotonic() + 10
            while not await settled() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await settled(), "both messages acked"
    finally:
        MemoryBroker.reset(unique_model)
    (runtime,) = loaded
    assert runtime.batches == [2]
    (frame,) = frames
    replies = wire.decode_replies(frame).items
    assert [r.id for r in replies] == ["a", "b"]
    np.testing.assert_array_equal(replies[1].arrays()["y"], [[2.0, 2.0]])  # type: ignore[union-attr]


async def test_a_drain_waits_for_the_acks_not_just_the_answers(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ack still on its way when nothing is left to answer is waited for:
    were the connection closed first, the broker would hand the message to
    another worker. (A message of expired requests is settled as it arrives,
    outside any batch.)"""
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\nmax_batch_size = 4\n')
    url = f"memory://{unique_model}"
    real_ack = _MemoryDelivery.ack
    acked: list[float] = []

    async def slow_ack(self: _MemoryDelivery) -> None:
        await asyncio.sleep(0.3)
        await real_ack(self)
        acked.append(time.monotonic())

    monkeypatch.setattr(_MemoryDelivery, "ack", slow_ack)
    expired = dataclasses.replace(_request("a", unique_model, 1.0), deadline=time.time() - 1)
    try:
        async with connect(url) as raw:
            inbox = await raw.open_inbox(lambda body: None)
            async with running_worker(url, root) as worker:
                body = wire.encode_requests([expired], inbox)
                await raw.publish_request(unique_model, Priority.ONLINE, body)
                assert await wait_until(lambda: worker.stats.expired_total == 1, 10)
                await worker.stop()
                assert acked, "the drain ended before the ack was made"
    finally:
        MemoryBroker.reset(unique_model)
