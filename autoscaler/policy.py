"""The default scaling policy.

Capacity is whichever of these asks for more:

- **throughput**: ``arrival_rate / (per_instance_rps * target_load)`` plus the
  instances that drain the backlog within ``drain_time_s``
  (``backlog / (per_instance_rps * drain_time_s)``);
- **saturation**: ``in_service * saturation / target_utilization``, the
  share of the in-service instances' capacity in use: busy fraction times
  batch fill (:attr:`Snapshot.saturation`). Not NVML's GPU utilization nor
  busy time alone: both sit near 1.0 for a worker that batches continuously,
  at any load, and would scale out a fleet that has room.

Then, in this order: the floor (``min_capacity``, or 0 after ``idle_to_zero_s``
without traffic when ``scale_to_zero`` is on; raised to a scheduled floor
while one of ``schedule``'s windows is open, and to the daily floor learned
from history when ``daily_floor`` is set) and ``max_capacity``; pre-warming
for a recurring surge; the tolerance band; the scale-in stabilization window
(scale in only to the highest count recommended within it); the cooldowns,
one per direction; the step limits.

Instances still booting are part of ``desired``, so they count as capacity
that is coming: the policy does not launch more for load they will take.
They are not free capacity: saturation is measured over the instances in
service only. When the backlog, the arrival rate or the per-instance
throughput cannot be read, the policy holds (it never scales in on missing
data), with two exceptions: an empty fleet with a backlog gets its first
instance, and a backlog whose arrival rate is unknown still scales out to
the instances that drain it within ``drain_time_s`` (a lower bound on the
need, so never a scale-in).

**Bursts.** A surge that lasts at most ``burst_max_s`` is a burst. While
the next one is not predicted, the capacity a burst needed is held while it
lasts and for ``burst_hold_s`` after it (the most any burst in that time
needed): traffic that comes in bursts shorter than a boot is served only by
instances already there.

**Recurring surges.** A surge is a jump of the demand to ``surge_ratio``
times its level of the last ``surge_lookback_s``. When two surges start
``P`` seconds apart (``min_period_s <= P <= max_period_s``, and, given a third,
the one before agrees within 10%), capacity for the last surge's peak is
asked for ``prewarm_lead_s`` before the next one is due. If that one does not
come within ``prewarm_grace_s`` the pre-warm is given up and nothing more is
predicted until two surges are seen again. This is what lets a fleet whose
instances take minutes to boot serve bursts that last less than that. Once a
steady series is seen (four surges, each interval within 10% of the last),
the scale-in after each one follows the need at once, without the
stabilization window, the cooldown or the step limit: the next surge is
pre-warmed for when due, so holding its capacity in between only costs.

**A daily floor** (opt in, ``daily_floor``): the policy keeps the peak need of
each ``history_slot_s`` slot of the last ``history_days`` days, and holds at
least ``daily_floor`` times what the same time of day needed (the least of
those days, over the slots up to ``prewarm_lead_s`` ahead), so that traffic
with a daily cycle finds its morning climb's capacity already booted. The
history is in the state, so it survives a restart; a gap in it longer than
``history_days`` starts it afresh.

The policy is pure: no clock, no I/O, no randomness; time comes from the
snapshot and everything that changes lives in :class:`PolicyState`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autoscaler.registry import PolicySpec
from autoscaler.schedule import ScheduledFloor, scheduled_floor
from autoscaler.types import Decision, Policy, Snapshot

_DAY = 86_400.0


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyConfig:
    """Parameters of :class:`DefaultPolicy`, with their defaults."""

    min_capacity: int = 1
    """Fewest instances while there is traffic."""
    max_capacity: int = 64
    """Most instances ever asked for."""
    per_instance_rps: float | None = None
    """Requests/s one instance sustains within the latency objective, used when
    the snapshot does not carry a measurement (``fleet recommend`` writes it)."""
    assumed_per_instance_rps: float = 10.0
    """Requests/s per instance assumed when nothing is in service to measure it
    and nothing configured says (scaling from zero): a low guess, so the first
    step is sized for the load rather than a single instance. It only ever adds
    capacity; once instances serve, their measurement takes over."""
    target_load: float = 1.0
    """Share of ``per_instance_rps`` to plan each instance for. That rate is
    already the most one instance serves with p99 within the objective under
    Poisson arrivals (as ``fleet recommend`` measures it, and the simulator's
    profile states it), so bursts are in it; lower this for headroom against
    a measurement you trust less."""
    drain_time_s: float = 30.0
    """Time within which the capacity asked for should clear the backlog."""
    target_utilization: float = 0.75
    """Saturation (share of capacity in use: busy fraction times batch fill)
    to bring the instances in service to."""
    tolerance: float = 0.1
    """No change while the computed need is within this share of the current
    capacity (a band against flapping)."""
    scale_out_cooldown_s: float = 15.0
    """Least time between two scale-outs while none is booting. While some are,
    they count as coming capacity, so a further step only adds what the need
    exceeds them by and is not held back (a burst's second step comes at once)."""
    scale_in_cooldown_s: float = 30.0
    """Least time between two scale-ins."""
    scale_in_stabilization_s: float = 90.0
    """Scale in only to the highest count recommended within this window."""
    max_step_up: int = 32
    """Most instances added by one decision."""
    max_step_down: int = 8
    """Most instances removed by one decision."""
    scale_to_zero: bool = False
    """Opt in to going to zero instances after ``idle_to_zero_s`` without traffic."""
    idle_to_zero_s: float = 900.0
    """Seconds of no arrivals and an empty backlog before scaling to zero."""
    idle_rate_rps: float = 0.01
    """An arrival rate below this counts as no arrivals (a smoothed rate decays
    towards 0 without ever reaching it)."""
    predict_surges: bool = True
    """Pre-warm for surges that recur at a regular interval."""
    surge_ratio: float = 2.0
    """A surge: demand this many times its recent level."""
    surge_lookback_s: float = 120.0
    """How far back the level a surge is measured against goes."""
    min_period_s: float = 120.0
    """Shortest recurrence interval that is predicted."""
    max_period_s: float = 4 * 3600.0
    """Longest recurrence interval that is predicted."""
    prewarm_lead_s: float = 125.0
    """How long before a predicted surge capacity is asked for: the instances'
    boot time (a cold boot of 120 s by default, as the simulator's) plus a
    poll: the first poll inside the lead asks, so the capacity serves by the
    surge's due time."""
    prewarm_grace_s: float = 60.0
    """How long after its due time a predicted surge is waited for."""
    burst_max_s: float = 300.0
    """A surge that lasts at most this long is a *burst*: over before
    instances launched for it would serve."""
    burst_hold_s: float = 600.0
    """After a burst whose recurrence is not predicted, hold the capacity it
    needed this long (the next may come at any time, and would be over before
    new instances serve); 0: never. Surges are tracked only with ``predict_surges``."""
    daily_floor: float = 0.0
    """A floor predicted from history, for traffic with a daily cycle: this
    share of what the load needed at the same time of day on each of the last
    ``history_days`` days (the least of them, looking ``prewarm_lead_s``
    ahead, so the capacity serves when that time comes); 0: off. Learned in
    ``history_slot_s`` slots and kept in the policy's state, so it carries
    across restarts."""
    history_days: int = 2
    """Days of history the daily floor reads (the least of them counts: one
    busy day does not raise the next day's floor alone)."""
    history_slot_s: float = 600.0
    """The daily history's resolution: the peak need of each slot is kept."""
    schedule: tuple[ScheduledFloor, ...] = ()
    """Scheduled capacity floors (``[[policy.schedule]]``: ``cron`` in UTC,
    ``min``, ``duration``): at least ``min`` instances while a window is open,
    with or without traffic (see :mod:`autoscaler.schedule`)."""

    def __post_init__(self) -> None:
        if self.min_capacity < 0 or self.max_capacity < max(self.min_capacity, 1):
            raise ValueError("need 0 <= min_capacity <= max_capacity and max_capacity >= 1")
        if self.per_instance_rps is not None and not self.per_instance_rps > 0:
            raise ValueError("per_instance_rps must be positive")
        if not self.assumed_per_instance_rps > 0 or self.idle_rate_rps < 0:
            raise ValueError("assumed_per_instance_rps > 0 and idle_rate_rps >= 0")
        if not 0 < self.target_load <= 1 or not 0 < self.target_utilization <= 1:
            raise ValueError("target_load and target_utilization must be in (0, 1]")
        if not 0 <= self.tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        if self.max_step_up < 1 or self.max_step_down < 1:
            raise ValueError("max_step_up and max_step_down must be at least 1")
        if self.surge_ratio <= 1 or self.min_period_s <= 0 or self.max_period_s < self.min_period_s:
            raise ValueError("need surge_ratio > 1 and 0 < min_period_s <= max_period_s")
        if not 0 <= self.daily_floor <= 1 or self.history_days < 1 or self.history_slot_s <= 0:
            raise ValueError("need 0 <= daily_floor <= 1, history_days >= 1, history_slot_s > 0")
        for name in (
            "drain_time_s",
            "scale_out_cooldown_s",
            "scale_in_cooldown_s",
            "scale_in_stabilization_s",
            "idle_to_zero_s",
            "surge_lookback_s",
            "prewarm_lead_s",
            "prewarm_grace_s",
            "burst_max_s",
            "burst_hold_s",
        ):
            if getattr(self, name) < 0 or (name == "drain_time_s" and self.drain_time_s == 0):
                raise ValueError(f"{name} must not be negative (drain_time_s: positive)")


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyState:
    last_out_at: float | None = None
    last_in_at: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, count) in the window
    idle_since: float | None = None
    needs: tuple[tuple[float, float], ...] = ()  # (time, need) over surge_lookback_s
    surge_onsets: tuple[float, ...] = ()  # the last few surge start times
    surge_base: float = 0.0  # the demand level the current surge is measured against
    surge_peak: int = 0  # the highest count the last surge needed
    surge_until: float | None = None  # the current surge lasts at least until then
    hold_until: float | None = None  # the capacity a burst needed is held until then
    hold_count: int = 0  # ... and that capacity
    daily_from: float = 0.0  # the start of the daily history's first slot
    daily: tuple[int, ...] = ()  # the peak need of each slot from then (-1: not seen)

    def shifted(self, by: float) -> PolicyState:
        """The same state with every time in it moved by ``by`` seconds (to
        carry what was learned into a run whose clock starts elsewhere)."""

        def at(t: float | None) -> float | None:
            return None if t is None else t + by

        return replace(
            self,
            last_out_at=at(self.last_out_at),
            last_in_at=at(self.last_in_at),
            recommendations=tuple((t + by, n) for t, n in self.recommendations),
            idle_since=at(self.idle_since),
            needs=tuple((t + by, n) for t, n in self.needs),
            surge_onsets=tuple(t + by for t in self.surge_onsets),
            surge_until=at(self.surge_until),
            hold_until=at(self.hold_until),
            daily_from=self.daily_from + by,
        )


class DefaultPolicy(Policy[PolicyState]):
    """Throughput and backlog, saturation, and recurring surges."""

    name = "default"

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()

    def initial_state(self) -> PolicyState:
        return PolicyState()

    # ------------------------------------------------------------------ decide
    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
        cfg = self.config
        s = snapshot
        now, cur = s.now, s.desired
        per = s.per_instance_rps if s.per_instance_rps is not None else cfg.per_instance_rps
        assumed = per is None and s.in_service == 0
        if assumed:
            per = cfg.assumed_per_instance_rps
        if s.backlog is None or s.arrival_rate is None or per is None:
            return self._without_data(s, per, state)
        idle = s.backlog == 0 and s.arrival_rate < cfg.idle_rate_rps
        idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
        need, reasons = self._need(s, s.backlog, s.arrival_rate, per)
        floor = self._floor(now, idle_since, reasons)
        if cfg.daily_floor > 0:
            state = self._learn_daily(state, now, need)
            floor = max(floor, self._daily(state, now, reasons))
        target = min(max(math.ceil(need - 1e-9), floor), cfg.max_capacity)
        state, prewarm = self._surges(state, now, need)
        ended = prewarm == 0 and self._surge_ended(state, now, need)
        if prewarm > target:
            target = min(prewarm, cfg.max_capacity)
            reasons.append(f"surge due every {self._period(state):.0f}s: pre-warm {target}")
        state, held = self._burst_hold(state, now)
        if held:
            prewarm = max(prewarm, min(held, cfg.max_capacity))
            if prewarm > target:
                target = prewarm
                reasons.append(f"holding {target} for a burst whose recurrence is not predicted")
        if self._within_tolerance(cur, target, floor, prewarm, need):
            reasons.append(f"within the {cfg.tolerance:.0%} tolerance band of {cur}")
            target = cur
        if assumed:
            reasons.append(f"nothing in service measures throughput: assumed {per:g} req/s")
            if target < cur:
                reasons.append("per-instance throughput unknown: hold (never scale in on a guess)")
                target = cur
        target, window = self._stabilized(state, now, cur, target, reasons, ended)
        state = replace(state, recommendations=window, idle_since=idle_since)
        return self._limited(state, s, target, reasons, ended)

    def warm_pool(self, snapshot: Snapshot, state: PolicyState, desired: int) -> int | None:
        """The next scale-out step, ready to start warm: the instances a surge
        of ``surge_ratio`` times today's load would add, or what the last
        learned surge needed beyond ``desired`` if more; at least one, within
        ``max_step_up`` and ``max_capacity``."""
        cfg = self.config
        step = math.ceil(desired * (cfg.surge_ratio - 1.0) - 1e-9)
        step = max(step, state.surge_peak - desired, 1)
        return max(0, min(step, cfg.max_step_up, cfg.max_capacity - desired))

    def settle(
        self,
        snapshot: Snapshot,
        decision: Decision,
        applied: int,
        before: PolicyState,
        after: PolicyState,
    ) -> PolicyState:
        """A cooldown starts only when the change took effect: where the
        actuator refused it, or clamped it to no change, the cooldowns are
        those from before the decision (the rest of the state is kept)."""
        if decision.desired != snapshot.desired and applied == snapshot.desired:
            return replace(after, last_out_at=before.last_out_at, last_in_at=before.last_in_at)
        return after

    def _without_data(
        self, s: Snapshot, per: float | None, state: PolicyState
    ) -> tuple[Decision, PolicyState]:
        """Hold when a signal is missing; an empty fleet with a backlog gets
        its first instances all the same."""
        cur = s.desired
        if cur == 0 and s.backlog is not None and s.backlog > 0:
            want = max(1, self.config.min_capacity)
            return (
                Decision.to(cur, want, f"backlog {s.backlog} and no capacity: start {want}"),
                replace(state, last_out_at=s.now, idle_since=None),
            )
        reasons: list[str] = []
        scheduled = self._scheduled(s.now, reasons)
        if scheduled > cur:  # a floor needs no signal
            return Decision.to(cur, scheduled, *reasons), replace(state, last_out_at=s.now)
        drained = self._backlog_alone(s, per, state)
        if drained is not None:
            return drained
        missing = [
            name
            for name, value in (
                ("backlog", s.backlog),
                ("arrival rate", s.arrival_rate),
                ("per-instance throughput", per),
            )
            if value is None
        ]
        why = f"{', '.join(missing)} unknown: hold (never scale in on missing data)"
        return Decision.hold(cur, why), state

    def _backlog_alone(
        self, s: Snapshot, per: float | None, state: PolicyState
    ) -> tuple[Decision, PolicyState] | None:
        """With the arrival rate unknown (the broker's rates lag at the start
        of traffic) a backlog is still demand already here: the instances that
        drain it in ``drain_time_s`` are a lower bound on the need, enough to
        scale out on (never in). None where it asks for no more than ``desired``."""
        cfg = self.config
        if s.arrival_rate is not None or s.backlog is None or per is None:
            return None
        need = s.backlog / (per * cfg.drain_time_s)
        target = min(math.ceil(need - 1e-9), cfg.max_capacity)
        if target <= s.desired:
            return None
        reasons = [
            f"arrival rate unknown; need at least {need:.2f}: backlog {s.backlog}"
            f" in {cfg.drain_time_s:.0f}s at {per:g}/instance (scale out only)"
        ]
        if s.pending:
            reasons.append(f"{s.pending} booting counted as coming capacity")
        return self._limited(state, s, target, reasons)

    def _need(
        self, s: Snapshot, backlog: int, arrival: float, per: float
    ) -> tuple[float, list[str]]:
        """Instances the load needs (throughput and backlog, or saturation,
        whichever is higher), and the reasons that say so."""
        cfg = self.config
        rate_need = arrival / (per * cfg.target_load)
        drain_need = backlog / (per * cfg.drain_time_s)
        need = rate_need + drain_need
        basis = (
            f"{arrival:.1f} req/s at {per * cfg.target_load:.1f}/instance = {rate_need:.2f}"
            f" + backlog {backlog} in {cfg.drain_time_s:.0f}s = {drain_need:.2f}"
        )
        util = s.saturation
        if util is not None and s.in_service > 0:
            util_need = s.in_service * util / cfg.target_utilization
            if util_need > need:
                need = util_need
                basis = (
                    f"saturation {util:.0%} of {s.in_service} in service,"
                    f" target {cfg.target_utilization:.0%} = {util_need:.2f}"
                )
        reasons = [f"need {need:.2f}: {basis}"]
        if s.pending:
            reasons.append(f"{s.pending} booting counted as coming capacity")
        return need, reasons

    def _floor(self, now: float, idle_since: float | None, reasons: list[str]) -> int:
        """``min_capacity`` (at least 1), or 0 once idle long enough to scale
        to zero; a scheduled floor whose window is open raises it."""
        cfg = self.config
        scheduled = self._scheduled(now, reasons)
        if cfg.scale_to_zero and idle_since is not None and now - idle_since >= cfg.idle_to_zero_s:
            if not scheduled:
                reasons.append(f"idle for {now - idle_since:.0f}s: scale to zero")
                return 0
        return max(cfg.min_capacity, 1, scheduled)

    def _learn_daily(self, state: PolicyState, now: float, need: float) -> PolicyState:
        """Note ``need`` in the history: each slot keeps its peak, and only
        ``history_days`` of slots are kept (a gap longer than that starts it
        afresh)."""
        slot_s = self.config.history_slot_s
        keep = math.ceil(self.config.history_days * _DAY / slot_s) + 1
        count = math.ceil(need - 1e-9)
        i = math.floor((now - state.daily_from) / slot_s)
        if not state.daily or i < 0 or i >= len(state.daily) + keep:
            return replace(state, daily_from=now - now % slot_s, daily=(count,))
        daily = list(state.daily) + [-1] * (i + 1 - len(state.daily))
        daily[i] = max(daily[i], count)
        drop = max(0, len(daily) - keep)
        return replace(
            state, daily_from=state.daily_from + drop * slot_s, daily=tuple(daily[drop:])
        )

    def _daily(self, state: PolicyState, now: float, reasons: list[str]) -> int:
        """The daily floor at ``now`` (0: no history yet): ``daily_floor`` of
        the least, over the earlier days with history, of the peak need in the
        slots from now to ``prewarm_lead_s`` ahead on that day."""
        cfg = self.config
        peaks: list[int] = []
        for day in range(1, cfg.history_days + 1):
            ago = now - day * _DAY - state.daily_from
            hi = math.floor((ago + cfg.prewarm_lead_s) / cfg.history_slot_s)
            if hi < 0:
                continue
            lo = max(0, math.floor(ago / cfg.history_slot_s))
            seen = [n for n in state.daily[lo : hi + 1] if n >= 0]
            if seen:
                peaks.append(max(seen))
        if not peaks:
            return 0
        count = min(math.ceil(cfg.daily_floor * min(peaks) - 1e-9), cfg.max_capacity)
        if count:
            reasons.append(
                f"daily floor {count}: {cfg.daily_floor:.0%} of the {min(peaks)} needed"
                f" at this time on the last {len(peaks)} day(s)"
            )
        return count

    def _scheduled(self, now: float, reasons: list[str]) -> int:
        """The scheduled floor open at ``now`` (0: none), at most ``max_capacity``."""
        count, cron = scheduled_floor(self.config.schedule, now)
        count = min(count, self.config.max_capacity)
        if count:
            reasons.append(f"scheduled floor {count} ({cron})")
        return count

    def _within_tolerance(
        self, cur: int, target: int, floor: int, prewarm: int, need: float
    ) -> bool:
        """Whether a change the demand asks for is within the tolerance band."""
        cfg = self.config
        return (
            cur > 0
            and target != cur
            and floor <= cur <= cfg.max_capacity
            and prewarm <= cur
            and abs(need / cur - 1.0) <= cfg.tolerance
        )

    def _stabilized(
        self,
        state: PolicyState,
        now: float,
        cur: int,
        target: int,
        reasons: list[str],
        ended: bool = False,
    ) -> tuple[int, tuple[tuple[float, int], ...]]:
        """Scale in only to the highest count recommended within the window
        (after a predicted surge, ``ended``: what it recommended does not
        count); returns the target and the window's recommendations, this one
        added."""
        cfg = self.config
        window = tuple(
            (t, n)
            for t, n in state.recommendations
            if now - t < cfg.scale_in_stabilization_s and not ended
        )
        window = (*window, (now, target))
        if target < cur:
            highest = max(n for _, n in window)
            if highest > target:
                reasons.append(
                    f"stabilization: {highest} recommended"
                    f" within {cfg.scale_in_stabilization_s:.0f}s"
                )
                target = min(highest, cur)
        return target, window

    def _limited(
        self,
        state: PolicyState,
        s: Snapshot,
        target: int,
        reasons: list[str],
        ended: bool = False,
    ) -> tuple[Decision, PolicyState]:
        """The cooldowns, one per direction (none for a step-up while instances
        boot: they count as coming capacity), and the step limits (none for
        the scale-in after a predicted surge, ``ended``)."""
        cfg = self.config
        now, cur = s.now, s.desired
        if target > cur:
            if cur == 0:
                reasons.append("scale from zero")
            elif s.pending > 0 and state.last_out_at is not None:
                reasons.append(f"step-up beyond the {s.pending} booting")
            elif (
                state.last_out_at is not None and now - state.last_out_at < cfg.scale_out_cooldown_s
            ):
                left = cfg.scale_out_cooldown_s - (now - state.last_out_at)
                return Decision.hold(cur, *reasons, f"scale-out cooldown: {left:.0f}s left"), state
            if target - cur > cfg.max_step_up:
                target = cur + cfg.max_step_up
                reasons.append(f"step limited to +{cfg.max_step_up}")
            return Decision.to(cur, target, *reasons), replace(state, last_out_at=now)
        if target < cur and ended:
            reasons.append("a predicted surge is over: back to what the traffic needs")
            return Decision.to(cur, target, *reasons), replace(state, last_in_at=now)
        if target < cur:
            if state.last_in_at is not None and now - state.last_in_at < cfg.scale_in_cooldown_s:
                left = cfg.scale_in_cooldown_s - (now - state.last_in_at)
                return Decision.hold(cur, *reasons, f"scale-in cooldown: {left:.0f}s left"), state
            if cur - target > cfg.max_step_down:
                target = cur - cfg.max_step_down
                reasons.append(f"step limited to -{cfg.max_step_down}")
            return Decision.to(cur, target, *reasons), replace(state, last_in_at=now)
        return Decision.hold(cur, *reasons), state

    # ------------------------------------------------------------------ surges
    def _surge_ended(self, state: PolicyState, now: float, need: float) -> bool:
        """A surge of a steady series has just ended: the fourth at one period
        (each interval within 10% of the last), the need is back below a
        surge's, and its recommendations would still hold capacity (within the
        stabilization window after its last surge-level need). The next is
        pre-warmed for when due, so nothing holds its capacity now."""
        cfg = self.config
        onsets = state.surge_onsets
        if len(onsets) < 4 or state.surge_until is None or not self._predicted(state):
            return False
        period = onsets[-1] - onsets[-2]
        if abs((onsets[-3] - onsets[-4]) - period) > 0.1 * period:
            return False
        return (
            onsets[-1] < now
            and need < cfg.surge_ratio * state.surge_base
            and now <= state.surge_until + cfg.scale_in_stabilization_s
        )

    def _predicted(self, state: PolicyState) -> bool:
        """Whether the next surge is predicted (pre-warmed for): two surges at
        a period in range, and a third before them, if any, agreeing."""
        cfg, onsets = self.config, state.surge_onsets
        if len(onsets) < 2:
            return False
        period = onsets[-1] - onsets[-2]
        if not cfg.min_period_s <= period <= cfg.max_period_s:
            return False
        return len(onsets) < 3 or abs((onsets[-2] - onsets[-3]) - period) <= 0.1 * period

    def _burst_hold(self, state: PolicyState, now: float) -> tuple[PolicyState, int]:
        """The capacity held for bursts whose recurrence is not predicted (0:
        none): a burst's peak while it lasts, and for ``burst_hold_s`` after
        it ended (which is noted when the surge is over)."""
        cfg = self.config
        if cfg.burst_hold_s <= 0 or not state.surge_onsets or self._predicted(state):
            return state, 0
        held = state.hold_count if state.hold_until is not None and now <= state.hold_until else 0
        if state.surge_until is not None and now <= state.surge_until:
            short = now - state.surge_onsets[-1] <= cfg.burst_max_s + cfg.surge_lookback_s / 2
            return state, max(held, state.surge_peak if short else 0)
        if state.surge_until is None:
            return state, held
        end = state.surge_until - cfg.surge_lookback_s / 2  # its last surge-level need
        state = replace(state, surge_until=None)
        if end - state.surge_onsets[-1] > cfg.burst_max_s:
            return state, held
        keep = max(state.surge_peak, held)
        state = replace(state, hold_until=end + cfg.burst_hold_s, hold_count=keep)
        return state, keep if now <= end + cfg.burst_hold_s else 0

    def _period(self, state: PolicyState) -> float:
        onsets = state.surge_onsets
        return onsets[-1] - onsets[-2] if len(onsets) >= 2 else 0.0

    def _surges(self, state: PolicyState, now: float, need: float) -> tuple[PolicyState, int]:
        """Track surges; return the state and the count to pre-warm (0: none)."""
        cfg = self.config
        if not cfg.predict_surges:
            return state, 0
        needs = tuple((t, n) for t, n in state.needs if now - t <= cfg.surge_lookback_s)
        level = min((n for _, n in needs), default=need)
        active = state.surge_until is not None and now <= state.surge_until
        onsets, base, peak, until = (
            state.surge_onsets,
            state.surge_base,
            state.surge_peak,
            state.surge_until,
        )
        if active and need >= cfg.surge_ratio * base:
            until = now + cfg.surge_lookback_s / 2
            peak = max(peak, math.ceil(need))
        elif not active and needs and need >= cfg.surge_ratio * max(level, 1.0):
            onsets = (*onsets, now)[-4:]
            base, peak, until = max(level, 1.0), math.ceil(need), now + cfg.surge_lookback_s / 2
            active = True
        state = replace(
            state,
            needs=(*needs, (now, need)),
            surge_onsets=onsets,
            surge_base=base,
            surge_peak=peak,
            surge_until=until,
        )
        if active or len(onsets) < 2:
            return state, 0
        period = onsets[-1] - onsets[-2]
        if not cfg.min_period_s <= period <= cfg.max_period_s:
            return state, 0
        if len(onsets) >= 3 and abs((onsets[-2] - onsets[-3]) - period) > 0.1 * period:
            return state, 0
        due = onsets[-1] + period
        if due - cfg.prewarm_lead_s <= now <= due + cfg.prewarm_grace_s:
            return state, min(peak, cfg.max_capacity)
        return state, 0


SPEC = PolicySpec(name="default", config=PolicyConfig, build=DefaultPolicy)
"""``[policy] kind = "default"``."""

__all__ = ["SPEC", "DefaultPolicy", "PolicyConfig", "PolicyState"]
