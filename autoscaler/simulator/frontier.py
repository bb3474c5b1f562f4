"""The least share of requests over the objective any plan can have on a
budget of instance-hours.

A plan that knows the pattern's rate and changes its capacity every
``slot_s`` (a minute) for free, booting nothing, spends the budget where it
saves the most requests: every slot gets the fewest instances that can carry
its rate (fewer and the slot's queue would grow without end), then each
further instance-slot goes, one at a time, to the slot where it saves the
most requests over the objective, by the stationary latency table
(:mod:`autoscaler.simulator.stationary`). No policy that has to boot
instances, or that only reacts to the traffic, does better; so where even
this plan misses a goal on some budget, no policy meets it there.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import numpy.typing as npt

from autoscaler.simulator.patterns import Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile
from autoscaler.simulator.stationary import table_for

FloatArray = npt.NDArray[np.float64]

_MOST = 256  # instances in one slot, at most


def misses(
    rates: FloatArray, most: int, profile: ServiceProfile, objective_ms: float
) -> FloatArray:
    """Requests/s over the objective in each slot (a row) with 0 to ``most``
    instances (the columns): all of them with none or too few to keep up."""
    counts = np.arange(1, most + 1, dtype=np.float64)
    rate = np.repeat(rates, most)
    c = np.tile(counts, len(rates))
    u = rate / (c * profile.max_rps)
    table = table_for(profile)
    over = table.over(table.curves(u, c), np.full(u.size, objective_ms / 1e3))
    over = np.where(u >= 1.0, 1.0, over).reshape(len(rates), most)
    return np.concatenate([rates[:, None], rates[:, None] * over], axis=1)


def least_over(
    pattern: Pattern,
    instance_hours: float,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    objective_ms: float = 100.0,
    slot_s: float = 60.0,
    horizon_s: float | None = None,
) -> float:
    """The least share over the objective on ``instance_hours`` (see the
    module). A budget below what keeps up with every slot raises ``ValueError``."""
    rates = pattern.rates(slot_s, horizon_s)
    need = np.where(rates > 0, np.floor(rates / (0.975 * profile.max_rps)) + 1, 0).astype(np.int64)
    if need.max(initial=0) >= _MOST:
        raise ValueError(f"a slot needs more than {_MOST} instances")
    spare = math.floor(instance_hours * 3600.0 / slot_s + 1e-9) - int(need.sum())
    if spare < 0:
        least = float(need.sum()) * slot_s / 3600.0
        raise ValueError(f"{instance_hours:g} instance-hours cannot keep up: at least {least:g}")
    most = int(min(_MOST, 4 * need.max(initial=0) + 16))  # past the point of no gain
    table = misses(rates, most, profile, objective_ms)
    alloc = need.copy()
    gains = [(-(table[t, a] - table[t, a + 1]), t) for t, a in enumerate(alloc.tolist())]
    heapq.heapify(gains)
    for _ in range(spare):
        gain, t = heapq.heappop(gains)
        if gain >= 0:  # nothing left to save
            break
        alloc[t] += 1
        if alloc[t] < most:
            heapq.heappush(gains, (-(table[t, alloc[t]] - table[t, alloc[t] + 1]), t))
    total = float(rates.sum())
    return float(table[np.arange(len(rates)), alloc].sum()) / total if total else 0.0


__all__ = ["least_over", "misses"]
