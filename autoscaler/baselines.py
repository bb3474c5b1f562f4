"""Baseline policies, behind the same interface as the default one, so that the
simulator can compare them. Their defaults are the real-world defaults they
are named after; the documentation (``docs/policies.md``) lists the sources.

- :class:`TargetTrackingPolicy`: the SageMaker asynchronous-inference pattern,
  Application Auto Scaling target tracking on ``ApproximateBacklogSizePerInstance``
  (the example in the SageMaker guide: target 5.0, scale-out cooldown 300 s,
  scale-in cooldown 600 s). Target tracking's CloudWatch alarms: the metric is
  averaged per 1-minute period; scale out when 3 periods in a row are above
  the target, scale in when 15 in a row are below 90% of it; the new capacity
  is ``ceil(capacity * metric / target)``. The optional scale-from-zero step
  policy (``HasBacklogWithoutCapacity``) adds one instance when there is a
  backlog and no capacity.
- :class:`KedaPolicy`: KEDA's RabbitMQ scaler in ``QueueLength`` mode (target
  20 messages per replica, ready + unacknowledged) feeding a Kubernetes HPA with
  its default behaviour: a sync every 15 s, 10% tolerance, scale up by at most
  max(100%, 4 pods) per 15 s, scale down by at most 100% per 15 s after a 300 s
  stabilization window; with ``min_capacity = 0``, KEDA's cooldown of 300 s
  without messages before going to zero.
- :class:`StaticPolicy`: a fixed count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autoscaler.registry import PolicySpec
from autoscaler.types import Decision, Policy, Snapshot

# --------------------------------------------------------------------------- target tracking


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetTrackingConfig:
    min_capacity: int = 1
    max_capacity: int = 64
    target_backlog_per_instance: float = 5.0
    """``TargetValue`` on ApproximateBacklogSizePerInstance (SageMaker guide example)."""
    scale_out_cooldown_s: float = 300.0
    scale_in_cooldown_s: float = 600.0
    period_s: float = 60.0
    """CloudWatch metric period of the alarms."""
    scale_out_periods: int = 3
    """Periods in a row above the target before scaling out."""
    scale_in_periods: int = 15
    """Periods in a row below ``scale_in_ratio * target`` before scaling in."""
    scale_in_ratio: float = 0.9

    def __post_init__(self) -> None:
        if self.min_capacity < 0 or self.max_capacity < max(self.min_capacity, 1):
            raise ValueError("need 0 <= min_capacity <= max_capacity and max_capacity >= 1")
        if not self.target_backlog_per_instance > 0 or not self.period_s > 0:
            raise ValueError("target_backlog_per_instance and period_s must be positive")
        if self.scale_out_periods < 1 or self.scale_in_periods < 1:
            raise ValueError("scale_out_periods and scale_in_periods must be at least 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class TargetTrackingState:
    period_start: float | None = None
    samples: tuple[float, ...] = ()  # metric samples of the current period
    periods: tuple[float, ...] = ()  # averages of the last completed periods
    last_out_at: float | None = None
    last_in_at: float | None = None


class TargetTrackingPolicy(Policy[TargetTrackingState]):
    """Target tracking on backlog per instance, the SageMaker asynchronous way."""

    name = "target-tracking"

    def __init__(self, config: TargetTrackingConfig | None = None) -> None:
        self.config = config or TargetTrackingConfig()

    def initial_state(self) -> TargetTrackingState:
        return TargetTrackingState()

    def decide(
        self, snapshot: Snapshot, state: TargetTrackingState
    ) -> tuple[Decision, TargetTrackingState]:
        cfg = self.config
        s, now, cur = snapshot, snapshot.now, snapshot.desired
        if s.backlog is None:
            return Decision.hold(cur, "backlog unknown: alarm data missing"), state
        if cur < cfg.min_capacity:
            return Decision.to(cur, cfg.min_capacity, "below the minimum"), state
        if cur == 0:
            if s.backlog > 0:
                return (
                    Decision.to(cur, 1, "HasBacklogWithoutCapacity: +1"),
                    replace(state, last_out_at=now),
                )
            return Decision.hold(cur, "no backlog, no capacity"), state
        # the metric: backlog divided by the instances of the endpoint
        metric = s.backlog / max(s.in_service, 1)
        start = state.period_start if state.period_start is not None else now
        if now - start < cfg.period_s:
            return (
                Decision.hold(cur, f"backlog/instance {metric:.1f}: period not complete"),
                replace(state, period_start=start, samples=(*state.samples, metric)),
            )
        average = sum(state.samples) / len(state.samples) if state.samples else metric
        keep = max(cfg.scale_out_periods, cfg.scale_in_periods)
        periods = (*state.periods, average)[-keep:]
        state = replace(state, period_start=now, samples=(metric,), periods=periods)
        return self._alarms(state, now, cur, average)

    def _alarms(
        self, state: TargetTrackingState, now: float, cur: int, average: float
    ) -> tuple[Decision, TargetTrackingState]:
        """A period completed: the high alarm scales out, the low one in."""
        cfg = self.config
        periods = state.periods
        target = cfg.target_backlog_per_instance
        high = periods[-cfg.scale_out_periods :]
        low = periods[-cfg.scale_in_periods :]
        want = math.ceil(cur * average / target)
        if len(high) == cfg.scale_out_periods and all(p > target for p in high):
            want = min(max(want, cur), cfg.max_capacity)
            cooling = (
                state.last_out_at is not None and now - state.last_out_at < cfg.scale_out_cooldown_s
            )
            # in the scale-out cooldown, capacity already added counts towards
            # the new desired capacity, so only a larger one goes through
            if want > cur:
                why = (
                    f"alarm high: backlog/instance {average:.1f} > {target:g}"
                    f" for {len(high)} periods"
                )
                if cooling:
                    why += " (within cooldown: counted from the capacity already added)"
                return Decision.to(cur, want, why), replace(state, last_out_at=now)
            return Decision.hold(cur, "alarm high, at the maximum"), state
        if len(low) == cfg.scale_in_periods and all(p < cfg.scale_in_ratio * target for p in low):
            if state.last_in_at is not None and now - state.last_in_at < cfg.scale_in_cooldown_s:
                return Decision.hold(cur, "alarm low: scale-in cooldown"), state
            if state.last_out_at is not None and now - state.last_out_at < cfg.scale_out_cooldown_s:
                return Decision.hold(cur, "alarm low: scale-out cooldown"), state
            want = max(min(want, cur), cfg.min_capacity)
            if want < cur:
                why = f"alarm low: backlog/instance {average:.1f} < {cfg.scale_in_ratio * target:g}"
                return Decision.to(cur, want, why), replace(state, last_in_at=now)
        return Decision.hold(cur, f"backlog/instance {average:.1f}, target {target:g}"), state


# --------------------------------------------------------------------------- KEDA + HPA


@dataclass(frozen=True, kw_only=True, slots=True)
class KedaConfig:
    min_capacity: int = 1
    """``minReplicaCount`` (KEDA's default is 0; the comparison uses the same
    minimum for every policy)."""
    max_capacity: int = 64
    queue_length: float = 20.0
    """``value`` of the RabbitMQ scaler in QueueLength mode (default 20)."""
    sync_period_s: float = 15.0
    """HPA ``--horizontal-pod-autoscaler-sync-period``."""
    tolerance: float = 0.1
    """HPA ``--horizontal-pod-autoscaler-tolerance``."""
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    scale_up_period_s: float = 15.0
    scale_up_stabilization_s: float = 0.0
    scale_down_percent: float = 100.0
    scale_down_period_s: float = 15.0
    scale_down_stabilization_s: float = 300.0
    cooldown_period_s: float = 300.0
    """KEDA ``cooldownPeriod``: idle time before scaling to zero (min 0 only)."""

    def __post_init__(self) -> None:
        if self.min_capacity < 0 or self.max_capacity < max(self.min_capacity, 1):
            raise ValueError("need 0 <= min_capacity <= max_capacity and max_capacity >= 1")
        if not self.queue_length > 0 or not self.sync_period_s > 0:
            raise ValueError("queue_length and sync_period_s must be positive")


@dataclass(frozen=True, kw_only=True, slots=True)
class KedaState:
    last_sync: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()  # for the stabilization windows
    changes: tuple[tuple[float, int], ...] = ()  # (time, replicas after) for the rate limits
    active_since_idle: float | None = None  # last time the queue was not empty


class KedaPolicy(Policy[KedaState]):
    """KEDA RabbitMQ queue length through a Kubernetes HPA's default behaviour."""

    name = "keda"

    def __init__(self, config: KedaConfig | None = None) -> None:
        self.config = config or KedaConfig()

    def initial_state(self) -> KedaState:
        return KedaState()

    def decide(self, snapshot: Snapshot, state: KedaState) -> tuple[Decision, KedaState]:
        cfg = self.config
        s, now, cur = snapshot, snapshot.now, snapshot.desired
        if state.last_sync is not None and now - state.last_sync < cfg.sync_period_s - 1e-9:
            return Decision.hold(cur, "between HPA syncs"), state
        state = replace(state, last_sync=now)
        if s.backlog is None:
            return Decision.hold(cur, "queue length unknown: no scaling"), state
        queue = s.backlog
        last_active = now if queue > 0 else state.active_since_idle
        state = replace(state, active_since_idle=last_active)
        # KEDA activation (0 <-> 1) when the minimum is zero
        if cfg.min_capacity == 0:
            if cur == 0:
                if queue > 0:
                    return Decision.to(cur, 1, f"KEDA activation: queue {queue}"), state
                return Decision.hold(cur, "inactive"), state
            if last_active is None or now - last_active >= cfg.cooldown_period_s:
                return Decision.to(cur, 0, "KEDA cooldown: no messages"), state
        want, why = self._recommendation(queue, cur)
        stabilized, state = self._stabilized(state, now, cur, want)
        final, state = self._rate_limited(state, now, cur, stabilized)
        if final == cur and want != cur:
            why += f"; held at {cur} by the stabilization window"
        return Decision.to(cur, final, why), state

    def _recommendation(self, queue: int, cur: int) -> tuple[int, str]:
        """The HPA's replica count for an external metric with an
        ``AverageValue`` target, within the bounds, and why."""
        cfg = self.config
        current = max(cur, 1)
        ratio = queue / (cfg.queue_length * current)
        if abs(ratio - 1.0) <= cfg.tolerance:
            want = current
            why = f"queue {queue}: ratio {ratio:.2f} within tolerance"
        else:
            want = math.ceil(queue / cfg.queue_length)
            why = f"queue {queue} / {cfg.queue_length:g} per replica = {want}"
        floor = max(cfg.min_capacity, 1)
        return min(max(want, floor), cfg.max_capacity), why

    def _stabilized(
        self, state: KedaState, now: float, cur: int, want: int
    ) -> tuple[int, KedaState]:
        """Stabilization: up uses the lowest, down the highest recommendation
        in its window."""
        cfg = self.config
        window = max(cfg.scale_up_stabilization_s, cfg.scale_down_stabilization_s)
        recs = (*((t, n) for t, n in state.recommendations if now - t < window), (now, want))
        state = replace(state, recommendations=recs)
        up_recs = [n for t, n in recs if now - t <= cfg.scale_up_stabilization_s]
        down_recs = [n for t, n in recs if now - t < cfg.scale_down_stabilization_s]
        if want > cur:
            return max(min(up_recs), cur), state
        if want < cur:
            return min(max(down_recs), cur), state
        return cur, state

    def _rate_limited(
        self, state: KedaState, now: float, cur: int, stabilized: int
    ) -> tuple[int, KedaState]:
        """The scaling policies' rate limits, relative to the replicas at the
        start of each policy period."""
        cfg = self.config
        changes = tuple(
            (t, n)
            for t, n in state.changes
            if now - t < max(cfg.scale_up_period_s, cfg.scale_down_period_s)
        )
        if stabilized > cur:
            base = min([cur, *(n for t, n in changes if now - t < cfg.scale_up_period_s)])
            limit = max(
                math.ceil(base * (1 + cfg.scale_up_percent / 100)), base + cfg.scale_up_pods
            )
            final = min(stabilized, limit)
        elif stabilized < cur:
            base = max([cur, *(n for t, n in changes if now - t < cfg.scale_down_period_s)])
            limit = math.floor(base * (1 - cfg.scale_down_percent / 100))
            final = max(stabilized, limit)
        else:
            final = cur
        final = min(max(final, max(cfg.min_capacity, 1)), cfg.max_capacity)
        if final != cur:
            changes = (*changes, (now, cur))
        return final, replace(state, changes=changes)


# --------------------------------------------------------------------------- static


@dataclass(frozen=True, kw_only=True, slots=True)
class StaticConfig:
    capacity: int = 1

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError("capacity must not be negative")


class StaticPolicy(Policy[None]):
    """Always the same count: provisioning for the peak."""

    name = "static"

    def __init__(self, config: StaticConfig | None = None) -> None:
        self.config = config or StaticConfig()

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Decision, None]:
        return Decision.to(snapshot.desired, self.config.capacity, "static"), None


TARGET_TRACKING = PolicySpec(
    name="target-tracking", config=TargetTrackingConfig, build=TargetTrackingPolicy
)
"""``[policy] kind = "target-tracking"``."""
KEDA = PolicySpec(name="keda", config=KedaConfig, build=KedaPolicy)
"""``[policy] kind = "keda"``."""
STATIC = PolicySpec(name="static", config=StaticConfig, build=StaticPolicy)
"""``[policy] kind = "static"``."""

__all__ = [
    "KEDA",
    "STATIC",
    "TARGET_TRACKING",
    "KedaConfig",
    "KedaPolicy",
    "KedaState",
    "StaticConfig",
    "StaticPolicy",
    "TargetTrackingConfig",
    "TargetTrackingPolicy",
    "TargetTrackingState",
]
