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
IntArray = npt.NDArray[np.int64]


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
    capacity: int | IntArray,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    dt: float = 0.1,
    seed: int = 0,
    objective_ms: float = 100.0,
    horizon_s: float | None = None,
) -> EventResult:
    """Serve ``pattern`` request by request with ``capacity`` instances: a
    number, or the number in service in each step (e.g. a simulated run's
    :attr:`~autoscaler.simulator.engine.SimResult.serving`). An instance
    added serves from the start of its step; one removed finishes its batch
    and leaves. Requests that find no instance wait for one; those still
    waiting at the end count as over the objective."""
    arrivals = arrival_times(pattern, dt, seed, horizon_s)
    steps = math.ceil((pattern.horizon_s if horizon_s is None else horizon_s) / dt - 1e-9)
    if isinstance(capacity, int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        serving = np.full(steps, capacity, dtype=np.int64)
    else:
        serving = np.asarray(capacity, dtype=np.int64)
        if serving.shape != (steps,) or (serving < 0).any():
            raise ValueError(f"capacity: {steps} counts (one per step), none negative")
    n = arrivals.size
    if n == 0:
        return EventResult(arrived=0, over_share=0.0, p99_ms=math.nan, mean_batch=0.0)
    latency, batches = _serve(arrivals, serving, dt, profile)
    late = np.isnan(latency) | (latency > objective_ms / 1e3)
    return EventResult(
        arrived=n,
        over_share=float(np.mean(late)),
        p99_ms=float(np.quantile(np.nan_to_num(latency, nan=np.inf), 0.99, method="inverted_cdf"))
        * 1e3,
        mean_batch=n / max(batches, 1),
    )


def _serve(
    arrivals: FloatArray, serving: IntArray, dt: float, profile: ServiceProfile
) -> tuple[FloatArray, int]:
    """Each request's latency (NaN: never served) and the number of batches."""
    n = arrivals.size
    latency = np.full(n, np.nan)
    change = np.flatnonzero(np.diff(serving, prepend=0))  # steps where the count changes
    moves = [(float(s) * dt, int(serving[s] - (serving[s - 1] if s else 0))) for s in change]
    free: list[float] = []  # when each instance in service is next free
    leaving = 0  # instances to remove as they next come free
    times = {b: float(profile.service_time(float(b))) for b in range(1, profile.max_batch + 1)}
    i = batches = m = 0
    while i < n:
        now = max(free[0] if free else math.inf, float(arrivals[i]))
        if m < len(moves) and moves[m][0] <= now:
            at, delta = moves[m]
            m += 1
            for _ in range(max(delta, 0)):
                if leaving:
                    leaving -= 1
                else:
                    heapq.heappush(free, at)
            leaving += max(-delta, 0)
            continue
        if not free:
            break  # nothing serves again: the rest wait to the end
        f = heapq.heappop(free)
        if leaving:
            leaving -= 1
            continue
        start = max(f, float(arrivals[i]))
        j = min(int(np.searchsorted(arrivals, start, side="right")), i + profile.max_batch)
        end = start + times[j - i]
        latency[i:j] = end - arrivals[i:j]
        heapq.heappush(free, end)
        i = j
        batches += 1
    return latency, batches


__all__ = ["EventResult", "arrival_times", "event_level"]
