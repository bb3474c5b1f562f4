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
    the earlier calls take, and wait for every call to finish. Each call is
    started by a timer of the loop's that also sets the next one: a callback
    per call, not a sleeping task woken for each."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Future[None]] = set()
    ended: asyncio.Future[None] = loop.create_future()
    start = loop.time()
    at = iter(offsets(rng, rate, seconds))

    def arrive(i: int) -> None:
        task = asyncio.ensure_future(call(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        later = next(at, None)
        if later is None:
            ended.set_result(None)
        else:
            loop.call_at(start + later, arrive, i + 1)

    first = next(at, None)
    if first is None:
        return
    loop.call_at(start + first, arrive, 0)
    await ended
    await asyncio.gather(*tasks)
