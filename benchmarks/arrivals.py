"""Open-loop traffic: calls started at seeded Poisson arrival times, however
long the earlier ones take (``latency.py``'s client carries its own copy: it
runs in the tree of a previous build too, which may lack this module)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np


async def poisson(
    call: Callable[[int], Awaitable[None]], rng: np.random.Generator, rate: float, seconds: float
) -> None:
    """Start ``call(i)`` for i = 0, 1, ... at Poisson arrivals of ``rate`` per
    second for ``seconds``, and wait for every call to finish."""
    tasks: set[asyncio.Future[None]] = set()
    at = time.perf_counter()
    end, i = at + seconds, 0
    while at < end:
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(call(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        at += rng.exponential(1.0 / rate)
        i += 1
    await asyncio.gather(*tasks)
