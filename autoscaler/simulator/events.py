"""An event-level reference for the simulator's latency model.

:func:`event_level` serves a pattern with a fixed number of instances request
by request: each request arrives at its own time (the same per-step counts as
:func:`~autoscaler.simulator.engine.simulate` draws for the seed, spread
uniformly within their step); an instance that finishes a batch, or is idle
when a request arrives, takes every request waiting then, up to the profile's
``max_batch``, and runs them for ``t(b)``; a request's latency is its batch's
end minus its arrival. Nothing is approximated, so it is slow (a Python loop
per batch): it is the yardstick the fast model is held to, on short runs.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from autoscaler.simulator.patterns import Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class EventResult:
    arrived: int
    over_share: float  # share of requests answered later than the objective
    p99_ms: float
    mean_batch: float


def arrival_times(
    pattern: Pattern, dt: float, seed: int, horizon_s: float | None = None
) -> FloatArray:
    """Each request's arrival time: the fast model's per-step counts for
    ``seed``, spread uniformly within their step."""
    horizon = pattern.horizon_s if horizon_s is None else horizon_s
    steps = math.ceil(horizon / dt - 1e-9)
    rng = np.random.default_rng(seed)
    counts = pattern.arrivals(dt, steps, rng)
    starts = np.repeat(np.arange(steps, dtype=np.float64) * dt, counts)
    spread = np.random.default_rng(seed + 1_000_003).uniform(0.0, dt, starts.size)
    return np.sort(starts + spread)


def event_level(
    pattern: Pattern,
    capacity: int,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    dt: float = 0.1,
    seed: int = 0,
    objective_ms: float = 100.0,
    horizon_s: float | None = None,
) -> EventResult:
    """Serve ``pattern`` with ``capacity`` instances, request by request."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    arrivals = arrival_times(pattern, dt, seed, horizon_s)
    n = arrivals.size
    latency = np.empty(n)
    free = [0.0] * capacity  # when each instance is next free
    heapq.heapify(free)
    times = {b: float(profile.service_time(float(b))) for b in range(1, profile.max_batch + 1)}
    i = batches = 0
    while i < n:
        start = max(heapq.heappop(free), float(arrivals[i]))
        j = min(int(np.searchsorted(arrivals, start, side="right")), i + profile.max_batch)
        end = start + times[j - i]
        latency[i:j] = end - arrivals[i:j]
        heapq.heappush(free, end)
        i = j
        batches += 1
    if n == 0:
        return EventResult(arrived=0, over_share=0.0, p99_ms=math.nan, mean_batch=0.0)
    return EventResult(
        arrived=n,
        over_share=float(np.mean(latency > objective_ms / 1e3)),
        p99_ms=float(np.percentile(latency, 99)) * 1e3,
        mean_batch=n / batches,
    )


__all__ = ["EventResult", "arrival_times", "event_level"]
