"""The client's one timer for every request's deadline (producer.deadlines)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fleet.deadlines import Deadlines

pytestmark = pytest.mark.unit

FAR = 3600.0  # a deadline no test reaches


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def _timed_out(future: asyncio.Future[Any]) -> bool:
    """Whether ``future`` fails with TimeoutError (waited for far longer than
    it needs, so that a slow machine cannot fail the test)."""
    await asyncio.wait({future}, timeout=30)
    return future.done() and isinstance(future.exception(), TimeoutError)


async def test_a_passed_deadline_fails_only_its_own_future() -> None:
    deadlines, due, later, answered = Deadlines(), _future(), _future(), _future()
    now = time.monotonic()
    deadlines.add(now + FAR, later, 3)
    deadlines.add(now - 1.0, due, 3)  # earlier than the armed timer: re-armed for it
    answered.set_result("reply")
    deadlines.add(now - 1.0, answered, 3)
    assert await _timed_out(due)
    assert answered.result() == "reply"  # done before its deadline: left as it was
    assert not later.done()
    deadlines.close()


async def test_a_late_deadline_still_fires_after_earlier_ones_are_answered() -> None:
    deadlines, answered, due = Deadlines(), _future(), _future()
    now = time.monotonic()
    deadlines.add(now + FAR, answered, 2)
    deadlines.add(now + 0.05, due, 2)
    answered.set_result("reply")
    assert await _timed_out(due)
    deadlines.close()


async def test_answered_entries_are_dropped_so_the_heap_stays_bounded() -> None:
    deadlines = Deadlines()
    now = time.monotonic()
    for i in range(5_000):
        future = _future()
        deadlines.add(now + FAR + i, future, 1)
        future.set_result(i)  # answered at once: one request live at a time
    assert len(deadlines) <= 2 * 1 + 256 + 1
    deadlines.close()
    assert len(deadlines) == 0


async def test_nothing_is_armed_once_every_entry_is_done() -> None:
    deadlines, due = Deadlines(), _future()
    deadlines.add(time.monotonic() - 1.0, due, 1)
    assert await _timed_out(due)
    await asyncio.sleep(0)
    assert len(deadlines) == 0 and deadlines._timer is None
