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
from fleet.transport.base import Transport, queue_name, wait_until
from fleet.transport.memory import (
    MemoryBroker,
    MemoryTransport,
    _MemoryConsumer,
    _MemoryDelivery,
    _Message,
    _Queue,
)
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


def _held_cancels(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Cancels held on their way (the round trip, still consuming): the first
    event is set when one begins, and it completes once the second is set."""
    real_cancel = _MemoryConsumer.cancel
    cancelling, release = asyncio.Event(), asyncio.Event()

    async def held_cancel(self: _MemoryConsumer) -> None:
        cancelling.set()
        await release.wait()
        await real_cancel(self)

    monkeypatch.setattr(_MemoryConsumer, "cancel", held_cancel)
    return cancelling, release


async def _deliver_during_cancel(
    raw: Transport,
    q: _Queue,
    inbox: str,
    model: str,
    cancelling: asyncio.Event,
    release: asyncio.Event,
) -> None:
    """Once a cancel is on its way, publish requests a and b, see them
    delivered, then let the cancel complete."""
    await cancelling.wait()
    reqs = [_request(rid, model, 1.0) for rid in ("a", "b")]
    await raw.publish_request(model, Priority.ONLINE, wire.encode_requests(reqs, inbox))
    assert await wait_until(lambda: not q.ready, 10)  # delivered before the cancel
    release.set()


async def test_what_arrives_while_the_cancel_is_on_its_way_is_served_not_handed_back(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker delivers until it confirms a cancel. What it delivers meanwhile
    is answered and acked by the draining worker: handed back, it would come
    straight back to the same consumer, round and round toward the delivery
    limit, and be answered twice when a message ends half done."""
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\nmax_batch_size = 4\n')
    url = f"memory://{unique_model}"
    cancelling, release = _held_cancels(monkeypatch)
    frames: list[bytes] = []
    try:
        async with connect(url) as raw:
            inbox = await raw.open_inbox(frames.append)
            async with running_worker(url, root) as worker:
                q = MemoryBroker.get(unique_model).queues[queue_name(unique_model, Priority.ONLINE)]
                stopping = asyncio.ensure_future(worker.stop())
                await _deliver_during_cancel(raw, q, inbox, unique_model, cancelling, release)
                await stopping
                assert not q.ready and not q.unacked, "the message was acked"
                assert worker.stats.answered_total == 2
            assert await wait_until(lambda: bool(frames), 10)
    finally:
        MemoryBroker.reset(unique_model)
    assert sorted(r.id for f in frames for r in wire.decode_replies(f).items) == ["a", "b"]


async def test_a_drain_waits_for_a_redelivered_message_being_split(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message delivered again is published anew one request at a time, then
    acked. A drain that ended halfway would close the connection under it: some
    requests published, the rest lost with the ack, the whole message delivered
    again, and those published answered twice."""
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\nmax_batch_size = 4\n')
    url = f"memory://{unique_model}"
    try:
        async with connect(url) as raw:
            inbox = await raw.open_inbox(lambda body: None)
            async with running_worker(url, root) as worker:
                real_publish = MemoryTransport.publish_request
                splitting = asyncio.Event()

                async def slow_publish(self: MemoryTransport, *args: object) -> None:
                    splitting.set()
                    await asyncio.sleep(0.2)
                    await real_publish(self, *args)  # type: ignore[arg-type]

                monkeypatch.setattr(MemoryTransport, "publish_request", slow_publish)
                broker = MemoryBroker.get(unique_model)
                q = broker.queues[queue_name(unique_model, Priority.ONLINE)]
                reqs = [_request(rid, unique_model, 1.0) for rid in ("a", "b")]
                # delivered once before, to a worker that stopped
                q.ready.append(_Message(wire.encode_requests(reqs, inbox), attempts=1))
                broker.pump(q)
                await splitting.wait()
                await worker.stop()  # the split copies stay queued
                queued = [wire.decode_requests(m.body).items for m in q.ready]
                assert not q.unacked, "the message was acked"
    finally:
        MemoryBroker.reset(unique_model)
    assert sorted(r.id for items in queued for r in items) == ["a", "b"]


async def test_what_arrives_while_an_unloaded_models_cancel_is_on_its_way_is_served(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on unloading a model: the table still serves it until its
    consumers are cancelled, so what the broker delivers meanwhile is answered."""
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\nmax_batch_size = 4\n')
    url = f"memory://{unique_model}"
    cancelling, release = _held_cancels(monkeypatch)
    try:
        async with connect(url) as raw:
            inbox = await raw.open_inbox(lambda body: None)
            async with running_worker(url, root) as worker:
                assert worker.watcher is not None
                q = MemoryBroker.get(unique_model).queues[queue_name(unique_model, Priority.ONLINE)]
                unloading = asyncio.ensure_future(worker.watcher.unload(unique_model))
                await _deliver_during_cancel(raw, q, inbox, unique_model, cancelling, release)
                await unloading
                assert await wait_until(lambda: worker.stats.answered_total == 2, 10)
                assert not q.ready and not q.unacked, "the message was acked"
    finally:
        MemoryBroker.reset(unique_model)
