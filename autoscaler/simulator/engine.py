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
- **latency** of a request: its wait in the FIFO (departure by fluid position,
  exact per cohort) + the rest of the batch already running when it arrived
  (uniform over ``t(b)`` when the instance is busy, none when idle; each cohort
  is split into 8 equal parts at that distribution's octiles) + its own batch
  ``t(b)``.
- **capacity**: the policy is asked every ``poll_interval_s`` with a
  :class:`~autoscaler.types.Snapshot` of what the live signals would read;
  new instances serve after ``boot_delay_s``; scale-in removes booting
  instances first, then in-service ones, which finish their batch and leave.
  Instance-hours count every instance from launch to removal, booting included.

When nothing waits and every step's arrivals stay below what the instances
can serve, a whole stretch of steps is computed at once with numpy; only
stretches with a queue are stepped one by one. A simulated day takes seconds.
Requests still queued when the horizon ends are counted as dropped.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from autoscaler.simulator.patterns import Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile
from autoscaler.types import Policy, Snapshot

FloatArray = npt.NDArray[np.float64]

_SPLIT = 8  # parts per cohort, at the octiles of the residual-service distribution
_OCTILES = (np.arange(_SPLIT, dtype=np.float64) + 0.5) / _SPLIT
_EDGES = np.geomspace(1e-4, 1e5, 1201)  # latency histogram bins, seconds (1.7% wide)


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """How the simulated fleet behaves; defaults documented in ``docs/policies.md``."""

    dt_s: float = 0.1
    """Simulation step."""
    poll_interval_s: float = 5.0
    """Seconds between policy decisions (the control loop's default)."""
    boot_delay_s: float = 120.0
    """From launch to serving: instance start, container start, model load, warm-up."""
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

    def __post_init__(self) -> None:
        if not self.dt_s > 0 or self.poll_interval_s < self.dt_s:
            raise ValueError("need dt_s > 0 and poll_interval_s >= dt_s")
        if self.boot_delay_s < 0 or self.queue_limit < 1 or not self.latency_objective_ms > 0:
            raise ValueError("boot_delay_s >= 0, queue_limit >= 1, latency_objective_ms > 0")


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
    dropped: int  # refused by a full queue, or still queued at the end
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


@dataclass(slots=True)
class _Recorder:
    """Latency histograms: overall and per timeline bucket."""

    objective_s: float
    buckets: int
    hist: FloatArray = field(init=False)
    per_bucket: FloatArray = field(init=False)
    over: float = 0.0

    def __post_init__(self) -> None:
        self.hist = np.zeros(len(_EDGES) - 1)
        self.per_bucket = np.zeros((self.buckets, len(_EDGES) - 1))

    def add(
        self,
        base: FloatArray,
        weight: FloatArray,
        run: FloatArray,
        rho: FloatArray,
        bucket: npt.NDArray[np.int64],
    ) -> None:
        """Cohorts: latency before the residual (``base``), their size, the batch
        run time and the busy fraction that sets the residual distribution."""
        if base.size == 0:
            return
        r = np.maximum(rho, 1e-12)[:, None]
        resid = np.clip((_OCTILES[None, :] - (1.0 - r)) / r, 0.0, 1.0) * run[:, None]
        lat = (base[:, None] + resid).ravel()
        w = np.repeat(weight / _SPLIT, _SPLIT)
        idx = np.clip(np.searchsorted(_EDGES, lat, side="right") - 1, 0, len(_EDGES) - 2)
        self.hist += np.bincount(idx, weights=w, minlength=len(_EDGES) - 1)
        np.add.at(self.per_bucket, (np.repeat(bucket, _SPLIT), idx), w)
        self.over += float(w[lat > self.objective_s].sum())


def _static_count(policy: Policy[Any]) -> int | None:
    from autoscaler.baselines import StaticPolicy

    return policy.config.capacity if isinstance(policy, StaticPolicy) else None


def simulate(
    policy: Policy[Any],
    pattern: Pattern,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    config: SimConfig | None = None,
    horizon_s: float | None = None,
    name: str | None = None,
) -> SimResult:
    """Replay ``pattern`` against ``policy``; deterministic for ``config.seed``."""
    cfg = config or SimConfig()
    dt = cfg.dt_s
    rates = pattern.rates(dt, horizon_s)
    ticks = len(rates)
    horizon = ticks * dt
    arrivals = np.random.default_rng(cfg.seed).poisson(rates * dt).astype(np.int64)
    poll_ticks = max(1, round(cfg.poll_interval_s / dt))
    bucket_ticks = poll_ticks * max(1, math.ceil(ticks / poll_ticks / cfg.timeline_points))
    n_buckets = math.ceil(ticks / bucket_ticks)
    rec = _Recorder(objective_s=cfg.latency_objective_ms / 1e3, buckets=n_buckets)

    mu_max = profile.max_rps
    b_max = float(profile.max_batch)
    t1 = float(profile.service_time(1.0))

    # -- fleet state
    initial = cfg.initial_capacity
    if initial is None:
        initial = _static_count(policy)
    if initial is None:
        first = float(rates[: max(1, round(60.0 / dt))].mean())
        initial = max(1, math.ceil(first / profile.sustainable_rps))
    in_service = initial
    booting: list[int] = []  # tick each booting instance starts serving
    desired = initial
    queue: deque[list[float]] = deque()  # [arrival time, count]
    queued = 0
    credit = 0.0
    served = dropped = 0
    instance_s = 0.0
    actions = 0
    peak_backlog = 0
    state = policy.initial_state()
    smoothed: float | None = None
    inflight = 0.0

    # per-poll records for the timeline
    poll_t: list[float] = []
    poll_desired: list[int] = []
    poll_in_service: list[int] = []
    poll_backlog: list[float] = []

    busy_total = 0.0
    service_total = 0.0
    queue_area = 0.0  # request-seconds spent waiting in the queue
    wait_area = 0.0  # the same, summed over served requests' waits

    k = 0
    while k < ticks:
        k_start, k_end = k, min(k + poll_ticks, ticks)
        poll_arrivals = int(arrivals[k:k_end].sum())
        busy_s = util_s = serving_s = 0.0
        while k < k_end:
            # instances that finished booting
            if booting:
                ready = [r for r in booting if r <= k]
                if ready:
                    booting = [r for r in booting if r > k]
                    in_service += len(ready)
            seg_end = min([k_end, *(r for r in booting if r > k)])
            c = in_service
            n = arrivals[k:seg_end]
            instance_s += (c + len(booting)) * (seg_end - k) * dt
            lam = n / (dt * c) if c > 0 else None
            if c > 0 and queued == 0 and lam is not None and float(lam.max()) < 0.98 * mu_max:
                # ---- fast path: no queue forms in this stretch
                b = np.asarray(profile.batch_at_rate(lam), dtype=np.float64)
                run = np.asarray(profile.service_time(b), dtype=np.float64)
                rho = np.where(b <= 1.0 + 1e-9, np.minimum(lam * t1, 1.0), 1.0)
                nz = n > 0
                ks = np.arange(k, seg_end, dtype=np.int64)
                rec.add(run[nz], n[nz].astype(np.float64), run[nz], rho[nz], ks[nz] // bucket_ticks)
                served += int(n.sum())
                busy_s += float(rho.sum()) * c * dt
                util_s += float((lam / mu_max).sum()) * c * dt
                serving_s += c * (seg_end - k) * dt
                inflight = c * float(rho[-1] * b[-1] + lam[-1] * run[-1] / 2)
                k = seg_end
                continue
            # ---- slow path: step by step with the FIFO of cohorts
            bases: list[float] = []
            weights: list[float] = []
            runs: list[float] = []
            rhos: list[float] = []
            bks: list[int] = []
            for kk in range(k, seg_end):
                t = kk * dt
                nk = int(arrivals[kk])
                queued_before = queued
                if c == 0:
                    room = max(0, cfg.queue_limit - queued)
                    take = min(nk, room)
                    dropped += nk - take
                    if take:
                        queue.append([t + dt / 2, float(take)])
                        queued += take
                    inflight = 0.0
                    peak_backlog = max(peak_backlog, queued)
                    queue_area += (queued_before + queued) / 2 * dt
                    continue
                lam_k = nk / (dt * c)
                b_k = min(max(float(profile.batch_at_rate(lam_k)) + queued / c, 1.0), b_max)
                run_k = float(profile.service_time(b_k))
                rate = c * b_k / run_k
                cap = rate * dt + credit
                left = cap
                pos = 0.0
                out = 0
                first = len(bases)
                while queue and left >= 1.0:
                    head = queue[0]
                    m = min(head[1], math.floor(left))
                    wait = max(0.0, t + (pos + m / 2) / rate - head[0])
                    wait_area += wait * m
                    bases.append(wait + run_k)
                    weights.append(m)
                    pos += m
                    left -= m
                    out += int(m)
                    head[1] -= m
                    if head[1] <= 0:
                        queue.popleft()
                queued -= out
                fresh = min(nk, math.floor(left)) if left >= 1.0 else 0
                if fresh:
                    wait = max(0.0, (pos + fresh / 2) / rate - dt / 2)
                    wait_area += wait * fresh
                    bases.append(wait + run_k)
                    weights.append(fresh)
                    left -= fresh
                    out += fresh
                rest = nk - fresh
                if rest:
                    room = max(0, cfg.queue_limit - queued)
                    take = min(rest, room)
                    dropped += rest - take
                    if take:
                        queue.append([t + dt / 2, float(take)])
                        queued += take
                rho_k = min(1.0, out / (rate * dt))
                added = len(bases) - first
                runs.extend([run_k] * added)
                rhos.extend([rho_k] * added)
                bks.extend([kk // bucket_ticks] * added)
                served += out
                queue_area += (queued_before + queued) / 2 * dt
                credit = left - math.floor(left) if queued else 0.0
                busy_s += rho_k * c * dt
                util_s += min(1.0, out / dt / c / mu_max) * c * dt
                serving_s += c * dt
                inflight = c * rho_k * b_k
                peak_backlog = max(peak_backlog, queued + round(inflight))
            rec.add(
                np.array(bases),
                np.array(weights),
                np.array(runs),
                np.array(rhos),
                np.array(bks, dtype=np.int64),
            )
            k = seg_end

        # ---- the policy's turn
        now = k * dt
        interval = (k_end - k_start) * dt
        sample = poll_arrivals / max(interval, dt)
        if smoothed is None or cfg.arrival_smoothing_s <= 0:
            smoothed = sample
        else:
            alpha = 1.0 - math.exp(-interval / cfg.arrival_smoothing_s)
            smoothed += alpha * (sample - smoothed)
        backlog = queued + round(inflight)
        peak_backlog = max(peak_backlog, backlog)
        busy_total += busy_s
        service_total += serving_s
        snap = Snapshot(
            now=now,
            backlog=backlog,
            arrival_rate=smoothed,
            per_instance_rps=profile.sustainable_rps if in_service > 0 else None,
            busy_fraction=busy_s / serving_s if serving_s > 0 else None,
            gpu_utilization=util_s / serving_s if serving_s > 0 else None,
            in_service=in_service,
            pending=len(booting),
            desired=desired,
        )
        decision, state = policy.decide(snap, state)
        want = max(0, decision.desired)
        if want != desired:
            actions += 1
            if want > desired:
                ready_tick = k + max(0, round(cfg.boot_delay_s / dt))
                booting.extend([ready_tick] * (want - desired))
            else:
                remove = desired - want
                cancel = min(remove, len(booting))
                if cancel:
                    booting = sorted(booting)[: len(booting) - cancel]  # newest first
                leave = remove - cancel
                if leave:
                    # the leaving instances finish the batch they are running
                    instance_s += leave * float(profile.service_time(b_max))
                    in_service = max(0, in_service - leave)
            desired = want
        poll_t.append(now)
        poll_desired.append(desired)
        poll_in_service.append(in_service)
        poll_backlog.append(float(backlog))

    # requests still waiting at the end were never answered
    dropped += queued

    # ---- timeline, one point per bucket
    per_poll = bucket_ticks // poll_ticks
    n_polls = len(poll_t)

    def agg(values: list[float] | list[int], how: str) -> FloatArray:
        arr = np.asarray(values, dtype=np.float64)
        pad = (-n_polls) % per_poll
        if pad:
            arr = np.concatenate([arr, np.full(pad, arr[-1])])
        arr = arr.reshape(-1, per_poll)
        return np.asarray(arr.max(axis=1) if how == "max" else arr.mean(axis=1))

    offered = np.asarray(arrivals, dtype=np.float64)
    offered = np.concatenate([offered, np.zeros(n_buckets * bucket_ticks - ticks)])
    p99 = np.array([_percentile(h, 0.99) * 1e3 for h in rec.per_bucket])
    timeline = Timeline(
        t_s=(np.arange(n_buckets, dtype=np.float64) + 1.0) * (bucket_ticks * dt),
        offered_rps=offered.reshape(n_buckets, bucket_ticks).mean(axis=1) / dt,
        desired=agg(poll_desired, "max")[:n_buckets],
        in_service=agg(poll_in_service, "mean")[:n_buckets],
        backlog=agg(poll_backlog, "max")[:n_buckets],
        p99_ms=p99,
    )
    arrived = int(arrivals.sum())
    hours = instance_s / 3600.0
    return SimResult(
        policy=name or policy.name,
        pattern=pattern.name,
        horizon_s=horizon,
        arrived=arrived,
        served=served,
        dropped=dropped,
        over_objective=rec.over + dropped,
        p50_ms=_percentile(rec.hist, 0.50) * 1e3,
        p95_ms=_percentile(rec.hist, 0.95) * 1e3,
        p99_ms=_percentile(rec.hist, 0.99) * 1e3,
        instance_hours=hours,
        cost=hours * cfg.price_per_hour,
        peak_backlog=int(peak_backlog),
        actions=actions,
        mean_busy=busy_total / service_total if service_total > 0 else 0.0,
        mean_queued=queue_area / horizon,
        mean_queue_wait_s=wait_area / served if served else 0.0,
        timeline=timeline,
    )


__all__ = ["SimConfig", "SimResult", "Timeline", "simulate"]
