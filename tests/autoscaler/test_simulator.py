"""The simulator: determinism, accounting, queueing laws, and the goal the
default policy must meet on every built-in pattern."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.baselines import StaticConfig, StaticPolicy
from autoscaler.policy import DefaultPolicy
from autoscaler.simulator.compare import (
    compare_pattern,
    daily_floor_run,
    goal_config,
    make_policy,
    seer_goal,
)
from autoscaler.simulator.engine import SimConfig, simulate
from autoscaler.simulator.patterns import BUILTIN, Pattern, get_pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile, linear_profile
from autoscaler.simulator.report import MAX_OVER_SHARE, MAX_SEER_HOURS, meets_static_goal
from autoscaler.types import Decision, Policy, Snapshot

pytestmark = pytest.mark.unit


def flat(rate: float, horizon_s: float = 1800.0) -> Pattern:
    return Pattern(
        name="flat",
        horizon_s=horizon_s,
        rate=lambda t: np.full_like(t, rate),
        description=f"{rate} req/s",
    )


def test_same_seed_same_result() -> None:
    pattern = BUILTIN["spiky"]
    a = simulate(DefaultPolicy(), pattern, horizon_s=1800)
    b = simulate(DefaultPolicy(), pattern, horizon_s=1800)
    key = ("arrived", "served", "dropped", "over_objective", "p99_ms", "instance_hours", "actions")
    assert [getattr(a, k) for k in key] == [getattr(b, k) for k in key]
    assert np.array_equal(a.timeline.desired, b.timeline.desired)
    c = simulate(DefaultPolicy(), pattern, horizon_s=1800, config=SimConfig(seed=1))
    assert c.arrived != a.arrived


@pytest.mark.parametrize(
    ("pattern", "capacity", "queue_limit"),
    [
        pytest.param(flat(100.0, 600), 2, 50_000, id="steady"),
        pytest.param(flat(400.0, 600), 1, 50_000, id="overloaded-leftover-at-end"),
        pytest.param(flat(400.0, 600), 1, 500, id="overloaded-queue-full"),
        pytest.param(flat(50.0, 600), 0, 1_000, id="no-capacity"),
    ],
)
def test_every_arrival_served_or_dropped(pattern: Pattern, capacity: int, queue_limit: int) -> None:
    r = simulate(
        StaticPolicy(StaticConfig(capacity=capacity)),
        pattern,
        config=SimConfig(queue_limit=queue_limit, initial_capacity=capacity),
    )
    assert r.arrived > 0
    assert r.served + r.dropped == r.arrived
    assert r.over_objective >= r.dropped
    assert r.over_objective <= r.arrived + 1e-6
    if capacity == 0:
        assert r.served == 0


def test_utilization_law() -> None:
    """Light load (batches of one): busy fraction = λ·E[S]/c within 3%."""
    c, lam = 4, 60.0
    r = simulate(StaticPolicy(StaticConfig(capacity=c)), flat(lam))
    measured_lam = r.arrived / r.horizon_s
    expected = measured_lam * float(DEFAULT_PROFILE.service_time(1.0)) / c
    assert r.mean_busy == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize(
    ("c", "share"),
    [pytest.param(2, 0.90, id="c2-90pct"), pytest.param(1, 0.95, id="c1-95pct")],
)
def test_littles_law(c: int, share: float) -> None:
    """Near saturation a queue forms and drains: L = λW for the queue within 5%."""
    lam = share * c * DEFAULT_PROFILE.max_rps
    r = simulate(StaticPolicy(StaticConfig(capacity=c)), flat(lam))
    measured_lam = r.arrived / r.horizon_s
    assert r.mean_queued > 0.5
    assert r.mean_queued == pytest.approx(measured_lam * r.mean_queue_wait_s, rel=0.05)


def test_more_capacity_lower_latency() -> None:
    few = simulate(StaticPolicy(StaticConfig(capacity=3)), flat(140.0, 600))
    many = simulate(StaticPolicy(StaticConfig(capacity=6)), flat(140.0, 600))
    assert many.p99_ms < few.p99_ms
    assert many.instance_hours == pytest.approx(2 * few.instance_hours)


def test_boot_delay_and_instance_hours() -> None:
    """Instances launched count from launch; they serve only after the boot delay."""
    r = simulate(
        StaticPolicy(StaticConfig(capacity=3)),
        flat(10.0, 600),
        config=SimConfig(initial_capacity=1, boot_delay_s=300),
    )
    assert r.instance_hours == pytest.approx(3 * 600 / 3600, rel=0.02)
    assert r.timeline.in_service[0] == pytest.approx(1)
    assert r.timeline.in_service[-1] == pytest.approx(3)


def test_profile_roundtrip(tmp_path: Path) -> None:
    prof = linear_profile(base_ms=5, per_item_ms=1, max_batch=8, sustainable_rps=300)
    prof.save(tmp_path / "p.json")
    back = ServiceProfile.load(tmp_path / "p.json")
    assert back.to_dict() == prof.to_dict()
    assert float(back.service_time(3.0)) == pytest.approx(0.008)


def test_csv_pattern(tmp_path: Path) -> None:
    f = tmp_path / "rates.csv"
    f.write_text("seconds,rate\n0,10\n60,100\n120,10\n")
    p = get_pattern(f"csv:{f}")
    assert p.horizon_s == 180
    assert list(p.rates(60.0)) == [10.0, 100.0, 10.0]


@functools.cache
def _comparison(name: str) -> Any:
    return compare_pattern(BUILTIN[name])


@pytest.mark.parametrize("name", list(BUILTIN))
def test_goal_against_the_baselines(name: str) -> None:
    """Fewer requests over the objective than target tracking and KEDA, with no
    more instance-hours than either."""
    goal = _comparison(name).goal
    assert goal is not None
    against_baselines = [f for f in goal.failures if "target-tracking" in f or "keda" in f]
    assert not against_baselines, f"{name}: " + "; ".join(against_baselines)


# The goal against foresight (seed 0 of each pattern here; seeds 0-4 in the
# table of docs/policies.md, made by `fleet compare-policies`). Where it does
# not hold the marker says by how much, as measured: strict, so the day it
# holds the test fails and the marker must go.
_SEER_GAP = {
    "diurnal": "measured (seed 0): 169.61 instance-hours (0.98x the clairvoyant's 173.44)"
    " with 0.52% over, but target tracking uses 103.14 (12.53% over), and on 103.14"
    " instance-hours no plan misses fewer than 8.73% (test_no_plan_meets_the_goal_on_"
    "target_trackings_hours)",
    "ramp": "measured (seed 0): 19.95 instance-hours (0.95x the clairvoyant's 21.07) with"
    " 0.72% over, but target tracking uses 12.82 (13.58% over) and KEDA 11.94 (52.80%"
    " over), and on 12.82 instance-hours no plan misses fewer than 9.41%",
    "bursty": "measured (seed 0): 6.06% over the objective at 14.84 instance-hours, 1.63x"
    " the clairvoyant's 9.13 (0.30% over): bursts of 10 to 60 s are over before new"
    " instances serve, so only capacity held through the idle gaps serves them, and no"
    " policy without foresight keeps within 1% over on 1.10x the reference's hours"
    " (test_no_causal_policy_meets_the_goal_on_bursty)",
}


def _goal_params(claims: bool = False) -> list[Any]:
    out = []
    for n in BUILTIN:
        marks: list[Any] = []
        if n in _SEER_GAP and not claims:
            marks.append(pytest.mark.xfail(strict=True, reason=_SEER_GAP[n]))
        out.append(pytest.param(n, id=n, marks=marks))
    return out


@functools.cache
def _seer_goal(name: str) -> Any:
    return seer_goal(BUILTIN[name], 0)


@pytest.mark.parametrize("name", _goal_params())
def test_goal_against_foresight(name: str) -> None:
    """With a warm pool: instance-hours at most 1.10x the clairvoyant
    reference's; at most 1% over the objective and at most the reference's +
    0.5 pp; fewer over the objective than target tracking and KEDA at no more
    instance-hours."""
    goal = _seer_goal(name).goal
    assert goal.met, f"{name}: " + "; ".join(goal.failures)


# The parts of that goal that hold on seed 0: each one a test that fails the
# day it no longer holds.
_HOLDS = {
    "spiky": ("hours", "over", "over-seer", "target-tracking", "keda"),
    "diurnal": ("hours", "over", "over-seer", "keda"),
    "triple": ("hours", "over", "over-seer", "target-tracking", "keda"),
    "ramp": ("hours", "over", "over-seer"),
    "bursty": ("target-tracking", "keda"),
}


@pytest.mark.parametrize("name", ["diurnal", "ramp"])
def test_no_plan_meets_the_goal_on_target_trackings_hours(name: str) -> None:
    """On diurnal and ramp, target tracking runs so few instance-hours that
    even a plan knowing the rate, resizing every minute for free, misses the
    objective on more than 1% of requests on them: "at most 1% over" and
    "fewer over than target tracking at no more instance-hours" cannot both
    hold, for any policy."""
    from autoscaler.simulator.frontier import least_over

    run = _seer_goal(name)
    tt = run.by_policy("target-tracking")
    assert least_over(BUILTIN[name], tt.instance_hours) > MAX_OVER_SHARE
    # and on the default policy's own hours the plan does little better than it
    default = run.by_policy("default")
    best = least_over(BUILTIN[name], default.instance_hours)
    assert best <= default.over_share <= best + 0.005


@functools.cache
def _least_hours(share: float) -> float:
    from autoscaler.simulator.causal import least_hours

    return least_hours(share).instance_hours_per_hour


def _long_run(kind: str, schedule: int, hours: float) -> Any:
    """``kind`` on ``hours`` of bursty traffic (schedule ``schedule``) on the goal's fleet."""
    from autoscaler.simulator.compare import goal_config, make_policy
    from autoscaler.simulator.patterns import bursty

    pattern, cfg = bursty(schedule, horizon_s=hours * 3600.0), goal_config(0)
    policy = make_policy(kind, pattern, DEFAULT_PROFILE, config=cfg)
    return simulate(policy, pattern, profile=DEFAULT_PROFILE, config=cfg)


def test_no_causal_policy_meets_the_goal_on_bursty() -> None:
    """A policy that knows only the past (and the generator of bursts) spends,
    on average over bursty's schedules, more than 1.10x the clairvoyant
    reference's instance-hours to keep within 1% over the objective, let alone
    within the reference's + 0.5 pp: the goal's two parts cannot both hold."""
    from autoscaler.simulator.report import MAX_OVER_ABOVE_SEER, MAX_SEER_HOURS

    seers = [_long_run("clairvoyant", schedule, 24.0) for schedule in range(6)]
    seer_hours = float(np.mean([r.instance_hours / 24.0 for r in seers]))
    seer_over = float(np.mean([r.over_share for r in seers]))
    share = min(MAX_OVER_SHARE, seer_over + MAX_OVER_ABOVE_SEER)
    bound = _least_hours(MAX_OVER_SHARE)
    assert bound > MAX_SEER_HOURS * seer_hours, (bound, seer_hours)
    assert _least_hours(share) >= bound


@pytest.mark.parametrize("kind", ["default", "static", "target-tracking"])
def test_the_causal_bound_is_below_what_causal_policies_spend(kind: str) -> None:
    """The bound is a floor: policies that only react to the traffic spend at
    least as much on the share over the objective they reach."""
    run = _long_run(kind, 1, 12.0)
    assert run.instance_hours / 12.0 >= _least_hours(run.over_share)


def test_the_causal_bound_grows_as_the_share_over_shrinks() -> None:
    hours = [_least_hours(share) for share in (0.05, 0.01, 0.005)]
    assert hours == sorted(hours) and hours[0] > 0


@pytest.mark.parametrize(
    ("name", "claim"),
    [
        pytest.param(p.values[0], c, id=f"{p.values[0]}-{c}", marks=p.marks)
        for p in _goal_params(claims=True)
        for c in _HOLDS[p.values[0]]
    ],
)
def test_parts_of_the_goal_that_hold(name: str, claim: str) -> None:
    goal = _seer_goal(name).goal
    assert goal.holds(claim), "\n".join(goal.lines)


@pytest.mark.parametrize(
    ("name", "reachable"),
    [
        ("spiky", True),
        ("diurnal", True),
        ("triple", False),
        ("ramp", False),
    ],
)
def test_what_foresight_is_worth(name: str, reachable: bool) -> None:
    """The clairvoyant reference reads the rate a boot delay ahead. On spiky it
    meets the static goal, so what the default policy lacks there is knowledge
    of the future (the first bursts); on triple and ramp even it misses, so no
    policy that has to react to the traffic can meet that part of the goal."""
    comp = _comparison(name)
    seer, static = comp.by_policy("clairvoyant"), comp.by_policy("static")
    assert meets_static_goal(seer, static) is reachable


# The clairvoyant reference, frozen: (instance-hours, % over the objective)
# per built-in pattern, seed 0, the default fleet. Measured; a change of the
# reference or of the simulator that moves them must say why here.
_SEER = {
    "spiky": (9.2217, 0.3656),
    "diurnal": (173.4367, 0.4084),
    "triple": (15.2085, 0.1091),
    "ramp": (21.0750, 0.5118),
    "bursty": (9.1419, 1.5004),
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_clairvoyant_reference_is_pinned(name: str) -> None:
    seer = _comparison(name).by_policy("clairvoyant")
    hours, over_pct = _SEER[name]
    assert seer.instance_hours == pytest.approx(hours, abs=1e-3)
    assert 100 * seer.over_share == pytest.approx(over_pct, abs=1e-3)


def test_clairvoyant_does_not_count_running_batches_as_backlog() -> None:
    """With instances that sustain 50 req/s, triple's base rate is exactly two
    instances' rate: the reference runs two there, not a third for the
    requests in the batches the two are running (which the snapshot's
    backlog includes)."""
    fifty = replace(DEFAULT_PROFILE, sustainable_rps=50.0)
    seer = compare_pattern(BUILTIN["triple"], profile=fifty, kinds=("clairvoyant",)).results[0]
    tl = seer.timeline
    base = (tl.t_s > 600) & (tl.t_s < 3300)  # before the step's lookahead
    assert set(tl.desired[base]) == {2.0}
    peak = (tl.t_s > 3700) & (tl.t_s < 5300)
    assert set(tl.desired[peak]) == {6.0}


class Scripted(Policy[None]):
    """Asks for the count of the last step whose time has come."""

    name = "scripted"

    def __init__(self, steps: list[tuple[float, int]]) -> None:
        self.steps = steps

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Decision, None]:
        want = snapshot.desired
        for at, count in self.steps:
            if snapshot.now >= at:
                want = count
        return Decision.to(snapshot.desired, want, "scripted"), None


def _in_service_at(r: Any, t: float) -> float:
    i = int(np.searchsorted(r.timeline.t_s, t))
    return float(r.timeline.in_service[i])


def test_billing_minimum_for_an_instance_removed_early() -> None:
    """EC2 bills per second with a 60 s minimum: two instances launched at
    5 s and cancelled at 20 s while booting cost 60 s each, not 15 s."""
    policy = Scripted([(5.0, 3), (20.0, 1)])
    pattern = flat(10.0, 600)
    billed = simulate(policy, pattern, config=SimConfig(initial_capacity=1))
    exact = simulate(policy, pattern, config=SimConfig(initial_capacity=1, billing_minimum_s=0))
    assert exact.instance_hours * 3600 == pytest.approx(600 + 2 * 15)
    assert billed.instance_hours * 3600 == pytest.approx(600 + 2 * 60)


def test_warm_pool_starts_fast_then_refills() -> None:
    """A pool of two: of three launched at 5 s two serve after the warm
    start (40 s), the third after a cold boot (120 s); the pool is whole
    again a cold boot later, so the next step starts warm too."""
    cfg = SimConfig(initial_capacity=1, warm_pool_size=2, warm_start_s=40, boot_delay_s=120)
    r = simulate(Scripted([(5.0, 4), (300.0, 6)]), flat(10.0, 600), config=cfg)
    assert _in_service_at(r, 40.0) == 1
    assert _in_service_at(r, 50.0) == 3
    assert _in_service_at(r, 120.0) == 3
    assert _in_service_at(r, 130.0) == 4
    assert _in_service_at(r, 340.0) == 4
    assert _in_service_at(r, 350.0) == 6
    cold = simulate(Scripted([(5.0, 4)]), flat(10.0, 600), config=SimConfig(initial_capacity=1))
    assert _in_service_at(cold, 50.0) == 1


def test_model_load_comes_on_top_of_the_boot() -> None:
    cfg = SimConfig(initial_capacity=1, boot_delay_s=120, model_load_s=30)
    r = simulate(Scripted([(5.0, 2)]), flat(10.0, 600), config=cfg)
    assert _in_service_at(r, 150.0) == 1
    assert _in_service_at(r, 160.0) == 2


def test_requests_past_their_deadline_are_dropped_as_misses() -> None:
    """Overloaded, with a 2 s deadline: what waits longer is dropped in the
    queue (never served late), and counts as over the objective."""
    cfg = SimConfig(initial_capacity=1, deadline_s=2.0)
    r = simulate(StaticPolicy(StaticConfig(capacity=1)), flat(200.0, 300), config=cfg)
    assert r.expired > 0.3 * r.arrived
    assert r.served + r.dropped == r.arrived
    assert r.over_objective >= r.expired
    # the wait, then the rest of the running batch and its own (the largest)
    slowest = 2.0 + cfg.dt_s + 2 * float(DEFAULT_PROFILE.service_time(16.0))
    assert r.p99_ms <= 1.02 * slowest * 1e3
    forever = simulate(
        StaticPolicy(StaticConfig(capacity=1)),
        flat(200.0, 300),
        config=SimConfig(initial_capacity=1),
    )
    assert forever.expired == 0 and forever.p99_ms > 10 * slowest * 1e3


def test_bursty_is_seeded_on_off_and_heavy_tailed() -> None:
    """Mostly idle; bursts of 10 to 60 s reaching about 5 to 10 times the mean;
    the schedule depends on its seed only."""
    from autoscaler.simulator.patterns import _burst_schedule, bursty

    a, b = bursty(0).rates(1.0), BUILTIN["bursty"].rates(1.0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, bursty(1).rates(1.0))
    for seed in range(5):
        rates = bursty(seed).rates(1.0)
        schedule = _burst_schedule(seed, bursty(seed).horizon_s)
        assert len(schedule) >= 20
        assert (rates <= 2.0 + 1e-9).mean() > 0.7  # idle most of the time
        assert np.all((schedule[:, 1] >= 10) & (schedule[:, 1] <= 60))
        gaps = np.diff(schedule[:, 0]) - schedule[:-1, 1]
        assert gaps.min() >= 60 and gaps.max() <= 900 + 1e-6
        ratio = schedule[:, 2] / rates.mean()
        assert 3.5 <= float(np.median(ratio)) <= 8.0 and ratio.max() >= 9.0


def test_bursty_rate_is_the_base_plus_every_bursts_profile() -> None:
    """The rate, looked up by the burst each time falls in, is the base plus
    the sum of every burst's profile, at any times, in any order."""
    from autoscaler.simulator.patterns import BURSTS, _burst_schedule, bursty

    pattern = bursty(3)
    schedule = _burst_schedule(3, pattern.horizon_s)
    t = np.random.default_rng(0).uniform(-100.0, pattern.horizon_s + 100.0, 20_000)
    t = np.concatenate([t, schedule[:, 0], schedule[:, 0] + schedule[:, 1], [0.0]])
    expected = np.full_like(t, BURSTS.base)
    for start, duration, peak in schedule:
        expected = expected + BURSTS.profile(t, start, duration, peak)
    got = pattern.rate(t)
    assert np.array_equal(got, expected)
    assert (got > BURSTS.base).any()


def test_csv_timestamps_are_replayed_as_they_came(tmp_path: Path) -> None:
    f = tmp_path / "requests.csv"
    stamps = [1000.0, 1000.2, 1000.4, 1003.5, 1003.6, 1009.9]
    f.write_text("\n".join(str(t) for t in stamps) + "\n")
    p = get_pattern(f"csv:{f}")
    assert p.horizon_s == 10.0
    assert p.rates(1.0).tolist() == [3.0, 0.0, 0.0, 2.0, 0, 0, 0, 0, 0, 1.0]
    for seed in (0, 1):
        r = simulate(
            StaticPolicy(StaticConfig(capacity=1)),
            p,
            config=SimConfig(seed=seed, initial_capacity=1),
        )
        assert r.arrived == len(stamps) and r.served == len(stamps)


# ---------------------------------------------------------------------------- spot


def _spot(rate: float, **changes: Any) -> Any:
    """Ten static instances at 300 req/s for four hours, interrupted at ``rate``."""
    settings: dict[str, Any] = {"spot_interruptions_per_hour": rate, "warm_pool_size": 2}
    config = SimConfig(**{**settings, **changes})
    return simulate(StaticPolicy(StaticConfig(capacity=10)), flat(300.0, 4 * 3600.0), config=config)


def test_no_spot_interruptions_change_nothing() -> None:
    plain = simulate(StaticPolicy(StaticConfig(capacity=10)), flat(300.0, 4 * 3600.0))
    spot = _spot(0.0, warm_pool_size=0)
    assert spot.interrupted == 0
    assert (spot.over_objective, spot.instance_hours, spot.p99_ms, spot.served) == (
        plain.over_objective,
        plain.instance_hours,
        plain.p99_ms,
        plain.served,
    )


def test_spot_interruptions_come_at_their_rate_and_the_group_replaces_them() -> None:
    r = _spot(0.5)
    # 10 instances for 4 h at 0.5 an hour: 20 expected; the bounds are 4.5 sigma
    assert 0 < r.interrupted and abs(r.interrupted - 20) <= 20
    # with capacity rebalancing and a warm pool, the replacement (40 s) serves
    # before the interrupted instance's notice (120 s) ends: never fewer than 10
    assert r.timeline.in_service.min() >= 10
    # the overlap is billed: each interruption adds its notice (two minutes)
    # to ten instances' forty hours
    assert r.instance_hours == pytest.approx(40.0 + r.interrupted * 120 / 3600, abs=0.05)
    assert r.served == r.arrived


def test_without_capacity_rebalance_an_interruption_leaves_a_gap() -> None:
    r = _spot(0.5, capacity_rebalance=False, warm_pool_size=0)
    assert r.interrupted > 0
    assert r.timeline.in_service.min() < 10  # a cold boot after the instance is gone
    # the replacement is billed from its launch, when the other stops being billed
    assert r.instance_hours == pytest.approx(40.0, abs=0.05)


def test_spot_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="spot"):
        SimConfig(spot_interruptions_per_hour=-1.0)


def test_a_warm_pool_sized_by_the_policy_starts_more_of_a_surge_warm() -> None:
    """``triple``'s surges repeat: a pool of one takes one instance of each
    step-up warm; sized by the policy it holds the next step, so the same
    capacity (within 0.1%: a scale-in may come a poll apart), bought at the
    same times, serves sooner."""
    fixed = simulate(DefaultPolicy(), BUILTIN["triple"], config=SimConfig(warm_pool_size=1))
    auto = simulate(
        DefaultPolicy(),
        BUILTIN["triple"],
        config=SimConfig(warm_pool_size=1, warm_pool_auto=True),
    )
    assert auto.instance_hours == pytest.approx(fixed.instance_hours, rel=1e-3)
    assert auto.over_objective < 0.8 * fixed.over_objective
    assert auto.mean_warm_pool > 2 * fixed.mean_warm_pool  # the price: stopped volumes


def test_a_daily_floor_cuts_the_misses_on_diurnal_within_the_goals_hours() -> None:
    """With a day of history, a daily floor serves ``diurnal``'s climbs with
    capacity already booted: fewer requests over the objective than without
    it, on no more than the goal's share of the clairvoyant reference's hours."""
    pattern, cfg = BUILTIN["diurnal"], goal_config(1)
    floored = daily_floor_run(pattern, 1, profile=DEFAULT_PROFILE)
    plain = simulate(DefaultPolicy(), pattern, profile=DEFAULT_PROFILE, config=cfg)
    seer = simulate(
        make_policy("clairvoyant", pattern, DEFAULT_PROFILE, config=cfg),
        pattern,
        profile=DEFAULT_PROFILE,
        config=cfg,
    )
    assert floored.over_share < 0.75 * plain.over_share, (floored.over_share, plain.over_share)
    assert floored.over_share < seer.over_share
    assert floored.instance_hours <= MAX_SEER_HOURS * seer.instance_hours
    assert floored.instance_hours > plain.instance_hours  # what it costs
