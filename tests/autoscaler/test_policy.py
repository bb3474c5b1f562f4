"""The default policy, table-driven: each case is a sequence of snapshots and
the decisions they must produce."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from autoscaler.ewma import Ewma
from autoscaler.policy import DefaultPolicy, PolicyConfig
from autoscaler.types import Decision, Snapshot

pytestmark = pytest.mark.unit

PER = 50.0  # requests/s one instance sustains in these cases
LOAD = PER * PolicyConfig().target_load  # what the default target load plans per instance


def snap(
    now: float,
    *,
    rate: float | str | None = "auto",
    instances: int = 4,
    backlog: int | None = 0,
    desired: int | None = None,
    pending: int = 0,
    util: float | None = None,
    per: float | None = PER,
) -> Snapshot:
    """A snapshot; ``rate`` defaults to what ``instances`` carry at the target load."""
    return Snapshot(
        now=now,
        backlog=backlog,
        arrival_rate=LOAD * instances if isinstance(rate, str) else rate,
        per_instance_rps=per,
        busy_fraction=None,
        gpu_utilization=None,
        in_service=instances - pending,
        pending=pending,
        desired=instances if desired is None else desired,
        saturation=util,
    )


def run(cfg: PolicyConfig, snaps: list[Snapshot], *, follow: bool = True) -> list[Decision]:
    """Feed snapshots in order; with ``follow`` each one's ``desired`` is the
    previous decision (the actuator applied it)."""
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    out: list[Decision] = []
    desired: int | None = None
    for s in snaps:
        if follow and desired is not None:
            s = replace(s, desired=desired)
        decision, state = policy.decide(s, state)
        out.append(decision)
        desired = decision.desired
    return out


CASES: list[Any] = [
    pytest.param(
        PolicyConfig(),
        [snap(0, rate=LOAD * 8, instances=4)],
        [8],
        id="arrival-rate-over-throughput",
    ),
    pytest.param(
        PolicyConfig(drain_time_s=30),
        [snap(0, rate=LOAD * 4, backlog=int(PER * 30 * 3), instances=4)],
        [7],
        id="plus-backlog-drained-in-target-time",
    ),
    pytest.param(
        PolicyConfig(target_utilization=0.5),
        [snap(0, rate=LOAD * 2, instances=4, util=0.9)],
        [8],
        id="saturation-target-when-higher",
    ),
    pytest.param(
        PolicyConfig(target_utilization=0.75),
        [snap(0, rate=LOAD * 6, instances=4, util=0.3)],
        [6],
        id="throughput-when-higher-than-saturation",
    ),
    pytest.param(
        PolicyConfig(max_capacity=10),
        [snap(0, rate=LOAD * 40, instances=4)],
        [10],
        id="max-clamp",
    ),
    pytest.param(
        PolicyConfig(min_capacity=3, scale_in_stabilization_s=0),
        [snap(0, rate=1.0, instances=4)],
        [3],
        id="min-clamp",
    ),
    pytest.param(
        PolicyConfig(max_step_up=2),
        [snap(0, rate=LOAD * 20, instances=4), snap(30, rate=LOAD * 20, instances=6)],
        [6, 8],
        id="step-up-limit",
    ),
    pytest.param(
        PolicyConfig(max_step_down=1, scale_in_stabilization_s=0, scale_in_cooldown_s=0),
        [snap(0, rate=LOAD, instances=8), snap(5, rate=LOAD, instances=7)],
        [7, 6],
        id="step-down-limit",
    ),
    pytest.param(
        PolicyConfig(scale_out_cooldown_s=60),
        [
            snap(0, rate=LOAD * 6, instances=4),
            snap(30, rate=LOAD * 9, instances=6),
            snap(61, rate=LOAD * 9, instances=6),
        ],
        [6, 6, 9],
        id="scale-out-cooldown",
    ),
    pytest.param(
        PolicyConfig(scale_in_cooldown_s=60, scale_in_stabilization_s=0, max_step_down=2),
        [
            snap(0, rate=LOAD, instances=8),
            snap(30, rate=LOAD, instances=6),
            snap(61, rate=LOAD, instances=6),
        ],
        [6, 6, 4],
        id="scale-in-cooldown",
    ),
    pytest.param(
        PolicyConfig(scale_in_cooldown_s=600, scale_out_cooldown_s=600, scale_in_stabilization_s=0),
        [snap(0, rate=LOAD * 8, instances=4), snap(10, rate=LOAD * 2, instances=8)],
        [8, 2],
        id="scale-out-cooldown-does-not-block-scale-in",
    ),
    pytest.param(
        PolicyConfig(scale_in_cooldown_s=600, scale_out_cooldown_s=600, scale_in_stabilization_s=0),
        [snap(0, rate=LOAD * 2, instances=8), snap(10, rate=LOAD * 8, instances=2)],
        [2, 8],
        id="scale-in-cooldown-does-not-block-scale-out",
    ),
    pytest.param(
        PolicyConfig(scale_in_stabilization_s=120, scale_in_cooldown_s=0),
        [
            snap(0, rate=LOAD * 8, instances=8),
            snap(60, rate=LOAD * 2, instances=8),
            snap(100, rate=LOAD * 2, instances=8),
            snap(121, rate=LOAD * 2, instances=8),
        ],
        [8, 8, 8, 2],
        id="scale-in-stabilization-window",
    ),
    pytest.param(
        PolicyConfig(scale_in_stabilization_s=120, scale_in_cooldown_s=0),
        [
            snap(0, rate=LOAD * 8, instances=8),
            snap(60, rate=LOAD * 5, instances=8),
            snap(121, rate=LOAD * 2, instances=8),
        ],
        [8, 8, 5],
        id="stabilization-takes-highest-in-window",
    ),
    pytest.param(
        PolicyConfig(),
        [snap(0, rate=0.0, backlog=3, instances=0, desired=0, per=None)],
        [1],
        id="zero-to-one-on-first-backlog-without-measurements",
    ),
    pytest.param(
        PolicyConfig(min_capacity=0, scale_to_zero=True),
        [snap(0, rate=2.0, backlog=1, instances=0, desired=0)],
        [1],
        id="zero-to-one-on-first-backlog",
    ),
    pytest.param(
        PolicyConfig(min_capacity=1),
        [snap(0, rate=0.0, instances=1), snap(3600, rate=0.0, instances=1)],
        [1, 1],
        id="never-zero-without-opt-in",
    ),
    pytest.param(
        PolicyConfig(
            min_capacity=1, scale_to_zero=True, idle_to_zero_s=600, scale_in_stabilization_s=0
        ),
        [
            snap(0, rate=0.0, instances=1),
            snap(300, rate=0.0, instances=1),
            snap(599, rate=0.0, instances=1),
            snap(600, rate=0.0, instances=1),
        ],
        [1, 1, 1, 0],
        id="one-to-zero-after-idle-when-opted-in",
    ),
    pytest.param(
        PolicyConfig(min_capacity=1, scale_to_zero=True, idle_to_zero_s=600),
        [
            snap(0, rate=0.0, instances=1),
            snap(500, rate=0.5, backlog=1, instances=1),
            snap(700, rate=0.0, instances=1),
            snap(1000, rate=0.0, instances=1),
        ],
        [1, 1, 1, 1],
        id="idle-clock-restarts-on-traffic",
    ),
    pytest.param(
        PolicyConfig(),
        [snap(0, rate=LOAD * 8, backlog=None, instances=4)],
        [4],
        id="missing-backlog-holds",
    ),
    pytest.param(
        PolicyConfig(),
        [snap(0, rate=None, instances=8)],
        [8],
        id="missing-rate-holds",
    ),
    pytest.param(
        PolicyConfig(scale_in_stabilization_s=0, scale_in_cooldown_s=0),
        [snap(0, rate=1.0, instances=8, per=None)],
        [8],
        id="missing-throughput-never-scales-in",
    ),
    pytest.param(
        PolicyConfig(scale_in_stabilization_s=0, scale_in_cooldown_s=0, per_instance_rps=PER),
        [snap(0, rate=LOAD * 2, instances=8, per=None)],
        [2],
        id="configured-throughput-stands-in",
    ),
    pytest.param(
        PolicyConfig(),
        [snap(0, rate=LOAD * 8, instances=8, pending=4)],
        [8],
        id="booting-counts-as-coming-capacity",
    ),
    pytest.param(
        PolicyConfig(target_utilization=0.75),
        # 2 in service at full saturation would ask for 2/0.75 = 3; 4 booting
        # already make 6: booting is coming capacity, not free capacity
        [snap(0, rate=LOAD * 6, instances=6, pending=4, util=1.0)],
        [6],
        id="booting-not-free-capacity",
    ),
    pytest.param(
        PolicyConfig(tolerance=0.1, scale_in_stabilization_s=0, scale_in_cooldown_s=0),
        [
            snap(float(i) * 5, rate=LOAD * 10 * f, instances=10)
            for i, f in enumerate((1.05, 0.93, 1.08, 0.91, 1.0, 1.09, 0.95))
        ],
        [10] * 7,
        id="no-flapping-within-tolerance",
    ),
    pytest.param(
        PolicyConfig(tolerance=0.1),
        [snap(0, rate=LOAD * 10 * 1.25, instances=10)],
        [13],
        id="outside-tolerance-acts",
    ),
]


@pytest.mark.parametrize(("cfg", "snaps", "expected"), CASES)
def test_decisions(cfg: PolicyConfig, snaps: list[Snapshot], expected: list[int]) -> None:
    got = [d.desired for d in run(cfg, snaps)]
    assert got == expected


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param(snap(0, backlog=None, instances=8, rate=0.0), id="backlog"),
        pytest.param(snap(0, rate=None, instances=8), id="rate"),
        pytest.param(snap(0, rate=0.0, instances=8, per=None), id="throughput"),
    ],
)
def test_missing_data_never_scales_in(snapshot: Snapshot) -> None:
    policy = DefaultPolicy(PolicyConfig(scale_in_stabilization_s=0, scale_in_cooldown_s=0))
    decision, _ = policy.decide(snapshot, policy.initial_state())
    assert decision.direction == "hold"
    assert decision.desired == 8
    assert any("unknown" in r for r in decision.reasons)


def test_a_backlog_scales_out_while_the_arrival_rate_is_unknown() -> None:
    """At the start of traffic the broker's rates lag: the arrival rate is
    unknown, but a backlog is demand already here. Draining it is a lower
    bound on what the fleet needs, so it scales out on it (never in)."""
    cfg = PolicyConfig(scale_in_stabilization_s=0, scale_in_cooldown_s=0)
    backlog = 15_000
    want = math.ceil(backlog / (PER * cfg.drain_time_s))
    assert want > 4
    (d,) = run(cfg, [snap(0, rate=None, instances=2, backlog=backlog)])
    assert d.direction == "out"
    assert d.desired == min(2 + cfg.max_step_up, want)
    assert any("arrival rate unknown" in r for r in d.reasons)
    # a backlog the fleet drains in time asks for nothing: hold, never in
    (small,) = run(cfg, [snap(0, rate=None, instances=8, backlog=10)])
    assert small.direction == "hold" and small.desired == 8
    # the scale-out cooldown still applies
    held = run(cfg, [snap(0, rate=LOAD * 4, instances=2), snap(1, rate=None, backlog=backlog)])
    assert held[0].direction == "out" and held[1].direction == "hold"
    assert any("cooldown" in r for r in held[1].reasons)


def test_every_decision_has_reasons() -> None:
    for d in run(PolicyConfig(), [snap(0, rate=LOAD * 8), snap(30, rate=LOAD * 2)]):
        assert d.reasons


def test_recurring_surges_are_prewarmed() -> None:
    """Two surges 600 s apart: capacity for the third is asked for before it."""
    cfg = PolicyConfig(prewarm_lead_s=150, scale_in_stabilization_s=30, scale_in_cooldown_s=0)
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    desired = 1
    seen: dict[float, int] = {}
    for t in range(0, 1800, 5):
        in_burst = (t % 600) >= 300 and (t % 600) < 340
        rate = 400.0 if in_burst else 2.0
        s = snap(float(t), rate=rate, instances=desired)
        decision, state = policy.decide(s, state)
        desired = decision.desired
        seen[float(t)] = desired
    # third burst starts at 1500 s: pre-warmed from 1350 s on
    surge = math.ceil(400.0 / LOAD)
    assert seen[1340.0] <= 2
    assert seen[1400.0] >= surge
    assert seen[1495.0] >= surge


def _surges(cfg: PolicyConfig, onsets: list[int], until: int) -> dict[float, int]:
    """400 req/s for 40 s from each onset, 2 req/s otherwise: the policy's
    desired count at each 5 s poll."""
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    desired = 1
    seen: dict[float, int] = {}
    for t in range(0, until, 5):
        rate = 400.0 if any(o <= t < o + 40 for o in onsets) else 2.0
        decision, state = policy.decide(snap(float(t), rate=rate, instances=desired), state)
        desired = decision.desired
        seen[float(t)] = desired
    return seen


def test_after_a_steady_series_of_surges_capacity_is_not_held() -> None:
    """The fourth surge at one period ends: the next is pre-warmed for when
    due, so the scale-in follows the need at once (no stabilization window,
    no cooldown, no step limit), where after the third it is held."""
    cfg = PolicyConfig(prewarm_lead_s=150)
    seen = _surges(cfg, [300, 900, 1500, 2100], 2400)
    surge = math.ceil(400.0 / LOAD)
    assert seen[2135.0] >= surge
    assert seen[2150.0] == 1  # the need is back below a surge's: at once
    assert seen[1550.0] >= surge  # after the third: held by the stabilization window


def test_irregular_surges_keep_their_capacity_held() -> None:
    """Four surges whose intervals differ by more than 10%: no steady series,
    so the scale-in after the last waits for the stabilization window."""
    cfg = PolicyConfig(prewarm_lead_s=150)
    seen = _surges(cfg, [300, 900, 1500, 2200], 2500)
    assert seen[2250.0] > 1


def test_is_pure() -> None:
    policy = DefaultPolicy()
    state = policy.initial_state()
    s = snap(0, rate=LOAD * 8)
    assert policy.decide(s, state) == policy.decide(s, state)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"min_capacity": 5, "max_capacity": 4}, id="min-over-max"),
        pytest.param({"target_load": 0.0}, id="target-load"),
        pytest.param({"tolerance": 1.0}, id="tolerance"),
        pytest.param({"max_step_up": 0}, id="step"),
        pytest.param({"drain_time_s": 0.0}, id="drain-time"),
        pytest.param({"daily_floor": 1.5}, id="daily-floor"),
        pytest.param({"history_days": 0}, id="history-days"),
        pytest.param({"history_slot_s": 0.0}, id="history-slot"),
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PolicyConfig(**kwargs)


def test_scale_to_zero_fires_on_a_smoothed_rate() -> None:
    """The live arrival rate is an EWMA: once traffic stops it decays towards
    0 without ever reaching it. Idle is a rate below a threshold, so the
    fleet still goes to zero after ``idle_to_zero_s``."""
    cfg = PolicyConfig(min_capacity=0, scale_to_zero=True, idle_to_zero_s=600)
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    ewma = Ewma(10.0)
    ewma.update(5.0, 0.0)
    desired, zero_at = 1, None
    for i in range(1, 400):
        t = 5.0 * i
        rate = ewma.update(0.0, 5.0)
        assert rate > 0.0
        decision, state = policy.decide(snap(t, rate=rate, instances=desired), state)
        desired = decision.desired
        if desired == 0:
            zero_at = t
            break
    assert zero_at is not None, "never scaled to zero"
    # under the threshold about a minute after the traffic stopped; then
    # idle_to_zero_s and the scale-in stabilization window
    assert 600 <= zero_at <= 70 + 600 + cfg.scale_in_stabilization_s


def test_scale_from_zero_without_a_measured_rate_sizes_for_the_load() -> None:
    """From zero nothing in service can measure what an instance sustains:
    the first step is sized for the arrival rate and the backlog at the
    assumed per-instance rate, and it grows while the first ones boot."""
    cfg = PolicyConfig(min_capacity=0, scale_to_zero=True)
    assumed = cfg.assumed_per_instance_rps
    rate = 20 * assumed
    first = math.ceil(rate / (assumed * cfg.target_load) + 100 / (assumed * cfg.drain_time_s))
    d = run(
        cfg,
        [
            snap(0, rate=rate, backlog=100, instances=0, desired=0, per=None),
            snap(5, rate=2 * rate, backlog=1100, instances=first, pending=first, per=None),
        ],
    )
    assert d[0].desired == first > 1
    assert d[1].desired > first  # not held for the whole boot


def test_assumed_rate_never_scales_in() -> None:
    """The assumed rate only ever adds capacity: with instances in service and
    nothing measured, the policy holds as before."""
    cfg = PolicyConfig(scale_in_stabilization_s=0, scale_in_cooldown_s=0)
    (d,) = run(cfg, [snap(0, rate=1.0, instances=8, pending=8, per=None)])
    assert d.desired == 8 and d.direction == "hold"


def test_second_step_up_inside_a_burst_is_not_held_by_the_cooldown() -> None:
    """The demand keeps rising while the first step's instances boot: they
    count as coming capacity, so the next step only adds what they do not
    cover, and it is taken at once rather than after the cooldown."""
    cfg = PolicyConfig(scale_out_cooldown_s=15)
    d = run(
        cfg,
        [
            snap(0, rate=LOAD * 8, instances=4),
            snap(5, rate=LOAD * 12, instances=8, pending=4),
            snap(10, rate=LOAD * 12, instances=12, pending=8),
        ],
    )
    assert [x.desired for x in d] == [8, 12, 12]


def test_cooldown_starts_only_when_the_change_took_effect() -> None:
    """A step the actuator refused (or clamped to no change) starts no
    cooldown: ``settle`` gives back the state from before it."""
    cfg = PolicyConfig(scale_in_cooldown_s=600, scale_in_stabilization_s=0)
    policy = DefaultPolicy(cfg)
    before = policy.initial_state()
    s = snap(0, rate=LOAD * 2, instances=8)
    decision, after = policy.decide(s, before)
    assert decision.desired == 2 and after.last_in_at == 0
    failed = policy.settle(s, decision, 8, before, after)
    assert failed.last_in_at is None
    assert failed.recommendations == after.recommendations  # the rest is kept
    assert policy.settle(s, decision, 2, before, after) == after
    # refused, the next poll tries again instead of waiting out 600 s
    again, _ = policy.decide(snap(5, rate=LOAD * 2, instances=8), failed)
    assert again.desired == 2


def _bursts(cfg: PolicyConfig, starts: list[int], length: int, until: int) -> dict[int, int]:
    """Desired capacity every 5 s: 2 req/s, and 400 req/s for ``length`` s
    from each of ``starts`` (the policy's decisions applied at once)."""
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    desired, seen = 1, {}
    for t in range(0, until, 5):
        rate = 400.0 if any(s <= t < s + length for s in starts) else 2.0
        decision, state = policy.decide(snap(float(t), rate=rate, instances=desired), state)
        desired = seen[t] = decision.desired
    return seen


def test_capacity_is_held_after_an_unpredicted_burst() -> None:
    """A burst shorter than a boot, at no regular interval: what it needed is
    held for ``burst_hold_s`` (the next would be over before new instances
    serve), then given back."""
    cfg = PolicyConfig(burst_hold_s=600, scale_in_stabilization_s=30, scale_in_cooldown_s=0)
    seen = _bursts(cfg, [300], 40, 1500)
    peak = math.ceil(400 / LOAD)
    assert seen[320] >= peak
    assert all(seen[t] >= peak for t in range(340, 300 + 40 + 600, 5))
    assert seen[1100] <= 2
    never = _bursts(replace(cfg, burst_hold_s=0), [300], 40, 1500)
    assert never[500] <= 2


def test_no_hold_after_a_long_surge_or_a_regular_one() -> None:
    cfg = PolicyConfig(burst_hold_s=600, scale_in_stabilization_s=30, scale_in_cooldown_s=0)
    long_surge = _bursts(cfg, [300], 900, 1800)  # longer than burst_max_s
    assert long_surge[1400] <= 2
    # three bursts 600 s apart: the fourth is pre-warmed for, not held for
    regular = _bursts(replace(cfg, prewarm_lead_s=150), [300, 900, 1500], 40, 2000)
    assert regular[1700] <= 2  # between the third and the pre-warm for the fourth
    assert regular[1960] >= math.ceil(400 / LOAD)  # pre-warmed for 2100


DAY = 86_400


def _days(cfg: PolicyConfig, rate_at: Any, *, until: int, step: int = 60) -> dict[int, int]:
    """The capacity decided each ``step`` seconds up to ``until`` for a
    rate that is a function of time, the actuator following."""
    times = list(range(0, until, step))
    decisions = run(cfg, [snap(t, rate=rate_at(t), instances=2) for t in times])
    return {t: d.desired for t, d in zip(times, decisions, strict=True)}


def _morning(t: int) -> float:
    """Quiet (2 instances' load) but for a peak of 10 instances' from 09:00 to 10:00."""
    return LOAD * (10 if 9 * 3600 <= t % DAY < 10 * 3600 else 2)


def test_a_daily_floor_prewarms_what_the_same_time_needed_the_day_before() -> None:
    cfg = PolicyConfig(daily_floor=1.0, prewarm_lead_s=300, scale_in_cooldown_s=0)
    got = _days(cfg, _morning, until=DAY + 11 * 3600)
    ahead = DAY + 9 * 3600 - 240  # within the lead, before the peak
    assert got[9 * 3600 - 240] == 2  # first day: nothing learned yet
    assert got[ahead] == 10  # second day: ready before the load comes
    assert got[DAY + 11 * 3600 - 60] < 10  # and let go after it


def test_without_a_daily_floor_nothing_is_prewarmed() -> None:
    cfg = PolicyConfig(prewarm_lead_s=300, scale_in_cooldown_s=0)
    got = _days(cfg, _morning, until=DAY + 9 * 3600)
    assert got[DAY + 9 * 3600 - 240] == 2
    assert DefaultPolicy(cfg).initial_state().daily == ()


def test_the_daily_floor_reads_the_least_of_the_days_and_its_share() -> None:
    """A peak seen on one day of two does not raise the floor alone; the
    share scales what the days agree on."""

    def one_busy_day(t: int) -> float:
        return _morning(t) if t < DAY else LOAD * 2

    cfg = PolicyConfig(daily_floor=1.0, prewarm_lead_s=300, scale_in_cooldown_s=0)
    got = _days(cfg, one_busy_day, until=2 * DAY + 9 * 3600)
    assert got[2 * DAY + 9 * 3600 - 240] == 2
    half = replace(cfg, daily_floor=0.5)
    got = _days(half, _morning, until=2 * DAY + 9 * 3600)
    assert got[2 * DAY + 9 * 3600 - 240] == 5


def test_the_daily_history_survives_a_restart_and_stays_bounded() -> None:
    """Kept in the state (so the state file carries it), and no longer than
    ``history_days`` of slots however long the policy runs."""
    cfg = PolicyConfig(daily_floor=1.0, history_days=2, history_slot_s=600)
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    for t in range(0, 4 * DAY, 300):
        _, state = policy.decide(snap(t, rate=_morning(t), instances=2), state)
    assert len(state.daily) <= 2 * DAY // 600 + 2
    moved = state.shifted(-4 * DAY)  # a run whose clock starts 4 days earlier
    decision, _ = policy.decide(snap(9 * 3600 - 60, instances=2), moved)
    assert decision.desired == 10
    assert any("daily floor" in r for r in decision.reasons)


def test_a_gap_longer_than_the_history_starts_it_afresh() -> None:
    cfg = PolicyConfig(daily_floor=1.0, history_days=1)
    policy = DefaultPolicy(cfg)
    state = policy.initial_state()
    for t in range(0, DAY, 300):
        _, state = policy.decide(snap(t, rate=_morning(t), instances=2), state)
    later = 5 * DAY + 9 * 3600 - 60  # the autoscaler was down for days
    decision, state = policy.decide(snap(later, instances=2), state)
    assert decision.desired == 2
    assert len(state.daily) == 1
