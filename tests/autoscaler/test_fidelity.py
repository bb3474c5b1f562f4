"""The fast model against the event-level reference: request by request, the
same arrivals and the same instances in service, at every step."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.baselines import StaticConfig, StaticPolicy
from autoscaler.simulator import stationary
from autoscaler.simulator.compare import make_policy
from autoscaler.simulator.engine import SimConfig, simulate
from autoscaler.simulator.events import arrival_times, event_level
from autoscaler.simulator.patterns import BUILTIN, Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, linear_profile
from autoscaler.simulator.stationary import LEVELS, LatencyTable, table_for

pytestmark = pytest.mark.unit

STEPS = (0.05, 0.1, 0.2)


def flat(rate: float, horizon_s: float = 1800.0) -> Pattern:
    return Pattern(
        name="flat", horizon_s=horizon_s, rate=lambda t: np.full_like(t, rate), description=""
    )


def window(pattern: Pattern, start_s: float, horizon_s: float) -> Pattern:
    """``pattern`` from ``start_s`` on, for ``horizon_s``."""
    return Pattern(
        name=f"{pattern.name}@{start_s:g}",
        horizon_s=horizon_s,
        rate=lambda t: pattern.rate(t + start_s),
        description="",
    )


# ---------------------------------------------------------------------------- the reference


@pytest.mark.parametrize(
    ("capacity", "rate"),
    [pytest.param(1, 50.0, id="1-at-50"), pytest.param(2, 100.0, id="2-at-100")],
)
def test_event_level_reference_does_not_depend_on_the_step(capacity: int, rate: float) -> None:
    """Request by request, the share over the objective is the same whatever
    step the arrivals are drawn with (within 10%), and a queue of batches
    near saturation does miss it."""
    shares = [event_level(flat(rate), capacity, dt=dt).over_share for dt in STEPS]
    assert min(shares) > 0.02
    assert max(shares) <= 1.10 * min(shares), shares


def test_event_level_reference_at_light_load() -> None:
    """Batches of one that never wait: every latency is t(1), within the objective."""
    r = event_level(flat(5.0, 600), 4)
    assert r.over_share == 0.0
    assert r.mean_batch == pytest.approx(1.0, abs=0.01)
    assert r.p99_ms == pytest.approx(float(DEFAULT_PROFILE.service_time(1.0)) * 1e3, rel=0.01)


def test_event_level_reference_follows_the_instances_in_service() -> None:
    """No instance for the first 10 s: what arrives then waits for the first
    one and is over the objective (and a few behind them); an instance
    removed at 20 s leaves once its batch is done, and with none left the
    rest is never answered."""
    dt, pattern = 0.1, flat(5.0, 30.0)
    times = arrival_times(pattern, dt, 0)
    serving = np.zeros(300, dtype=np.int64)
    serving[100:] = 1
    late = float(np.mean(times < 10.0))
    r = event_level(pattern, serving, dt=dt)
    assert late <= r.over_share <= late + 0.1
    serving[200:] = 0
    gone = event_level(pattern, serving, dt=dt)
    never = float(np.mean(times >= 20.0))
    assert late + never <= gone.over_share <= late + never + 0.1
    with pytest.raises(ValueError, match="one per step"):
        event_level(pattern, serving[:10], dt=dt)


# ---------------------------------------------------------------------------- the fast model


@pytest.mark.parametrize(
    ("capacity", "rate"),
    [
        pytest.param(1, 50.0, id="1-at-50"),
        pytest.param(2, 100.0, id="2-at-100"),
        pytest.param(8, 400.0, id="8-at-400"),
        pytest.param(4, 350.0, id="4-at-350"),
    ],
)
def test_fast_model_agrees_with_the_event_level_reference(capacity: int, rate: float) -> None:
    """A static fleet at a flat rate: within 10% relative of the reference,
    at every step."""
    for dt in STEPS:
        fast = simulate(
            StaticPolicy(StaticConfig(capacity=capacity)),
            flat(rate, 900.0),
            config=SimConfig(dt_s=dt, initial_capacity=capacity),
        )
        ref = event_level(flat(rate, 900.0), capacity, dt=dt)
        assert ref.over_share > 0.02
        assert fast.over_share == pytest.approx(ref.over_share, rel=0.10), dt


# Each built-in pattern over a stretch where the default policy scales (and
# misses the objective for some requests): diurnal's late morning, the first
# hour of spiky (six bursts), triple's step, ramp's climb, bursty's first hour.
_STRETCHES = {
    "spiky": (0.0, 3600.0),
    "diurnal": (9 * 3600.0, 7200.0),
    "triple": (2400.0, 4200.0),
    "ramp": (0.0, 5400.0),
    "bursty": (0.0, 3600.0),
}


@functools.cache
def _replayed(name: str, kind: str, dt: float) -> tuple[float, float]:
    """The fast model's share over the objective under ``kind``, and the
    reference's with the same arrivals and the run's own instances in service."""
    start, horizon = _STRETCHES[name]
    pattern = window(BUILTIN[name], start, horizon)
    policy = make_policy(kind, pattern, DEFAULT_PROFILE, horizon_s=horizon)
    fast = simulate(policy, pattern, config=SimConfig(dt_s=dt))
    assert fast.serving is not None
    ref = event_level(pattern, fast.serving, dt=dt)
    return fast.over_share, ref.over_share


@pytest.mark.parametrize("name", list(BUILTIN))
def test_fast_model_agrees_with_the_reference_on_every_pattern(name: str) -> None:
    """Under the default policy, which scales as the pattern goes: within 10%
    relative of the reference replaying the run's capacity, at every step."""
    for dt in STEPS:
        fast, ref = _replayed(name, "default", dt)
        assert ref > 0.001, (dt, ref)
        assert fast == pytest.approx(ref, rel=0.10), dt


def test_fast_model_does_not_depend_on_the_step() -> None:
    """The share over the objective moves less than 10% between steps of
    0.05 and 0.2 s (it moved 5x before the stationary table)."""
    shares = [_replayed("triple", "default", dt)[0] for dt in STEPS]
    assert max(shares) <= 1.10 * min(shares), shares


# ---------------------------------------------------------------------------- the table


def test_default_profile_sustains_what_it_says() -> None:
    """33 req/s on one instance leaves at most 1% over 100 ms (p99 within
    the objective), request by request; 36 req/s does not."""
    assert DEFAULT_PROFILE.sustainable_rps == 33.0
    assert event_level(flat(33.0, 3600.0), 1).over_share <= 0.01
    assert event_level(flat(36.0, 3600.0), 1).over_share > 0.01


def test_a_table_built_now_agrees_with_the_reference() -> None:
    """Another profile's table, measured on first use, gives the reference's
    share over the objective (within its sampling noise) where it is big
    enough to compare."""
    profile = linear_profile(base_ms=10.0, per_item_ms=2.0, max_batch=8, sustainable_rps=100.0)
    table = stationary.build(profile, requests=20_000)
    for c, u in ((1, 0.5), (4, 0.7)):
        rate = u * profile.max_rps * c
        curve = table.curves(np.array([u]), np.array([float(c)]))
        limit = np.array([0.03])
        share = float(LatencyTable.over(curve, limit)[0])
        ref = event_level(flat(rate, 600.0), c, profile=profile, objective_ms=30.0).over_share
        assert ref > 0.02
        assert share == pytest.approx(ref, rel=0.2), (c, u)


def test_over_reads_the_distribution_between_its_quantiles() -> None:
    """A uniform distribution on [0, 1] s, given by its quantiles: the share
    above x is 1 - x, and 0 or 1 beyond its ends."""
    curves = np.tile(LEVELS, (5, 1))
    limit = np.array([-1.0, 0.1, 0.5, 0.98, 2.0])
    assert LatencyTable.over(curves, limit) == pytest.approx([1.0, 0.9, 0.5, 0.02, 0.0], abs=1e-9)


def test_curves_interpolate_between_cells() -> None:
    """Midway between two loads and between two fleet sizes (in log c), the
    curve is the mean of its neighbours'; beyond the grid, its edge."""
    t = table_for(DEFAULT_PROFILE)
    q = t.quantiles
    mid = t.curves(np.array([0.5125]), np.array([1.0]))[0]
    assert mid == pytest.approx((q[0, 20] + q[0, 21]) / 2)
    between = t.curves(np.array([0.5]), np.array([np.sqrt(2.0)]))[0]
    assert between == pytest.approx((q[0, 20] + q[1, 20]) / 2)
    far = t.curves(np.array([3.0, 0.5]), np.array([1.0, 100.0]))
    assert far[0] == pytest.approx(q[0, -1]) and far[1] == pytest.approx(q[-1, 20])


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(stationary, "ON_DEMAND_REQUESTS", 2000)
    table_for.cache_clear()
    yield tmp_path / "fleet" / "simulator"
    table_for.cache_clear()


def test_a_new_profile_is_measured_once_and_kept(
    cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = linear_profile(base_ms=8.0, per_item_ms=1.0, max_batch=4, sustainable_rps=200.0)
    first = table_for(profile)
    assert "measuring the latency table" in capsys.readouterr().err
    assert [p.name for p in cache.iterdir()] == [f"latency-{stationary.profile_key(profile)}.npz"]
    table_for.cache_clear()

    def no_build(*_: Any, **__: Any) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(stationary, "build", no_build)
    again = table_for(profile)
    assert again.quantiles == pytest.approx(first.quantiles, rel=1e-6)


def test_an_unreadable_table_is_measured_again(
    cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = linear_profile(base_ms=8.0, per_item_ms=1.0, max_batch=4, sustainable_rps=200.0)
    cache.mkdir(parents=True)
    bad = cache / f"latency-{stationary.profile_key(profile)}.npz"
    bad.write_bytes(b"not a table")
    table = table_for(profile)
    assert table.quantiles.shape == (len(stationary.C_GRID), len(stationary.U_GRID), len(LEVELS))
    assert "ignoring the latency table" in caplog.text
    assert stationary.load(bad) is not None  # measured again, and kept


def test_the_default_profile_table_ships() -> None:
    path = stationary.SHIPPED_DIR / f"latency-{stationary.profile_key(DEFAULT_PROFILE)}.npz"
    table = stationary.load(path)
    assert table is not None and table.requests == stationary.SHIPPED_REQUESTS
    assert np.all(np.diff(table.quantiles, axis=2) >= 0)  # each curve is a distribution


# ---------------------------------------------------------------------------- the frontier


def test_least_over_on_a_flat_rate_is_the_reference_at_that_capacity() -> None:
    """A flat rate and the hours of ``c`` instances throughout: the best plan
    runs ``c`` all along, and misses what the reference says ``c`` miss."""
    from autoscaler.simulator.frontier import least_over

    pattern = flat(400.0, 1800.0)
    best = least_over(pattern, 8 * 0.5)
    ref = event_level(pattern, 8).over_share
    assert best == pytest.approx(ref, rel=0.10)


def test_least_over_falls_as_the_budget_grows() -> None:
    from autoscaler.simulator.frontier import least_over

    pattern = BUILTIN["triple"]
    shares = [least_over(pattern, h) for h in (9.0, 10.0, 12.0, 15.0, 20.0)]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    with pytest.raises(ValueError, match="cannot keep up"):
        least_over(pattern, 2.0)
