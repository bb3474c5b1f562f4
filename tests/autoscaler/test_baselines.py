"""Baselines: target tracking (SageMaker asynchronous), KEDA queue length with
HPA defaults, static. Each case feeds snapshots every 5 s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from autoscaler.baselines import (
    KedaConfig,
    KedaPolicy,
    StaticConfig,
    StaticPolicy,
    TargetTrackingConfig,
    TargetTrackingPolicy,
)
from autoscaler.types import Policy, Snapshot

pytestmark = pytest.mark.unit


def drive(
    policy: Policy[Any],
    backlog: Callable[[float], int | None],
    *,
    start: int,
    until: float,
    step: float = 5.0,
) -> list[tuple[float, int]]:
    """Feed snapshots every ``step`` s; in-service follows desired at once.
    Returns (time, desired) after each decision that changed it."""
    state = policy.initial_state()
    desired = start
    changes: list[tuple[float, int]] = []
    t = 0.0
    while t <= until:
        s = Snapshot(
            now=t,
            backlog=backlog(t),
            arrival_rate=None,
            per_instance_rps=None,
            busy_fraction=None,
            gpu_utilization=None,
            in_service=desired,
            pending=0,
            desired=desired,
        )
        decision, state = policy.decide(s, state)
        if decision.desired != desired:
            changes.append((t, decision.desired))
            desired = decision.desired
        t += step
    return changes


# --------------------------------------------------------------------------- target tracking


def test_target_tracking_defaults_are_the_sagemaker_example() -> None:
    cfg = TargetTrackingConfig()
    assert cfg.target_backlog_per_instance == 5.0
    assert (cfg.scale_out_cooldown_s, cfg.scale_in_cooldown_s) == (300.0, 600.0)
    assert (cfg.period_s, cfg.scale_out_periods, cfg.scale_in_periods) == (60.0, 3, 15)


@pytest.mark.parametrize(
    ("backlog", "until", "expected"),
    [
        pytest.param(lambda t: 40, 175.0, [], id="two-high-periods-not-enough"),
        pytest.param(lambda t: 40, 185.0, [(180.0, 8)], id="scale-out-after-three-periods"),
        pytest.param(lambda t: 40 if t < 120 else 10, 400.0, [], id="periods-must-be-consecutive"),
        pytest.param(lambda t: None, 400.0, [], id="missing-data-holds"),
        pytest.param(
            lambda t: 0, 14 * 60 + 5, [], id="fourteen-low-periods-not-enough-to-scale-in"
        ),
        pytest.param(lambda t: 0, 15 * 60 + 5, [(900.0, 1)], id="scale-in-after-fifteen"),
    ],
)
def test_target_tracking(
    backlog: Callable[[float], int | None], until: float, expected: list[tuple[float, int]]
) -> None:
    assert drive(TargetTrackingPolicy(), backlog, start=2, until=until) == expected


def test_target_tracking_scale_from_zero() -> None:
    policy = TargetTrackingPolicy(TargetTrackingConfig(min_capacity=0))
    assert drive(policy, lambda t: 3, start=0, until=0) == [(0.0, 1)]


def test_target_tracking_scale_in_cooldown() -> None:
    policy = TargetTrackingPolicy(TargetTrackingConfig(scale_in_periods=1, min_capacity=1))
    # backlog 0: every period is low; capacity falls to 1 at once (ceil(0) -> min)
    changes = drive(policy, lambda t: 0, start=8, until=1300)
    assert changes[0] == (60.0, 1)


# --------------------------------------------------------------------------- KEDA + HPA


def test_keda_defaults() -> None:
    cfg = KedaConfig()
    assert cfg.queue_length == 20
    assert (cfg.sync_period_s, cfg.tolerance) == (15.0, 0.1)
    assert (cfg.scale_up_percent, cfg.scale_up_pods, cfg.scale_up_period_s) == (100.0, 4, 15.0)
    assert cfg.scale_down_stabilization_s == 300.0


@pytest.mark.parametrize(
    ("backlog", "start", "until", "expected"),
    [
        pytest.param(lambda t: 42, 2, 60.0, [], id="within-tolerance"),
        pytest.param(lambda t: 200, 2, 0.0, [(0.0, 6)], id="scale-up-limited-to-4-pods"),
        pytest.param(lambda t: 200, 2, 20.0, [(0.0, 6), (15.0, 10)], id="next-sync-continues"),
        pytest.param(lambda t: 400, 8, 0.0, [(0.0, 16)], id="scale-up-limited-to-100-percent"),
        pytest.param(
            lambda t: 200 if t < 1 else 20, 10, 295.0, [], id="scale-down-stabilized-300s"
        ),
        pytest.param(
            lambda t: 200 if t < 1 else 20, 10, 305.0, [(300.0, 1)], id="scale-down-after-window"
        ),
        pytest.param(lambda t: None, 4, 100.0, [], id="missing-metric-holds"),
    ],
)
def test_keda(
    backlog: Callable[[float], int | None],
    start: int,
    until: float,
    expected: list[tuple[float, int]],
) -> None:
    assert drive(KedaPolicy(), backlog, start=start, until=until) == expected


def test_keda_syncs_every_15s() -> None:
    changes = drive(KedaPolicy(), lambda t: 2000, start=1, until=44.0)
    assert [t for t, _ in changes] == [0.0, 15.0, 30.0]


def test_keda_activation_and_cooldown_with_min_zero() -> None:
    policy = KedaPolicy(KedaConfig(min_capacity=0))
    changes = drive(policy, lambda t: 5 if t < 10 else 0, start=0, until=400.0)
    assert changes[0] == (0.0, 1)
    assert changes[-1][1] == 0
    assert 300.0 <= changes[-1][0] <= 330.0


# --------------------------------------------------------------------------- static


@pytest.mark.parametrize("start", [pytest.param(0, id="from-0"), pytest.param(9, id="from-9")])
def test_static(start: int) -> None:
    policy = StaticPolicy(StaticConfig(capacity=4))
    changes = drive(policy, lambda t: 1000, start=start, until=100.0)
    assert changes == [(0.0, 4)]


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        pytest.param(TargetTrackingConfig, {"target_backlog_per_instance": 0}, id="tt-target"),
        pytest.param(KedaConfig, {"queue_length": 0}, id="keda-queue"),
        pytest.param(KedaConfig, {"min_capacity": 3, "max_capacity": 2}, id="keda-bounds"),
        pytest.param(StaticConfig, {"capacity": -1}, id="static"),
    ],
)
def test_config_validation(cls: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)
