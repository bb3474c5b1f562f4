"""Freezing the heap: what lives once a program has started is exempted from
the garbage collector's walks; garbage made before is freed first."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.heap import freeze_heap
from fleet.transport.base import wait_until
from fleet.transport.memory import MemoryBroker
from fleetctl.worker_cmd import serve
from producer import Client
from tests.helpers import rows
from worker.service import Worker, WorkerSettings


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test starts with nothing frozen and leaves nothing frozen."""
    gc.unfreeze()
    yield None
    gc.unfreeze()


@pytest.mark.unit
def test_freezing_frees_the_garbage_and_exempts_what_lives(unfrozen: object) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    dead = weakref.ref(a)
    del a, b
    gc.disable()  # no collection of its own between the del and the freeze
    try:
        frozen = freeze_heap()
    finally:
        gc.enable()
    assert dead() is None  # collected before the freeze, not frozen with it
    assert frozen == gc.get_freeze_count() > 0
    # the frozen objects are walked no more: a full collection leaves them frozen
    gc.collect()
    assert gc.get_freeze_count() == frozen


async def _frozen_once_serving(model_repo: Path, name: str, *, freeze: bool) -> int:
    """How many objects are frozen once a worker run by ``serve`` has answered."""
    url = f"memory://{name}"
    worker = Worker(WorkerSettings(broker=url, models=model_repo, worker_id="heap", http_port=0))
    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve(worker, stop, freeze=freeze))
    try:
        assert await wait_until(lambda: worker.state == "ready", 30)
        if freeze:  # frozen right after the start, before it waits for a stop
            assert await wait_until(lambda: gc.get_freeze_count() > 0, 30)
        async with Client(url) as client:
            await client.infer(f"{name}-digits", {"input": rows(64, 1, seed=1)}, timeout=30)
        count = gc.get_freeze_count()
        stop.set()
        assert await asyncio.wait_for(serving, 30) == 0
        return count
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        MemoryBroker.reset(name)


@pytest.mark.memory
async def test_a_worker_process_freezes_its_heap_once_started(
    model_repo: Path, unique_model: str, unfrozen: object
) -> None:
    assert await _frozen_once_serving(model_repo, unique_model, freeze=True) > 0


@pytest.mark.memory
async def test_a_worker_served_beside_other_code_leaves_the_heap_alone(
    model_repo: Path, unique_model: str, unfrozen: object
) -> None:
    assert await _frozen_once_serving(model_repo, unique_model, freeze=False) == 0
