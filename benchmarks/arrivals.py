"""Open-loop traffic: calls started at seeded Poisson arrival times, however
long the earlier ones take (``latency.py``'s client carries its own copy: it
runs in the tree of a previous build too, which may lack this module)."""

from __future__ import annotations

import asyncio
import time
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
    the earlier calls take, and wait for every call to finish."""
    tasks: set[asyncio.Future[None]] = set()
    start = time.perf_counter()
    for i, at in enumerate(offsets(rng, rate, seconds)):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(call(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
