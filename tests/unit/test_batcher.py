"""The batcher, alone: size and time flushes, priorities, row accounting."""

from __future__ import annotations

import asyncio

import pytest

from fleet.contract import Priority
from worker.batcher import Batcher

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_flushes_when_full_without_waiting() -> None:
    b: Batcher[int] = Batcher(max_batch_size=3, max_wait=60.0)
    for i in range(4):
        b.put(i)
    assert await asyncio.wait_for(b.next_batch(), 1) == [0, 1, 2]


async def test_flushes_a_partial_batch_after_max_wait() -> None:
    b: Batcher[int] = Batcher(max_batch_size=8, max_wait=0.02)
    b.put(1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(b.next_batch(), 1) == [1]
    assert 0.015 <= loop.time() - t0 < 0.5


async def test_max_wait_counts_from_the_first_item_on_the_given_clock() -> None:
    clock = FakeClock()
    b: Batcher[int] = Batcher(max_batch_size=8, max_wait=5.0, clock=clock)
    b.put(1)
    clock.now += 6.0  # already overdue when asked
    assert await asyncio.wait_for(b.next_batch(), 1) == [1]


async def test_online_goes_before_batch() -> None:
    b: Batcher[str] = Batcher(max_batch_size=3, max_wait=0.0)
    b.put("b1", priority=Priority.BATCH)
    b.put("b2", priority=Priority.BATCH)
    b.put("o1", priority=Priority.ONLINE)
    b.put("o2", priority=Priority.ONLINE)
    assert await b.next_batch() == ["o1", "o2", "b1"]
    assert await b.next_batch() == ["b2"]


async def test_rows_never_exceed_max_batch_size() -> None:
    b: Batcher[str] = Batcher(max_batch_size=4, max_wait=0.0)
    b.put("three", rows=3)
    b.put("two", rows=2)
    assert await b.next_batch() == ["three"]
    assert await b.next_batch() == ["two"]
    with pytest.raises(ValueError, match="cannot fit"):
        b.put("five", rows=5)


async def test_a_waiting_consumer_wakes_on_put() -> None:
    b: Batcher[int] = Batcher(max_batch_size=2, max_wait=10.0)
    waiter = asyncio.ensure_future(b.next_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    b.put(1)
    b.put(2)
    assert await asyncio.wait_for(waiter, 1) == [1, 2]


async def test_close_flushes_the_rest_then_ends() -> None:
    b: Batcher[int] = Batcher(max_batch_size=8, max_wait=60.0)
    b.put(1)
    b.close()
    assert await asyncio.wait_for(b.next_batch(), 1) == [1]
    assert await asyncio.wait_for(b.next_batch(), 1) == []
    with pytest.raises(RuntimeError):
        b.put(2)


async def test_a_full_batch_is_taken_at_once_or_not_at_all() -> None:
    b: Batcher[int] = Batcher(max_batch_size=4, max_wait=60.0)
    b.put(0, rows=2)
    b.put(1, rows=1, priority=Priority.BATCH)
    assert b.full_batch() == [] and b.rows == 3  # not full: left for next_batch
    b.put(2, rows=2)
    assert b.full_batch() == [0, 2] and b.rows == 1  # online first, up to 4 rows
    b.put(3, rows=3)
    assert b.full_batch() == [3, 1] and b.rows == 0  # online before batch
    b.put(4, rows=2)
    assert b.drain() == [4] and b.rows == 0
