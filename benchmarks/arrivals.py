"""Open-loop traffic: calls started at seeded Poisson arrival times, however
long the earlier ones take (``latency.py``'s client carries its own copy: it
runs in the tree of a previous build too, which may lack this module)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import numpy as np


def offsets(rng: np.random.Generator, rate: float, seconds: float) -> Iterator[float]:
    """Seconds from the start at which the calls of a Poisson stream of
    ``rate`` per second start, for ``seconds``."""
    at = 0.0
    while at < seconds:
        yield at
        at += rng.exponential(1.0 / rate)


async def poisson(
    call: Callable[[int], Awaitable[None]], rng: np.random.Generator, rate: float, seconds: float
) -> None:
    """Start ``call(i)`` for i = 0, 1, ... at :func:`offsets`, however long
    the earlier calls take, and wait for every call to finish. A timer of the
    loop's starts every call due by then and sets the next: a callback per
    arrival, not a sleeping task woken for each. (A timer set from a timer's
    callback runs a turn later at the earliest: one call per timer would fall
    behind whenever a turn of the loop takes longer than the gap between two
    arrivals, and catch up later in a burst the workload does not have.)"""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Future[None]] = set()
    ended: asyncio.Future[None] = loop.create_future()
    start = loop.time()
    at = iter(offsets(rng, rate, seconds))

    def arrive(i: int, offset: float) -> None:
        now = loop.time()
        while True:
            task = asyncio.ensure_future(call(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i, later = i + 1, next(at, None)
            if later is None:
                ended.set_result(None)
                return
            if start + later > now:
                loop.call_at(start + later, arrive, i, later)
                return

    first = next(at, None)
    if first is None:
        return
    loop.call_at(start + first, arrive, 0, first)
    await ended
    await asyncio.gather(*tasks)
