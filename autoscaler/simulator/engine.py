"""A discrete-time simulation of the fleet under a scaling policy.

Time advances in steps of ``dt_s`` (100 ms). Each step:

- **arrivals**: a Poisson count around the pattern's rate; the counts are drawn
  once per run from the seed, so every policy compared sees the same requests.
- **queue**: FIFO, of *cohorts* (the arrivals of one step, with their arrival
  time), bounded by ``queue_limit``; requests refused when it is full are
  dropped (the broker's ``Overloaded``).
- **instances**: ``c`` in service share the queue. Each runs batches back to
  back, taking what waits, up to the profile's ``max_batch``; a run takes
  ``t(b)`` from the service-time profile. Offered ``λ`` requests/s, an instance
  settles at the batch size ``b = λ t(b)`` (the requests that arrive during one
  run make the next batch); with a backlog, each takes its share of it too.
  Within a step the queue drains as a fluid at ``c b / t(b)`` requests/s.
- **latency** of a request, by what it meets:

  - *no backlog* (at most a batch per instance waits, the queue's own
    Poisson fluctuation): the stationary latency of the ``c`` instances in
    service offered the pattern's rate at that moment
    (:mod:`autoscaler.simulator.stationary`: measured request by request, as
    the event-level reference serves them, and interpolated). The cohort is
    split at that distribution's quantiles, and its share over the objective
    is read from it. It does not depend on ``dt``: the step's own Poisson
    count does not enter it, so a smaller step no longer means noisier
    batches;
  - *a backlog* (more than a batch per instance waits): its wait in the FIFO
    (departure by fluid position, exact per cohort) + the rest of the batch
    already running when it arrived (uniform over ``t(b)`` when the instance
    is busy, none when idle; each cohort split into 8 equal parts at that
    distribution's octiles) + its own batch ``t(b)``.

  :func:`~autoscaler.simulator.events.event_level` replays a run's arrivals
  and its instances in service request by request: the two agree within a
  few percent on every built-in pattern and step (``tests/autoscaler``).
- **capacity**: the policy is asked every ``poll_interval_s`` with a
  :class:`~autoscaler.types.Snapshot` of what the live signals would read:
  busy fraction and GPU utilization as workers report them (busy time, so
  near 1.0 whenever an instance batches), saturation as busy time times the
  fill of the batches, and the profile's sustainable rate as the per-instance
  throughput;
  a new instance serves after ``warm_start_s`` when the warm pool has one
  stopped and ready (``warm_pool_size``), else after ``boot_delay_s`` (a cold
  boot), plus ``model_load_s`` either way. A warm instance taken is replaced
  in the pool after a cold boot; an instance scaled in goes back to the pool
  while it has room. Scale-in removes booting instances first (the last to be
  ready first), then in-service ones, which finish their batch and leave.
- **billing**: per second from launch to removal, booting included, with
  ``billing_minimum_s`` (EC2: 60 s) charged for an instance removed sooner.
  Stopped instances in the warm pool are not billed (only their volumes are).
- **spot interruptions**: with ``spot_interruptions_per_hour`` set, each
  instance in service is interrupted at that rate (seeded, drawn at each
  poll). It gets EC2's notice (``spot_notice_s``, two minutes), serves through
  it and is then gone. The group keeps its desired capacity, so it launches a
  replacement, at the notice with capacity rebalancing (``capacity_rebalance``,
  as the Terraform deployment sets it) or once the instance is gone without.
  The policy sees the replacement as pending and the lost instance leave.
- **deadlines**: with ``deadline_s`` set, a request that has waited that long
  in the queue is dropped there (the worker would discard it unprocessed) and
  counts as over the objective (``expired``).

When nothing waits and every step's arrivals stay below what the instances
can serve, a whole stretch of steps is computed at once with numpy; only
stretches with a queue are stepped one by one. A simulated day takes seconds.
Requests still queued when the horizon ends are counted as dropped.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from autoscaler.baselines import StaticPolicy
from autoscaler.ewma import Ewma
from autoscaler.simulator.patterns import Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile
from autoscaler.simulator.stationary import WEIGHTS, LatencyTable, table_for
from autoscaler.types import Policy, Snapshot

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
S = TypeVar("S")

_SPLIT = 8  # parts per cohort, at the octiles of the residual-service distribution
_OCTILES = (np.arange(_SPLIT, dtype=np.float64) + 0.5) / _SPLIT
_EDGES = np.geomspace(1e-4, 1e5, 1201)  # latency histogram bins, seconds (1.7% wide)
_LOG_EDGE0 = math.log(float(_EDGES[0]))
_LOG_STEP = (math.log(float(_EDGES[-1])) - _LOG_EDGE0) / (len(_EDGES) - 1)
_FLUSH_COHORTS = 50_000  # cohorts buffered before they are binned


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """How the simulated fleet behaves; defaults documented in ``docs/policies.md``."""

    dt_s: float = 0.1
    """Simulation step."""
    poll_interval_s: float = 5.0
    """Seconds between policy decisions (the control loop's default)."""
    boot_delay_s: float = 120.0
    """A cold boot, from launch to serving: instance start, image pull, container
    start (``model_load_s`` comes on top)."""
    warm_pool_size: int = 0
    """Stopped, pre-initialized instances kept ready to start (0: no warm pool)."""
    warm_start_s: float = 40.0
    """From taking an instance from the warm pool to its container running."""
    warm_pool_auto: bool = False
    """Size the warm pool at every poll as the policy suggests, never below
    ``warm_pool_size`` (the ``ec2`` actuator's ``warm_pool = "auto"``)."""
    model_load_s: float = 0.0
    """Loading and warming the model, after a cold boot or a warm start alike."""
    billing_minimum_s: float = 60.0
    """Least time an instance is billed for (EC2 bills per second, at least 60 s)."""
    deadline_s: float | None = None
    """A request that waited this long in the queue is dropped (None: requests
    wait for as long as it takes)."""
    latency_objective_ms: float = 100.0
    price_per_hour: float = 1.006
    """Per instance (g5.xlarge on-demand, us-east-1)."""
    queue_limit: int = 50_000
    """Requests the broker holds before refusing more."""
    arrival_smoothing_s: float = 10.0
    """Time constant of the arrival-rate EWMA in the snapshot (as the live signals)."""
    seed: int = 0
    initial_capacity: int | None = None
    """Instances in service at the start; default: enough for the first minute's
    rate at the profile's sustainable throughput (static policies: their count)."""
    timeline_points: int = 600
    """About how many points the timeline (and so the plot) has."""
    spot_interruptions_per_hour: float = 0.0
    """Interruptions per instance-hour in service (0: on-demand instances)."""
    spot_notice_s: float = 120.0
    """From an interruption's notice to the instance's end (EC2: two minutes)."""
    capacity_rebalance: bool = True
    """Launch an interrupted instance's replacement at the notice (the group's
    capacity rebalancing), not once the instance is gone."""

    def __post_init__(self) -> None:
        if not self.dt_s > 0 or self.poll_interval_s < self.dt_s:
            raise ValueError("need dt_s > 0 and poll_interval_s >= dt_s")
        if self.boot_delay_s < 0 or self.queue_limit < 1 or not self.latency_objective_ms > 0:
            raise ValueError("boot_delay_s >= 0, queue_limit >= 1, latency_objective_ms > 0")
        if min(self.warm_pool_size, self.warm_start_s, self.model_load_s) < 0:
            raise ValueError("warm_pool_size, warm_start_s and model_load_s must not be negative")
        if self.billing_minimum_s < 0 or (self.deadline_s is not None and not self.deadline_s > 0):
            raise ValueError("billing_minimum_s >= 0 and deadline_s > 0 (or None)")
        if self.spot_interruptions_per_hour < 0 or self.spot_notice_s < 0:
            raise ValueError("spot_interruptions_per_hour and spot_notice_s must not be negative")


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeline:
    t_s: FloatArray
    offered_rps: FloatArray
    desired: FloatArray
    in_service: FloatArray
    backlog: FloatArray
    p99_ms: FloatArray  # NaN where nothing was answered


@dataclass(frozen=True, kw_only=True, slots=True)
class SimResult:
    policy: str
    pattern: str
    horizon_s: float
    arrived: int
    served: int
    dropped: int  # refused by a full queue, expired, or still queued at the end
    expired: int  # dropped from the queue past their deadline
    over_objective: float  # served over the objective, plus dropped
    p50_ms: float
    p95_ms: float
    p99_ms: float
    instance_hours: float
    cost: float
    peak_backlog: int
    actions: int  # decisions that changed the desired capacity
    mean_busy: float  # mean busy fraction of instances in service
    mean_queued: float  # time-average of requests waiting in the queue
    mean_queue_wait_s: float  # mean time a served request waited in the queue
    timeline: Timeline = field(repr=False)
    final_state: Any = field(default=None, repr=False, compare=False)
    """The policy's state at the end (to carry what it learned into another run)."""
    interrupted: int = 0
    """Spot interruptions during the run."""
    mean_warm_pool: float = 0.0
    """Instances stopped in the warm pool, time-average (their volumes are billed)."""
    serving: IntArray | None = field(default=None, repr=False, compare=False)
    """Instances in service in each step (to replay the run's capacity in
    :func:`~autoscaler.simulator.events.event_level`)."""

    @property
    def over_share(self) -> float:
        return self.over_objective / self.arrived if self.arrived else 0.0


def _percentile(hist: FloatArray, q: float) -> float:
    total = float(hist.sum())
    if total <= 0:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, q * total))
    i = min(i, len(hist) - 1)
    before = float(cum[i - 1]) if i > 0 else 0.0
    frac = (q * total - before) / float(hist[i]) if hist[i] > 0 else 0.5
    lo, hi = _EDGES[i], _EDGES[i + 1]
    return float(lo * (hi / lo) ** min(max(frac, 0.0), 1.0))


def _bin_of(lat: FloatArray) -> IntArray:
    """The histogram bin of each latency: the last edge at or below it
    (``searchsorted(_EDGES, lat, side="right") - 1``, clipped to the bins),
    from its logarithm, checked against the edges."""
    bins = len(_EDGES) - 1
    guess = np.floor((np.log(np.maximum(lat, 1e-300)) - _LOG_EDGE0) / _LOG_STEP)
    idx = np.clip(guess, 0, bins - 1).astype(np.int64)
    idx -= (lat < _EDGES[idx]) & (idx > 0)
    idx += (lat >= _EDGES[idx + 1]) & (idx < bins - 1)
    return idx


_Batch = tuple[FloatArray, FloatArray | IntArray, FloatArray, FloatArray, IntArray]
"""Buffered cohorts: five arrays of one length (see :meth:`_Recorder.add`)."""


@dataclass(slots=True)
class _Recorder:
    """Latency histograms: overall and per timeline bucket. Cohorts are
    buffered and binned many at a time (:meth:`flush`); read ``hist``,
    ``per_bucket`` and ``over`` after the last flush.

    Two kinds of cohort: *queued* ones (they waited in the FIFO behind a
    backlog: their wait, the rest of a running batch, their own batch) and
    *stationary* ones (no backlog when they arrived: the latency that ``c``
    instances offered the step's rate settle into, from the
    :class:`~autoscaler.simulator.stationary.LatencyTable`)."""

    objective_s: float
    buckets: int
    table: LatencyTable
    hist: FloatArray = field(init=False)
    per_bucket: FloatArray = field(init=False)
    over: float = 0.0
    _pending: list[_Batch] = field(init=False, default_factory=list)
    _stationary: list[_Batch] = field(init=False, default_factory=list)
    _steps: list[tuple[FloatArray, IntArray, IntArray, int]] = field(
        init=False, default_factory=list
    )
    _pending_n: int = 0

    def __post_init__(self) -> None:
        self.hist = np.zeros(len(_EDGES) - 1)
        self.per_bucket = np.zeros((self.buckets, len(_EDGES) - 1))

    def add(
        self,
        base: FloatArray,
        weight: FloatArray | IntArray,
        run: FloatArray,
        rho: FloatArray,
        bucket: IntArray,
    ) -> None:
        """Queued cohorts: latency before the residual (``base``), their size,
        the batch run time and the busy fraction that sets the residual
        distribution."""
        if base.size == 0:
            return
        self._pending.append((base, weight, run, rho, bucket))
        self._count(base.size)

    def add_stationary(
        self,
        base: FloatArray,
        weight: FloatArray | IntArray,
        u: FloatArray,
        c: FloatArray,
        bucket: IntArray,
    ) -> None:
        """Stationary cohorts: a wait before (``base``), their size, the load
        (``u``, of the peak throughput) and the instances in service."""
        if base.size == 0:
            return
        self._stationary.append((base, weight, u, c, bucket))
        self._count(base.size)

    def add_steps(self, u: FloatArray, n: IntArray, bucket: IntArray, c: int) -> None:
        """Steps without a queue, ``c`` in service: each step's ``n``
        arrivals meet the stationary latency at its load ``u``."""
        self._steps.append((u, n, bucket, c))
        self._count(n.size)

    def _count(self, n: int) -> None:
        self._pending_n += n
        if self._pending_n >= _FLUSH_COHORTS:
            self.flush()

    def _merged_steps(self) -> None:
        """The buffered steps as stationary cohorts, one per load (to 1/4096
        of the peak), instances in service and timeline bucket, with the
        summed arrivals as weight (exact: counts of requests)."""
        steps, self._steps = self._steps, []
        u = np.rint(np.concatenate([p[0] for p in steps]) * 4096.0).astype(np.int64)
        n, bucket = (np.concatenate([p[i] for p in steps]) for i in (1, 2))
        c = np.concatenate([np.full(len(p[1]), p[3], dtype=np.int64) for p in steps])
        key = (bucket * (int(c.max()) + 1) + c) * (int(u.max()) + 1) + u
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        weight = np.bincount(inverse.ravel(), weights=n)
        self._stationary.append(
            (
                np.zeros(first.size),
                weight,
                u[first] / 4096.0,
                c[first].astype(np.float64),
                bucket[first],
            )
        )

    def flush(self) -> None:
        """Bin every buffered cohort."""
        if self._steps:
            self._merged_steps()
        if self._pending:
            self._flush_queued()
        if self._stationary:
            self._flush_stationary()
        self._pending_n = 0

    def _flush_queued(self) -> None:
        base, weight, run, rho = (np.concatenate([p[i] for p in self._pending]) for i in range(4))
        bucket = np.concatenate([p[4] for p in self._pending])
        self._pending.clear()
        r = np.maximum(rho, 1e-12)[:, None]
        resid = np.clip((_OCTILES[None, :] - (1.0 - r)) / r, 0.0, 1.0) * run[:, None]
        lat = base[:, None] + resid
        self._bin(lat, weight[:, None] / _SPLIT * np.ones(_SPLIT), bucket)
        self.over += float((weight[:, None] / _SPLIT * (lat > self.objective_s)).sum())

    def _flush_stationary(self) -> None:
        base, weight, u, c = (np.concatenate([p[i] for p in self._stationary]) for i in range(4))
        bucket = np.concatenate([p[4] for p in self._stationary])
        self._stationary.clear()
        some = weight > 0
        if not some.all():  # steps without arrivals
            base, weight, u, c, bucket = (a[some] for a in (base, weight, u, c, bucket))
            if base.size == 0:
                return
        curves = self.table.curves(u, c)
        self._bin(base[:, None] + curves, weight[:, None] * WEIGHTS[None, :], bucket)
        over = self.table.over(curves, self.objective_s - base)
        self.over += float((weight * over).sum())

    def _bin(self, lat: FloatArray, w: FloatArray, bucket: IntArray) -> None:
        """Add latencies ``lat`` (a row per cohort) of weights ``w`` (the same
        shape) to the histograms."""
        parts = lat.shape[1]
        lat, w = lat.ravel(), w.ravel()
        bins = len(_EDGES) - 1
        idx = _bin_of(lat)
        self.hist += np.bincount(idx, weights=w, minlength=bins)
        lo, hi = int(bucket.min()), int(bucket.max())
        flat = (np.repeat(bucket, parts) - lo) * bins + idx
        counts = np.bincount(flat, weights=w, minlength=(hi - lo + 1) * bins)
        self.per_bucket[lo : hi + 1] += counts.reshape(hi - lo + 1, bins)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Run:
    """What stays fixed during one run: the arrivals, the step counts and the
    profile's constants."""

    cfg: SimConfig
    profile: ServiceProfile
    dt: float
    rates: FloatArray
    arrivals: npt.NDArray[np.int64]
    ticks: int
    poll_ticks: int
    bucket_ticks: int
    n_buckets: int
    mu_max: float
    b_max: float
    t1: float
    tick_bucket: IntArray  # the timeline bucket of each step
    serving: IntArray  # instances in service in each step (filled as the run goes)
    poll_sums: list[int]  # arrivals in each poll interval
    poll_max: list[int]  # the most arrivals in one step of each poll interval

    @classmethod
    def make(
        cls, pattern: Pattern, profile: ServiceProfile, cfg: SimConfig, horizon_s: float | None
    ) -> _Run:
        dt = cfg.dt_s
        if pattern.timestamps is None:  # hashable: drawn once for every policy
            rates, arrivals = _drawn(pattern, dt, horizon_s, cfg.seed)
        else:
            rates = pattern.rates(dt, horizon_s)
            arrivals = pattern.arrivals(dt, len(rates), np.random.default_rng(cfg.seed))
        ticks = len(rates)
        poll_ticks = max(1, round(cfg.poll_interval_s / dt))
        bucket_ticks = poll_ticks * max(1, math.ceil(ticks / poll_ticks / cfg.timeline_points))
        return cls(
            cfg=cfg,
            profile=profile,
            dt=dt,
            rates=rates,
            arrivals=arrivals,
            ticks=ticks,
            poll_ticks=poll_ticks,
            bucket_ticks=bucket_ticks,
            n_buckets=math.ceil(ticks / bucket_ticks),
            mu_max=profile.max_rps,
            b_max=float(profile.max_batch),
            t1=float(profile.service_time(1.0)),
            tick_bucket=np.arange(ticks, dtype=np.int64) // bucket_ticks,
            serving=np.zeros(ticks, dtype=np.int64),
            poll_sums=_per_poll(arrivals, poll_ticks, "sum"),
            poll_max=_per_poll(arrivals, poll_ticks, "max"),
        )


def _per_poll(arrivals: IntArray, poll_ticks: int, how: str) -> list[int]:
    """Each poll interval's arrivals summed, or their most in one step."""
    pad = (-len(arrivals)) % poll_ticks
    grid = np.concatenate([arrivals, np.zeros(pad, dtype=np.int64)]).reshape(-1, poll_ticks)
    return (grid.sum(axis=1) if how == "sum" else grid.max(axis=1)).tolist()  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4)
def _drawn(
    pattern: Pattern, dt: float, horizon_s: float | None, seed: int
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """The pattern's rate per step and the arrivals drawn around it with
    ``seed``: the same for every policy compared on them, so drawn once
    (read-only arrays)."""
    rates = pattern.rates(dt, horizon_s)
    arrivals = pattern.arrivals(dt, len(rates), np.random.default_rng(seed))
    rates.flags.writeable = False
    arrivals.flags.writeable = False
    return rates, arrivals


@dataclass(slots=True)
class _Fleet:
    """The simulated fleet and queue, and what is counted over the run."""

    in_service: int
    desired: int
    booting: list[tuple[int, int]] = field(default_factory=list)  # (ready tick, launch tick)
    serving_since: list[int] = field(default_factory=list)  # launch ticks of those in service
    warm: int = 0  # stopped instances ready in the warm pool
    pool_size: int = 0  # the warm pool's size: ready plus being prepared
    pool_area: float = 0.0  # instance-seconds stopped in the pool (volumes billed only)
    leaving: list[int] = field(default_factory=list)  # ticks interrupted instances end
    interrupted: int = 0
    refills: list[int] = field(default_factory=list)  # ticks pool replacements are ready
    expired: int = 0
    queue: deque[list[float]] = field(default_factory=deque)  # [arrival time, count]
    queued: int = 0
    credit: float = 0.0
    inflight: float = 0.0
    served: int = 0
    dropped: int = 0
    instance_s: float = 0.0
    actions: int = 0
    peak_backlog: int = 0
    busy_total: float = 0.0
    service_total: float = 0.0
    queue_area: float = 0.0  # request-seconds spent waiting in the queue
    wait_area: float = 0.0  # the same, summed over served requests' waits


@dataclass(slots=True)
class _Usage:
    """Instance-seconds of one poll interval: busy, saturated (busy times
    batch fill), serving."""

    busy_s: float = 0.0
    sat_s: float = 0.0
    serving_s: float = 0.0


@dataclass(slots=True)
class _Cohorts:
    """Cohorts served during a stretch of slow steps, recorded at its end."""

    bases: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    rhos: list[float] = field(default_factory=list)
    bks: list[int] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    """Per cohort: the load it met (of the peak throughput) if it arrived
    without a backlog (a stationary cohort), else -1."""


@dataclass(slots=True)
class _Polls:
    """Per-poll records for the timeline."""

    t: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    in_service: list[int] = field(default_factory=list)
    backlog: list[float] = field(default_factory=list)


def _initial_capacity(policy: Policy[Any], run: _Run) -> int:
    """The configured start, a static policy's count, or enough for the first
    minute's rate."""
    if run.cfg.initial_capacity is not None:
        return run.cfg.initial_capacity
    if isinstance(policy, StaticPolicy):
        return policy.config.capacity
    first = float(run.rates[: max(1, round(60.0 / run.dt))].mean())
    return max(1, math.ceil(first / run.profile.sustainable_rps))


def simulate(
    policy: Policy[Any],
    pattern: Pattern,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    config: SimConfig | None = None,
    horizon_s: float | None = None,
    name: str | None = None,
    initial_state: S | None = None,
) -> SimResult:
    """Replay ``pattern`` against ``policy``; deterministic for ``config.seed``.
    ``initial_state``: the policy's state to start from (default: its initial
    one), e.g. what an earlier run learned (:attr:`SimResult.final_state`)."""
    cfg = config or SimConfig()
    run = _Run.make(pattern, profile, cfg, horizon_s)
    rec = _Recorder(
        objective_s=cfg.latency_objective_ms / 1e3, buckets=run.n_buckets, table=table_for(profile)
    )
    initial = _initial_capacity(policy, run)
    start = -(10**9)  # the initial instances have run long enough
    fleet = _Fleet(
        in_service=initial,
        desired=initial,
        serving_since=[start] * initial,
        warm=cfg.warm_pool_size,
        pool_size=cfg.warm_pool_size,
    )
    polls = _Polls()
    arrival = Ewma(cfg.arrival_smoothing_s)
    state = policy.initial_state() if initial_state is None else initial_state
    spot = np.random.default_rng([cfg.seed, 1]) if cfg.spot_interruptions_per_hour > 0 else None
    k = 0
    while k < run.ticks:
        k_start, k_end = k, min(k + run.poll_ticks, run.ticks)
        if spot is not None:
            _interrupt(run, fleet, spot, k, (k_end - k) * run.dt)
        poll_arrivals = run.poll_sums[k // run.poll_ticks]
        use = _Usage()
        k = _advance(run, fleet, rec, use, k, k_end)
        interval = (k_end - k_start) * run.dt
        smoothed = arrival.update(poll_arrivals / max(interval, run.dt), interval)
        state = _policy_turn(run, fleet, use, policy, state, k, smoothed, polls)
    # requests still waiting at the end were never answered
    fleet.dropped += fleet.queued
    rec.flush()
    result = _result(run, fleet, rec, polls, policy=name or policy.name, pattern=pattern.name)
    return replace(
        result,
        final_state=state,
        interrupted=fleet.interrupted,
        mean_warm_pool=fleet.pool_area / max(result.horizon_s, 1e-9),
        serving=run.serving,
    )


# ---------------------------------------------------------------------------- serving


def _advance(run: _Run, fleet: _Fleet, rec: _Recorder, use: _Usage, k: int, k_end: int) -> int:
    """Serve from tick ``k`` to ``k_end``, a stretch between boot completions at
    a time; returns ``k_end``."""
    dt = run.dt
    while k < k_end:
        _finish_boots(fleet, k)
        if fleet.leaving:
            _finish_interrupted(run, fleet, k)
        seg_end = min([k_end, *(r for r, _ in fleet.booting if r > k)])
        if fleet.leaving:
            seg_end = min([seg_end, *(t for t in fleet.leaving if t > k)])
        c = fleet.in_service
        run.serving[k:seg_end] = c
        n = run.arrivals[k:seg_end]
        fleet.instance_s += (c + len(fleet.booting)) * (seg_end - k) * dt
        whole = seg_end - k == run.poll_ticks and k % run.poll_ticks == 0  # a whole poll interval
        if c > 0 and fleet.queued == 0:
            top = run.poll_max[k // run.poll_ticks] if whole else int(n.max())
            if top / (dt * c) < 0.98 * run.mu_max:
                total = run.poll_sums[k // run.poll_ticks] if whole else int(n.sum())
                _fast_stretch(run, fleet, rec, use, (k, seg_end, c), n, total)
                k = seg_end
                continue
        if c == 0:
            cohorts = _Cohorts()
            for kk, nk in enumerate(n.tolist(), start=k):
                _tick_without_capacity(run, fleet, kk, nk)
        else:
            cohorts = _ticks(run, fleet, use, k, n.tolist(), c)
        _record(rec, cohorts, c)
        k = seg_end
    return k


def _record(rec: _Recorder, cohorts: _Cohorts, c: int) -> None:
    """Hand a stretch's cohorts to the recorder, each as its kind."""
    base, weight, load = (np.array(a) for a in (cohorts.bases, cohorts.weights, cohorts.loads))
    bucket = np.array(cohorts.bks, dtype=np.int64)
    calm = load >= 0.0
    if calm.any():
        cs = np.full(int(calm.sum()), float(c))
        rec.add_stationary(base[calm], weight[calm], load[calm], cs, bucket[calm])
    queued = ~calm
    runs, rhos = np.array(cohorts.runs), np.array(cohorts.rhos)
    rec.add(base[queued], weight[queued], runs[queued], rhos[queued], bucket[queued])


def _finish_boots(fleet: _Fleet, k: int) -> None:
    """Instances that finished booting by tick ``k`` go into service."""
    if fleet.refills:
        done = sum(1 for r in fleet.refills if r <= k)
        if done:
            fleet.refills = [r for r in fleet.refills if r > k]
            fleet.warm += done
    if fleet.booting:
        ready = [b for b in fleet.booting if b[0] <= k]
        if ready:
            fleet.booting = [b for b in fleet.booting if b[0] > k]
            fleet.in_service += len(ready)
            fleet.serving_since.extend(launched for _, launched in ready)


def _interrupt(run: _Run, fleet: _Fleet, rng: np.random.Generator, k: int, span_s: float) -> None:
    """Spot interruptions among the instances in service over the next
    ``span_s``, noticed at tick ``k``; with capacity rebalancing each one's
    replacement launches now."""
    exposed = fleet.in_service - len(fleet.leaving)
    if exposed <= 0:
        return
    p = -math.expm1(-run.cfg.spot_interruptions_per_hour * span_s / 3600.0)
    hit = int(rng.binomial(exposed, p))
    if not hit:
        return
    fleet.interrupted += hit
    fleet.leaving.extend([k + max(1, round(run.cfg.spot_notice_s / run.dt))] * hit)
    if run.cfg.capacity_rebalance:
        _launch(run, fleet, k, hit)


def _finish_interrupted(run: _Run, fleet: _Fleet, k: int) -> None:
    """Interrupted instances whose notice ran out by tick ``k`` are gone (the
    longest serving first); without capacity rebalancing, each one's
    replacement launches now."""
    gone = sum(1 for t in fleet.leaving if t <= k)
    if not gone:
        return
    fleet.leaving = [t for t in fleet.leaving if t > k]
    gone = min(gone, fleet.in_service)
    fleet.in_service -= gone
    fleet.serving_since.sort()
    del fleet.serving_since[:gone]
    if not run.cfg.capacity_rebalance:
        _launch(run, fleet, k, gone)


def _fast_stretch(
    run: _Run,
    fleet: _Fleet,
    rec: _Recorder,
    use: _Usage,
    stretch: tuple[int, int, int],
    n: npt.NDArray[np.int64],
    total: int,
) -> None:
    """No queue forms in this stretch (steps ``k`` to ``seg_end`` with ``c``
    in service, ``n`` arrivals in each, ``total`` in all): every step at
    once, with numpy."""
    k, seg_end, c = stretch
    dt, profile = run.dt, run.profile
    lam = n / (dt * c)
    b = np.asarray(profile.batch_at_rate(lam), dtype=np.float64)
    batch_run = np.asarray(profile.service_time(b), dtype=np.float64)
    rho = np.where(b <= 1.0 + 1e-9, np.minimum(lam * run.t1, 1.0), 1.0)
    rec.add_steps(run.rates[k:seg_end] / (c * run.mu_max), n, run.tick_bucket[k:seg_end], c)
    fleet.served += total
    use.busy_s += float(rho.sum()) * c * dt
    use.sat_s += float((rho * b).sum()) / run.b_max * c * dt
    use.serving_s += c * (seg_end - k) * dt
    last_rho, last_b, last_lam, last_run = (float(a[-1]) for a in (rho, b, lam, batch_run))
    fleet.inflight = c * (last_rho * last_b + last_lam * last_run / 2)


def _enqueue(run: _Run, fleet: _Fleet, t: float, count: int) -> None:
    """``count`` requests arriving in the step at ``t`` wait; what a full
    queue refuses is dropped."""
    room = max(0, run.cfg.queue_limit - fleet.queued)
    take = min(count, room)
    fleet.dropped += count - take
    if take:
        fleet.queue.append([t + run.dt / 2, float(take)])
        fleet.queued += take


def _tick_without_capacity(run: _Run, fleet: _Fleet, kk: int, nk: int) -> None:
    """One step with nothing in service: its ``nk`` arrivals queue."""
    _expire(run, fleet, kk * run.dt)
    queued_before = fleet.queued
    _enqueue(run, fleet, kk * run.dt, nk)
    fleet.inflight = 0.0
    fleet.peak_backlog = max(fleet.peak_backlog, fleet.queued)
    fleet.queue_area += (queued_before + fleet.queued) / 2 * run.dt


def _ticks(run: _Run, fleet: _Fleet, use: _Usage, k: int, counts: list[int], c: int) -> _Cohorts:
    """Steps from ``k`` on, one by one, with ``c`` instances serving the FIFO
    of cohorts, then each step's own arrivals (``counts``); what they cannot
    take waits. Returns the cohorts served."""
    cohorts = _Cohorts()
    bases, weights = cohorts.bases, cohorts.weights
    dt, b_max, bucket_ticks = run.dt, run.b_max, run.bucket_ticks
    batch_of, service_time_of = run.profile.lookups()
    expiring = run.cfg.deadline_s is not None
    rates, per_c, c_max = run.rates, 1.0 / (c * run.mu_max), c * b_max
    for kk, nk in enumerate(counts, start=k):
        t = kk * dt
        if expiring:
            _expire(run, fleet, t)
        queued_before = fleet.queued
        b_k = batch_of(nk / (dt * c)) + queued_before / c
        b_k = 1.0 if b_k < 1.0 else b_max if b_k > b_max else b_k  # min(max(b, 1), b_max)
        run_k = service_time_of(b_k)
        rate = c * b_k / run_k
        first = len(bases)
        # a backlog the instances take in one batch each is the stationary
        # queue's own: the stationary latency at this load covers its wait
        calm = queued_before <= c_max
        own = None if calm else run_k
        left, pos, out = _drain_queue(fleet, cohorts, t, rate, own, rate * dt + fleet.credit)
        fleet.queued -= out
        fresh = (nk if nk < left else math.floor(left)) if left >= 1.0 else 0
        if fresh:
            wait = (pos + fresh / 2) / rate - dt / 2
            wait = wait if wait > 0.0 else 0.0
            fleet.wait_area += wait * fresh
            bases.append(0.0 if own is None else wait + own)
            weights.append(fresh)
            left -= fresh
            out += fresh
        if nk - fresh:
            _enqueue(run, fleet, t, nk - fresh)
        rho_k = out / (rate * dt)
        rho_k = rho_k if rho_k < 1.0 else 1.0
        added = len(bases) - first
        cohorts.runs.extend([run_k] * added)
        cohorts.rhos.extend([rho_k] * added)
        cohorts.bks.extend([kk // bucket_ticks] * added)
        cohorts.loads.extend([rates[kk] * per_c if calm else -1.0] * added)
        queued = fleet.queued
        fleet.served += out
        fleet.queue_area += (queued_before + queued) / 2 * dt
        fleet.credit = left - math.floor(left) if queued else 0.0
        use.busy_s += rho_k * c * dt
        use.sat_s += rho_k * b_k / b_max * c * dt
        use.serving_s += c * dt
        fleet.inflight = inflight = c * rho_k * b_k
        backlog = queued + round(inflight)
        if backlog > fleet.peak_backlog:
            fleet.peak_backlog = backlog
    return cohorts


def _expire(run: _Run, fleet: _Fleet, t: float) -> None:
    """Drop the cohorts that have waited past the deadline by ``t``."""
    deadline = run.cfg.deadline_s
    if deadline is None:
        return
    queue = fleet.queue
    while queue and t - queue[0][0] > deadline:
        _, count = queue.popleft()
        n = int(count)
        fleet.queued -= n
        fleet.dropped += n
        fleet.expired += n


def _drain_queue(
    fleet: _Fleet, cohorts: _Cohorts, t: float, rate: float, own: float | None, left: float
) -> tuple[float, float, int]:
    """Serve waiting cohorts, oldest first, while a whole request fits in
    ``left``, each recorded as its wait plus ``own`` (``None``: as nothing,
    the stationary latency covers it); returns what is left, the fluid position reached and how many
    were served (the queue count is not changed here)."""
    pos = 0.0
    out = 0
    queue = fleet.queue
    while queue and left >= 1.0:
        head = queue[0]
        m = min(head[1], math.floor(left))
        wait = max(0.0, t + (pos + m / 2) / rate - head[0])
        fleet.wait_area += wait * m
        cohorts.bases.append(0.0 if own is None else wait + own)
        cohorts.weights.append(m)
        pos += m
        left -= m
        out += int(m)
        head[1] -= m
        if head[1] <= 0:
            queue.popleft()
    return left, pos, out


# ---------------------------------------------------------------------------- the policy


def _policy_turn(
    run: _Run,
    fleet: _Fleet,
    use: _Usage,
    policy: Policy[S],
    state: S,
    k: int,
    smoothed: float,
    polls: _Polls,
) -> S:
    """Hand the policy a snapshot at tick ``k``, apply its decision, record
    the poll; returns the policy's new state."""
    now = k * run.dt
    backlog = fleet.queued + round(fleet.inflight)
    fleet.peak_backlog = max(fleet.peak_backlog, backlog)
    fleet.busy_total += use.busy_s
    fleet.service_total += use.serving_s
    snap = Snapshot(
        now=now,
        backlog=backlog,
        arrival_rate=smoothed,
        per_instance_rps=run.profile.sustainable_rps if fleet.in_service > 0 else None,
        busy_fraction=use.busy_s / use.serving_s if use.serving_s > 0 else None,
        gpu_utilization=use.busy_s / use.serving_s if use.serving_s > 0 else None,
        in_service=fleet.in_service,
        pending=len(fleet.booting),
        desired=fleet.desired,
        saturation=use.sat_s / use.serving_s if use.serving_s > 0 else None,
    )
    decision, state = policy.decide(snap, state)
    _scale(run, fleet, k, max(0, decision.desired))
    fleet.pool_area += fleet.warm * run.poll_ticks * run.dt
    if run.cfg.warm_pool_auto:
        size = policy.warm_pool(snap, state, fleet.desired)
        if size is not None:
            fleet.pool_size = max(run.cfg.warm_pool_size, size)
            _refill(run, fleet, k)
    polls.t.append(now)
    polls.desired.append(fleet.desired)
    polls.in_service.append(fleet.in_service)
    polls.backlog.append(float(backlog))
    return state


def _scale(run: _Run, fleet: _Fleet, k: int, want: int) -> None:
    """Launch instances (serving after the boot delay) or remove them:
    booting ones first, newest first, then in-service ones."""
    if want == fleet.desired:
        return
    fleet.actions += 1
    if want > fleet.desired:
        _launch(run, fleet, k, want - fleet.desired)
    else:
        remove = fleet.desired - want
        cancel = min(remove, len(fleet.booting))
        if cancel:
            fleet.booting.sort()  # the last to be ready go first
            for _, launched in fleet.booting[len(fleet.booting) - cancel :]:
                _bill_minimum(run, fleet, k, launched)
            del fleet.booting[len(fleet.booting) - cancel :]
        leave = min(remove - cancel, fleet.in_service)
        if leave:
            # the leaving instances finish the batch they are running
            fleet.instance_s += leave * float(run.profile.service_time(run.b_max))
            fleet.in_service -= leave
            fleet.serving_since.sort()  # the newest go first
            for launched in fleet.serving_since[len(fleet.serving_since) - leave :]:
                _bill_minimum(run, fleet, k, launched)
            del fleet.serving_since[len(fleet.serving_since) - leave :]
            if len(fleet.leaving) > fleet.in_service:  # interrupted ones removed too
                fleet.leaving.sort()
                del fleet.leaving[fleet.in_service :]
            room = fleet.pool_size - fleet.warm - len(fleet.refills)
            fleet.warm += max(0, min(leave, room))  # stopped, back in the pool
    fleet.desired = want


def _launch(run: _Run, fleet: _Fleet, k: int, count: int) -> None:
    """``count`` instances: warm ones from the pool first (each replaced in
    the pool after a cold boot), then cold ones."""
    cfg, dt = run.cfg, run.dt
    warm = min(count, fleet.warm)
    fleet.warm -= warm
    cold_tick = k + max(0, round((cfg.boot_delay_s + cfg.model_load_s) / dt))
    warm_tick = k + max(0, round((cfg.warm_start_s + cfg.model_load_s) / dt))
    fleet.booting.extend([(warm_tick, k)] * warm + [(cold_tick, k)] * (count - warm))
    _refill(run, fleet, k)


def _refill(run: _Run, fleet: _Fleet, k: int) -> None:
    """Bring the warm pool to its size: instances prepared (a cold boot, then
    stopped) for what is missing, stopped ones terminated beyond it."""
    missing = fleet.pool_size - fleet.warm - len(fleet.refills)
    if missing > 0:
        fleet.refills.extend([k + max(0, round(run.cfg.boot_delay_s / run.dt))] * missing)
    elif missing < 0:
        fleet.warm -= min(-missing, fleet.warm)


def _bill_minimum(run: _Run, fleet: _Fleet, k: int, launched: int) -> None:
    """An instance removed at tick ``k`` is billed at least the minimum."""
    lived = (k - launched) * run.dt
    fleet.instance_s += max(0.0, run.cfg.billing_minimum_s - lived)


# ---------------------------------------------------------------------------- the result


def _aggregate(values: list[float] | list[int], how: str, per_poll: int) -> FloatArray:
    """Per-poll values, ``per_poll`` to a timeline point (max or mean)."""
    arr = np.asarray(values, dtype=np.float64)
    pad = (-len(values)) % per_poll
    if pad:
        arr = np.concatenate([arr, np.full(pad, arr[-1])])
    arr = arr.reshape(-1, per_poll)
    return np.asarray(arr.max(axis=1) if how == "max" else arr.mean(axis=1))


def _timeline(run: _Run, rec: _Recorder, polls: _Polls) -> Timeline:
    """One point per bucket of polls."""
    per_poll = run.bucket_ticks // run.poll_ticks
    n_buckets, bucket_ticks = run.n_buckets, run.bucket_ticks
    offered = np.asarray(run.arrivals, dtype=np.float64)
    offered = np.concatenate([offered, np.zeros(n_buckets * bucket_ticks - run.ticks)])
    p99 = np.array([_percentile(h, 0.99) * 1e3 for h in rec.per_bucket])
    return Timeline(
        t_s=(np.arange(n_buckets, dtype=np.float64) + 1.0) * (bucket_ticks * run.dt),
        offered_rps=offered.reshape(n_buckets, bucket_ticks).mean(axis=1) / run.dt,
        desired=_aggregate(polls.desired, "max", per_poll)[:n_buckets],
        in_service=_aggregate(polls.in_service, "mean", per_poll)[:n_buckets],
        backlog=_aggregate(polls.backlog, "max", per_poll)[:n_buckets],
        p99_ms=p99,
    )


def _result(
    run: _Run, fleet: _Fleet, rec: _Recorder, polls: _Polls, *, policy: str, pattern: str
) -> SimResult:
    horizon = run.ticks * run.dt
    hours = fleet.instance_s / 3600.0
    served = fleet.served
    return SimResult(
        policy=policy,
        pattern=pattern,
        horizon_s=horizon,
        arrived=int(run.arrivals.sum()),
        served=served,
        dropped=fleet.dropped,
        expired=fleet.expired,
        over_objective=rec.over + fleet.dropped,
        p50_ms=_percentile(rec.hist, 0.50) * 1e3,
        p95_ms=_percentile(rec.hist, 0.95) * 1e3,
        p99_ms=_percentile(rec.hist, 0.99) * 1e3,
        instance_hours=hours,
        cost=hours * run.cfg.price_per_hour,
        peak_backlog=int(fleet.peak_backlog),
        actions=fleet.actions,
        mean_busy=fleet.busy_total / fleet.service_total if fleet.service_total > 0 else 0.0,
        mean_queued=fleet.queue_area / horizon,
        mean_queue_wait_s=fleet.wait_area / served if served else 0.0,
        timeline=_timeline(run, rec, polls),
    )


__all__ = ["SimConfig", "SimResult", "Timeline", "simulate"]
