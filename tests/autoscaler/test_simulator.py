"""The simulator: determinism, accounting, queueing laws, and the goal the
default policy must meet on every built-in pattern."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.baselines import StaticConfig, StaticPolicy
from autoscaler.policy import DefaultPolicy
from autoscaler.simulator.compare import compare_pattern, seer_goal
from autoscaler.simulator.engine import SimConfig, simulate
from autoscaler.simulator.patterns import BUILTIN, Pattern, get_pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile, linear_profile
from autoscaler.simulator.report import MAX_OVER_SHARE, MAX_STATIC_SHARE, meets_static_goal
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
    "spiky": "measured (seed 0, learned state carried over): 9.93 instance-hours, 1.59x the"
    " clairvoyant's 6.25, with 0.01% over the objective: pre-warming 135 s before a surge,"
    " planning 45 req/s per instance and the 90 s scale-in stabilization after it cost more"
    " than foresight's exact plan",
    "triple": "measured (seed 0): 11.11 instance-hours, 1.37x the clairvoyant's 8.14, with"
    " 0.68% over (the clairvoyant 3.15%): at the base rate the reference's two instances"
    " leave ~3% late and three cost 1.36x; no plan has both",
    "diurnal": "measured (seed 0): 126.93 instance-hours (1.09x the clairvoyant's 116.81)"
    " with 0.15% over, but target tracking uses 102.64 (6.56% over): fewer requests over"
    " the objective, not at fewer instance-hours",
    "ramp": "measured (seed 0): 14.74 instance-hours (1.07x the clairvoyant's 13.84) with"
    " 0.17% over, but target tracking uses 12.82 (5.60% over) and KEDA 11.94 (54.56% over):"
    " fewer requests over the objective, not at fewer instance-hours",
    "bursty": "measured (seed 0): 6.41% over the objective at 11.98 instance-hours, 1.84x"
    " the clairvoyant's 6.53 (0.27% over): bursts of 10 to 60 s are over before new"
    " instances serve, so only capacity held through the idle gaps serves them; holding a"
    " burst's capacity for 10 minutes after it costs 1.8x foresight and still misses the"
    " start of a burst bigger than the last",
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
    "spiky": ("over", "over-seer", "target-tracking", "keda"),
    "diurnal": ("hours", "over", "over-seer", "keda"),
    "triple": ("over", "over-seer", "target-tracking", "keda"),
    "ramp": ("hours", "over", "over-seer"),
    "bursty": ("target-tracking", "keda"),
}


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
    "spiky": (6.2529, 0.1793),
    "diurnal": (116.8088, 0.3231),
    "triple": (8.1390, 3.1764),
    "ramp": (13.8403, 0.1911),
    "bursty": (6.5255, 1.5337),
}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_clairvoyant_reference_is_pinned(name: str) -> None:
    seer = _comparison(name).by_policy("clairvoyant")
    hours, over_pct = _SEER[name]
    assert seer.instance_hours == pytest.approx(hours, abs=1e-3)
    assert 100 * seer.over_share == pytest.approx(over_pct, abs=1e-3)


def test_clairvoyant_does_not_count_running_batches_as_backlog() -> None:
    """triple's base rate is exactly two instances' sustainable rate: the
    reference runs two there, not a third for the requests in the batches
    the two are running (which the snapshot's backlog includes)."""
    seer = _comparison("triple").by_policy("clairvoyant")
    tl = seer.timeline
    base = (tl.t_s > 600) & (tl.t_s < 3300)  # before the step's lookahead
    assert set(tl.desired[base]) == {2.0}
    peak = (tl.t_s > 3700) & (tl.t_s < 5300)
    assert set(tl.desired[peak]) == {6.0}


def test_triple_has_no_capacity_plan_that_meets_the_static_goal() -> None:
    """The base rate of triple is exactly 2 instances' sustainable rate: with
    foresight and 2 instances at the base, too many requests are late; with 3,
    the instance-hours pass half of static's. Mixing the two does not help:
    every share of the base spent at 3 that keeps the hours within half of
    static's leaves more than 1% late."""
    from autoscaler.simulator.clairvoyant import ClairvoyantConfig, ClairvoyantPolicy

    pattern = BUILTIN["triple"]
    static = _comparison("triple").by_policy("static")
    sim = SimConfig()
    plans = {}
    for drain in (30.0, 1e9):  # drains backlogs (3 at the base), or never (2)
        cfg = ClairvoyantConfig(
            per_instance_rps=DEFAULT_PROFILE.sustainable_rps,
            lookahead_s=sim.boot_delay_s + sim.poll_interval_s,
            drain_time_s=drain,
        )
        plans[drain] = simulate(ClairvoyantPolicy(pattern, cfg), pattern)
    three, two = plans[30.0], plans[1e9]
    assert not meets_static_goal(three, static) and not meets_static_goal(two, static)
    # running a share f of the base period at 3 and the rest at 2 interpolates
    # both hours and late requests (each switch only adds a backlog): take the
    # largest f the hours budget allows
    budget = MAX_STATIC_SHARE * static.instance_hours
    f = (budget - two.instance_hours) / (three.instance_hours - two.instance_hours)
    assert 0 < f < 1
    late = (1 - f) * two.over_share + f * three.over_share
    assert late > MAX_OVER_SHARE, f"mixing at f={f:.2f} would leave {100 * late:.2f}% late"


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


# ---------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize(
    ("capacity", "rate"),
    [pytest.param(1, 50.0, id="1-at-50"), pytest.param(2, 100.0, id="2-at-100")],
)
def test_event_level_reference_does_not_depend_on_the_step(capacity: int, rate: float) -> None:
    """Request by request, the share over the objective is the same whatever
    step the arrivals are drawn with (within 10%), and a queue of batches
    near saturation does miss it."""
    from autoscaler.simulator.events import event_level

    shares = [event_level(flat(rate), capacity, dt=dt).over_share for dt in (0.05, 0.1, 0.2)]
    assert min(shares) > 0.02
    assert max(shares) <= 1.10 * min(shares), shares


def test_event_level_reference_at_light_load() -> None:
    """Batches of one that never wait: every latency is t(1), within the objective."""
    from autoscaler.simulator.events import event_level

    r = event_level(flat(5.0, 600), 4)
    assert r.over_share == 0.0
    assert r.mean_batch == pytest.approx(1.0, abs=0.01)
    assert r.p99_ms == pytest.approx(float(DEFAULT_PROFILE.service_time(1.0)) * 1e3, rel=0.01)


# The fast model does not agree with the event-level reference, and depends on
# the step: measured (1800 s, seed 0) share over the objective, fast model at
# dt 0.05 / 0.1 / 0.2 s against the reference's.
_FIDELITY_GAP = {
    "1-at-50": "fast 24.79% / 13.07% / 4.77% against 6.78% / 6.98% / 6.79% event-level",
    "2-at-100": "fast 12.93% / 4.77% / 1.37% against 3.81% / 3.75% / 3.66% event-level",
}


@pytest.mark.parametrize(
    ("capacity", "rate"),
    [
        pytest.param(c, r, id=i, marks=pytest.mark.xfail(strict=True, reason=_FIDELITY_GAP[i]))
        for c, r, i in ((1, 50.0, "1-at-50"), (2, 100.0, "2-at-100"))
    ],
)
def test_fast_model_agrees_with_the_event_level_reference(capacity: int, rate: float) -> None:
    """Within 10% relative of the reference, at every step."""
    from autoscaler.simulator.events import event_level

    for dt in (0.05, 0.1, 0.2):
        fast = simulate(
            StaticPolicy(StaticConfig(capacity=capacity)),
            flat(rate),
            config=SimConfig(dt_s=dt, initial_capacity=capacity),
        )
        ref = event_level(flat(rate), capacity, dt=dt)
        assert fast.over_share == pytest.approx(ref.over_share, rel=0.10), dt


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
    capacity, bought at the same times, serves sooner."""
    fixed = simulate(DefaultPolicy(), BUILTIN["triple"], config=SimConfig(warm_pool_size=1))
    auto = simulate(
        DefaultPolicy(),
        BUILTIN["triple"],
        config=SimConfig(warm_pool_size=1, warm_pool_auto=True),
    )
    assert auto.instance_hours == pytest.approx(fixed.instance_hours, rel=1e-6)
    assert auto.over_objective < 0.8 * fixed.over_objective
    assert auto.mean_warm_pool > 2 * fixed.mean_warm_pool  # the price: stopped volumes
