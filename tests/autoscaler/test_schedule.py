"""Scheduled capacity floors: the cron parser, the windows, and the default
policy applying them on a fake clock (the snapshots' ``now``)."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from autoscaler.config import parse_config
from autoscaler.policy import DefaultPolicy, PolicyConfig, PolicyState
from autoscaler.registry import POLICIES
from autoscaler.schedule import Cron, ScheduledFloor, parse_duration, scheduled_floor
from autoscaler.simulator.engine import SimConfig, simulate
from autoscaler.simulator.patterns import Pattern
from autoscaler.types import Decision, Snapshot
from fleet.errors import ConfigError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "autoscaler.example.toml"
WEEKDAY_MORNINGS = ScheduledFloor(cron="0 9 * * 1-5", min=4, duration="2h")


def at(iso: str) -> float:
    """Seconds since the epoch of a UTC time."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def test_cron_fields() -> None:
    c = Cron.parse("*/15 9-17/4 1,15 1-3,12 0")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {9, 13, 17}
    assert c.days == {1, 15}
    assert c.months == {1, 2, 3, 12}
    assert c.weekdays == {6}  # Sunday, in Python's numbering
    assert Cron.parse("0 0 * * 7").weekdays == {6}  # 7 is Sunday too
    assert Cron.parse("5/20 * * * *").minutes == {5, 25, 45}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0 9 * *", "needs 5 fields"),
        ("60 * * * *", "minute: '60' is outside 0-59"),
        ("0 24 * * *", "hour: '24' is outside 0-23"),
        ("0 0 0 * *", "day of month: '0' is outside 1-31"),
        ("0 0 * 13 *", "month: '13' is outside 1-12"),
        ("0 0 * * 8", "day of week: '8' is outside 0-7"),
        ("*/0 * * * *", "minute: bad step"),
        ("0 0 * * MON", "day of week: 'MON' is not"),
        ("0 5-2 * * *", "hour: '5-2' is outside 0-23"),
    ],
)
def test_bad_cron_is_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        Cron.parse(text)


def test_day_of_month_and_day_of_week_restricted_both_match_either() -> None:
    c = Cron.parse("0 12 1 * 1")  # the 1st of the month, or a Monday
    assert c.day_matches(datetime(2026, 12, 1, tzinfo=UTC))  # a Tuesday, the 1st
    assert c.day_matches(datetime(2026, 11, 30, tzinfo=UTC))  # a Monday
    assert not c.day_matches(datetime(2026, 12, 2, tzinfo=UTC))
    only_mondays = Cron.parse("0 12 * * 1")
    assert not only_mondays.day_matches(datetime(2026, 12, 1, tzinfo=UTC))


def test_durations() -> None:
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration(600) == 600
    for bad in ("", "2x", "h", "0s", -5):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("iso", "open_"),
    [
        ("2026-11-30T08:59:59", False),  # Monday, before
        ("2026-11-30T09:00:00", True),
        ("2026-11-30T10:59:59", True),
        ("2026-11-30T11:00:00", False),  # two hours on: closed
        ("2026-12-04T10:30:00", True),  # Friday
        ("2026-12-05T09:30:00", False),  # Saturday
    ],
)
def test_weekday_morning_window(iso: str, open_: bool) -> None:
    assert WEEKDAY_MORNINGS.open_at(at(iso)) is open_


def test_a_window_runs_past_midnight_and_the_highest_floor_wins() -> None:
    late = ScheduledFloor(cron="0 23 * * *", min=3, duration="2h")
    batch = ScheduledFloor(cron="30 0 * * *", min=6, duration="15m")
    assert late.open_at(at("2026-12-01T00:30:00"))
    assert not late.open_at(at("2026-12-01T01:00:00"))
    assert scheduled_floor([late, batch], at("2026-12-01T00:40:00")) == (6, "30 0 * * *")
    assert scheduled_floor([late, batch], at("2026-12-01T00:50:00")) == (3, "0 23 * * *")
    assert scheduled_floor([late, batch], at("2026-12-01T12:00:00")) == (0, "")


def snap(now: float, *, desired: int, rate: float | None = 10.0) -> Snapshot:
    return Snapshot(
        now=now,
        backlog=0,
        arrival_rate=rate,
        per_instance_rps=50.0,
        busy_fraction=None,
        gpu_utilization=None,
        in_service=desired,
        pending=0,
        desired=desired,
    )


def _run(cfg: PolicyConfig, start: str, minutes: int, *, rate: float | None = 10.0) -> list[int]:
    """The desired count after each poll (every minute from ``start``), the
    actuator applying every decision."""
    policy = DefaultPolicy(cfg)
    state: PolicyState = policy.initial_state()
    desired, out = 1, []
    for i in range(minutes):
        decision: Decision
        decision, state = policy.decide(
            snap(at(start) + 60.0 * i, desired=desired, rate=rate), state
        )
        desired = decision.desired
        out.append(desired)
    return out


def test_the_policy_holds_the_floor_during_the_window_only() -> None:
    """Light traffic that one instance carries: 4 from 09:00 to 11:00 on a
    weekday, then back to 1 once the scale-in stabilization allows."""
    counts = _run(PolicyConfig(schedule=(WEEKDAY_MORNINGS,)), "2026-11-30T08:50:00", 180)
    minute = {f"{8 + (50 + i) // 60:02d}:{(50 + i) % 60:02d}": n for i, n in enumerate(counts)}
    assert minute["08:59"] == 1
    assert minute["09:00"] == 4
    assert all(minute[f"{h:02d}:{m:02d}"] == 4 for h in (9, 10) for m in range(60))
    assert minute["11:00"] == 4  # the stabilization window still holds the 4 recommended
    assert minute["11:30"] == 1


def test_the_floor_overrides_scale_to_zero_and_needs_no_signal() -> None:
    cfg = PolicyConfig(scale_to_zero=True, idle_to_zero_s=60.0, schedule=(WEEKDAY_MORNINGS,))
    idle = _run(cfg, "2026-11-30T07:00:00", 130, rate=0.0)
    assert idle[30] == 0  # idle, before the window: scaled to zero
    assert idle[125] == 4  # 09:05, idle: the floor all the same
    unknown = _run(cfg, "2026-11-30T08:58:00", 5, rate=None)  # arrival rate unknown
    assert unknown == [1, 1, 4, 4, 4]
    clamped = _run(
        PolicyConfig(max_capacity=3, schedule=(WEEKDAY_MORNINGS,)), "2026-11-30T09:00:00", 2
    )
    assert clamped == [3, 3]


def test_the_schedule_in_the_example_configuration_parses() -> None:
    """The commented ``[[policy.schedule]]`` block of the example, uncommented."""
    text = EXAMPLE.read_text()
    block = re.search(r"^# \[\[policy\.schedule\]\]\n(?:# \w+ = .*\n)+", text, re.M)
    assert block is not None
    text = text.replace(block.group(0), re.sub(r"^# ", "", block.group(0), flags=re.M))
    cfg = parse_config(tomllib.loads(text))
    policy = POLICIES.get(cfg.policy.kind).create(cfg.policy.params)
    assert isinstance(policy, DefaultPolicy)
    assert policy.config.schedule == (WEEKDAY_MORNINGS,)


def test_a_bad_schedule_is_reported_as_a_policy_field() -> None:
    data = {
        "broker": "memory://",
        "models": ["digits"],
        "policy": {"schedule": [{"cron": "0 9 * * 1-5", "min": 4, "duration": "2 hours"}]},
        "actuator": {"kind": "dry-run"},
    }
    with pytest.raises(ConfigError, match=re.escape("policy.schedule[0]: Value error, duration")):
        parse_config(data)


def test_the_simulator_applies_a_schedule() -> None:
    """Simulated time starts at the epoch: a floor of 5 from 01:00 for 30 minutes."""
    flat = Pattern(
        name="flat", horizon_s=3 * 3600.0, rate=lambda t: np.full_like(t, 20.0), description=""
    )
    floor = ScheduledFloor(cron="0 1 * * *", min=5, duration="30m")
    cfg = PolicyConfig(schedule=(floor,), scale_in_stabilization_s=0.0)
    r = simulate(DefaultPolicy(cfg), flat, config=SimConfig(initial_capacity=1))
    tl = r.timeline
    assert set(tl.desired[tl.t_s < 3600]) == {1.0}
    assert set(tl.desired[(tl.t_s > 3620) & (tl.t_s < 5390)]) == {5.0}
    assert set(tl.desired[tl.t_s > 5500]) == {1.0}
