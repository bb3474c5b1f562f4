"""The least instance-hours any policy that cannot see the future spends on
``bursty`` traffic within a share over the objective, on average over the
pattern's schedules.

An instance that serves at time ``x`` was launched by ``x - start_s`` (the
warm start plus the model load) and is billed from its launch, so through the
whole of the ``start_s`` before ``x``. A burst's start cannot be known before
it comes, so through the first ``start_s`` of a burst beginning at ``g`` the
fleet serves with at most the instances billed just before ``g``, which a
policy chose knowing only the time since the last burst ended (the gaps and
bursts of :data:`~autoscaler.simulator.patterns.BURSTS` are independent draws:
nothing else in the past tells when the next burst comes).

The bound grants every policy more than it has: it knows the generator (the
distributions of gaps, durations and peaks), every launch serves after
``start_s`` (no cold boots, no limit to the warm pool), instances removed are
billed no further (no minimum), and after a burst's first ``start_s`` it
resizes every second knowing the rate, paying only the ``start_s`` each
instance launched in the burst was billed before it served. Requests over the
objective at a given rate and instance count come from the stationary latency
table, as in :mod:`autoscaler.simulator.frontier`.

With a price ``lam`` per instance-second, the best such policy picks, for
every second ``s`` of a gap, the instances ``b`` that minimise
``lam * b * P(gap > s) + P(burst starts in s) * E[cost of a burst met with b]``
(+ the misses of the base traffic); a burst forced at the gap's cap
(``gap_max_s``) is met with the fewest instances held through the
``start_s`` before the cap. The least cost ``L(lam) = lam * H + M`` over all
such policies bounds every policy: one that misses at most ``T`` requests
spends ``H >= (L(lam) - T) / lam`` instance-seconds, for every ``lam``
(weak duality); the bound is the largest of these over a grid of prices.
Figures are per gap-and-burst cycle, scaled to instance-hours per hour of
traffic (long-run averages of the renewal process).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from autoscaler.simulator.frontier import misses
from autoscaler.simulator.patterns import BURSTS, BurstShape
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile

FloatArray = npt.NDArray[np.float64]

_MOST = 24  # instances: beyond what the largest burst can use
_PRICES = np.geomspace(0.01, 1000.0, 201)  # requests per instance-second


@dataclass(frozen=True, kw_only=True, slots=True)
class CausalBound:
    """At least ``instance_hours_per_hour`` for at most ``over_share`` over."""

    over_share: float
    instance_hours_per_hour: float
    price: float  # the price (requests per instance-second) that gave the bound
    requests_per_hour: float


def _gap_odds(shape: BurstShape) -> tuple[FloatArray, FloatArray, float]:
    """Per whole second ``s`` of a gap: P(gap > s + 1) and P(a burst starts
    in [s, s + 1)); and P(the gap reaches its cap)."""
    s = np.arange(int(shape.gap_max_s) + 1, dtype=np.float64)
    survive = (shape.gap_min_s / np.maximum(s, shape.gap_min_s)) ** shape.gap_shape  # P(gap > s)
    capped = float(survive[-1])
    survive[-1] = 0.0  # the gap ends at its cap for sure
    ending = survive[:-1] - survive[1:]
    ending[-1] -= capped  # the cap's own share is a burst forced at the cap
    return survive[1:], ending, capped


def _burst_seconds(
    shape: BurstShape, strata: int
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """The rate in each second of bursts standing for the distribution of
    bursts (``strata`` durations by ``strata`` peaks, equally likely: the
    middles of equally likely slices of each draw), the second of its burst
    each row is, and which burst."""
    u = (np.arange(strata, dtype=np.float64) + 0.5) / strata
    low, high = shape.duration_s
    durations = low + (high - low) * u
    peaks = shape.peak_quantile(u)
    rates: list[FloatArray] = []
    into: list[FloatArray] = []
    for duration in durations.tolist():
        t = np.arange(0.5, duration, 1.0)
        for peak in peaks.tolist():
            rates.append(shape.base + shape.profile(t, 0.0, duration, peak))
            into.append(t)
    which = np.repeat(np.arange(len(rates)), [len(t) for t in into])
    return np.concatenate(rates), np.concatenate(into), which


def _per_burst(rows: FloatArray, which: npt.NDArray[np.int64], bursts: int) -> FloatArray:
    """The sums of ``rows`` per burst (``which``, in increasing order)."""
    out = np.zeros((bursts, rows.shape[1]))
    if len(which):
        starts = np.flatnonzero(np.diff(which, prepend=-1))
        out[which[starts]] = np.add.reduceat(rows, starts, axis=0)
    return out


def _burst_cost(
    cost: FloatArray, early: npt.NDArray[np.bool_], which: npt.NDArray[np.int64], boot: float
) -> FloatArray:
    """The mean over bursts of the least cost of a burst met with ``b``
    instances (the columns): at most ``b`` serve through its first
    ``start_s`` (the ``early`` rows); after it up to any ``C``, each one more
    than ``b`` billed ``boot`` (its price times ``start_s``) for its start."""
    bursts = int(which[-1]) + 1
    first = _per_burst(np.minimum.accumulate(cost[early], axis=1), which[early], bursts)
    after = _per_burst(np.minimum.accumulate(cost[~early], axis=1), which[~early], bursts)
    counts = np.arange(cost.shape[1], dtype=np.float64)
    started = boot * np.maximum(counts[None, :] - counts[:, None], 0.0)  # (b, C)
    then = (after[:, None, :] + started[None, :, :]).min(axis=2)  # (burst, b)
    return np.asarray((first + then).mean(axis=0))


@dataclass(frozen=True, slots=True)
class _Costs:
    """What the bound needs that does not hang on the share over: per price
    of :data:`_PRICES`, the least cost of a cycle; the mean requests in a
    cycle and its mean length (s)."""

    least: FloatArray
    requests: float
    cycle_s: float


@functools.lru_cache(maxsize=8)
def _least_costs(
    shape: BurstShape, profile: ServiceProfile, objective_ms: float, start_s: float, strata: int
) -> _Costs:
    survive, ending, capped = _gap_odds(shape)
    rates, into, which = _burst_seconds(shape, strata)
    # requests/s over the objective grow with the rate: a rate taken down to
    # a grid of 0.25 req/s keeps the bound a bound, at a fraction of the cost
    grid = np.arange(0.0, float(rates.max()) + 0.25, 0.25)
    burst_miss = misses(grid, _MOST, profile, objective_ms)[(rates / 0.25).astype(np.int64)]
    base_miss = misses(np.array([shape.base]), _MOST, profile, objective_ms)[0]
    early = into < start_s
    counts = np.arange(_MOST + 1, dtype=np.float64)
    late = np.arange(len(survive)) >= shape.gap_max_s - start_s
    least = np.empty(len(_PRICES))
    for i, lam in enumerate(_PRICES.tolist()):
        met = _burst_cost(lam * counts[None, :] + burst_miss, early, which, lam * start_s)
        idle = lam * counts + base_miss
        per_second = survive[:, None] * idle[None, :] + ending[:, None] * met[None, :]
        total = np.inf
        for k in range(_MOST + 1):  # held through the start_s before the cap
            floor = np.where(late[:, None] & (counts[None, :] < k), np.inf, per_second)
            total = min(total, float(floor.min(axis=1).sum()) + capped * float(met[k]))
        least[i] = total
    gap_s = shape.mean_gap_s()
    requests = shape.base * gap_s + shape.mean_requests()
    return _Costs(least=least, requests=requests, cycle_s=gap_s + shape.mean_duration_s())


def least_hours(
    over_share: float,
    *,
    shape: BurstShape = BURSTS,
    profile: ServiceProfile = DEFAULT_PROFILE,
    objective_ms: float = 100.0,
    start_s: float = 40.0,
    strata: int = 48,
) -> CausalBound:
    """The bound of the module for at most ``over_share`` over the objective."""
    costs = _least_costs(shape, profile, objective_ms, start_s, strata)
    bounds = (costs.least - over_share * costs.requests) / _PRICES / costs.cycle_s  # instances
    i = int(np.argmax(bounds))
    if not bounds[i] > 0.0:
        return CausalBound(
            over_share=over_share, instance_hours_per_hour=0.0, price=0.0, requests_per_hour=0.0
        )
    return CausalBound(
        over_share=over_share,
        instance_hours_per_hour=float(bounds[i]),
        price=float(_PRICES[i]),
        requests_per_hour=costs.requests / costs.cycle_s * 3600.0,
    )


__all__ = ["CausalBound", "least_hours"]
