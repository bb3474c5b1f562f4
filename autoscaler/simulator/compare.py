"""The policy comparison behind ``fleet compare-policies`` and ``docs/policies.md``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoscaler.policy import DefaultPolicy, PolicyConfig
from autoscaler.registry import POLICIES
from autoscaler.simulator.clairvoyant import ClairvoyantConfig, ClairvoyantPolicy
from autoscaler.simulator.docs import render
from autoscaler.simulator.engine import SimConfig, SimResult, simulate
from autoscaler.simulator.patterns import BUILTIN, Pattern
from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile
from autoscaler.simulator.report import (
    DAILY_FLOOR,
    GOAL_CARRY_OVER,
    GOAL_WARM_POOL,
    GOAL_WARM_START_S,
    PatternComparison,
    SeerGoalRun,
    check_goal,
    check_seer_goal,
    plot,
)
from autoscaler.types import Policy

GOAL_KINDS = ("default", "target-tracking", "keda", "static")
"""The policies the default one's goal is judged against, in the order the
comparison lists them."""
REFERENCE_KINDS = (ClairvoyantPolicy.name,)
"""Not policies anyone can run: references that mark what foresight is worth."""


def policy_kinds() -> tuple[str, ...]:
    """Every registered policy kind (:data:`autoscaler.registry.POLICIES`):
    those of the goal first, in their order, then the others by name."""
    names = POLICIES.names()
    first = [kind for kind in GOAL_KINDS if kind in names]
    return (*first, *sorted(set(names) - set(first)))


POLICY_KINDS = policy_kinds()
"""The policy kinds registered when this module was imported."""
ALL_KINDS = (*POLICY_KINDS, *REFERENCE_KINDS)


def static_for_peak(
    pattern: Pattern, profile: ServiceProfile, *, dt: float = 0.1, horizon_s: float | None = None
) -> int:
    """Instances that carry the pattern's peak at the sustainable per-instance rate."""
    return max(1, math.ceil(pattern.peak(dt, horizon_s) / profile.sustainable_rps - 1e-9))


def make_policy(
    kind: str,
    pattern: Pattern,
    profile: ServiceProfile,
    *,
    static_capacity: int | None = None,
    horizon_s: float | None = None,
    config: SimConfig | None = None,
) -> Policy[Any]:
    """A policy of ``kind`` with its documented defaults (static: sized for the
    peak; clairvoyant: reading the rate a boot delay and a poll ahead)."""
    if kind == ClairvoyantPolicy.name:
        cfg = config or SimConfig()
        lookahead = cfg.boot_delay_s + cfg.poll_interval_s
        return ClairvoyantPolicy(
            pattern,
            ClairvoyantConfig(
                per_instance_rps=profile.sustainable_rps,
                lookahead_s=lookahead,
                in_flight_per_instance=float(profile.max_batch),
            ),
        )
    if kind not in POLICIES:
        known = ", ".join((*policy_kinds(), *REFERENCE_KINDS))
        raise ValueError(f"unknown policy kind {kind!r}; choose from {known}")
    params: dict[str, Any] = {}
    if kind == "static":
        count = static_capacity
        if count is None:
            count = static_for_peak(pattern, profile, horizon_s=horizon_s)
        params["capacity"] = count
    return POLICIES.get(kind).create(params)


def compare_pattern(
    pattern: Pattern,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    config: SimConfig | None = None,
    horizon_s: float | None = None,
    kinds: Sequence[str] | None = None,
) -> PatternComparison:
    """Every policy kind (default: every registered one and the references)
    on one pattern, same seed (so the same arrivals)."""
    chosen = (*policy_kinds(), *REFERENCE_KINDS) if kinds is None else tuple(kinds)
    results = tuple(
        simulate(
            make_policy(kind, pattern, profile, horizon_s=horizon_s, config=config),
            pattern,
            profile=profile,
            config=config,
            horizon_s=horizon_s,
        )
        for kind in chosen
    )
    goal = None
    if set(GOAL_KINDS) <= {r.policy for r in results}:
        get = {r.policy: r for r in results}
        goal = check_goal(get["default"], get["target-tracking"], get["keda"], get["static"])
    return PatternComparison(pattern=pattern, results=results, goal=goal)


GOAL_KINDS_SEER = ("default", "target-tracking", "keda", ClairvoyantPolicy.name)
"""The runs the goal against foresight compares."""
GOAL_SEEDS = (0, 1, 2, 3, 4)


def learned_state(
    policy: Policy[Any],
    pattern: Pattern,
    *,
    profile: ServiceProfile,
    config: SimConfig,
    horizon_s: float | None = None,
) -> Any:
    """What ``policy`` learned over one earlier run of ``pattern``, its times
    moved back by the run's length so that the next run continues it."""
    first = simulate(policy, pattern, profile=profile, config=config, horizon_s=horizon_s)
    state = first.final_state
    shift = getattr(state, "shifted", None)
    return shift(-first.horizon_s) if callable(shift) else state


def goal_config(seed: int, base: SimConfig | None = None) -> SimConfig:
    """The fleet the goal against foresight is measured on: ``base`` (default:
    the default fleet) with the seed and a warm pool of :data:`GOAL_WARM_POOL`."""
    return dataclasses.replace(
        base or SimConfig(),
        seed=seed,
        warm_pool_size=GOAL_WARM_POOL,
        warm_start_s=GOAL_WARM_START_S,
    )


def seer_goal(
    pattern: Pattern,
    seed: int,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    base: SimConfig | None = None,
    horizon_s: float | None = None,
) -> SeerGoalRun:
    """The default policy against target tracking, KEDA and the clairvoyant
    reference on ``pattern`` with ``seed``, on the goal's fleet."""
    cfg = goal_config(seed, base)
    results: list[SimResult] = []
    for kind in GOAL_KINDS_SEER:
        policy = make_policy(kind, pattern, profile, horizon_s=horizon_s, config=cfg)
        start = None
        if kind == "default" and pattern.name in GOAL_CARRY_OVER:
            start = learned_state(policy, pattern, profile=profile, config=cfg, horizon_s=horizon_s)
        results.append(
            simulate(
                policy,
                pattern,
                profile=profile,
                config=cfg,
                horizon_s=horizon_s,
                initial_state=start,
            )
        )
    get = {r.policy: r for r in results}
    goal = check_seer_goal(
        get["default"], get["target-tracking"], get["keda"], get[ClairvoyantPolicy.name]
    )
    return SeerGoalRun(pattern=pattern.name, seed=seed, results=tuple(results), goal=goal)


def daily_floor_run(
    pattern: Pattern, seed: int, *, profile: ServiceProfile, base: SimConfig | None = None
) -> SimResult:
    """The default policy with a daily floor of :data:`DAILY_FLOOR` on
    ``pattern``, on the goal's fleet, after a run of the pattern before it
    (a day of history, for a pattern a day long), as a restarted autoscaler
    reads it back from its state file."""
    policy = DefaultPolicy(PolicyConfig(daily_floor=DAILY_FLOOR))
    cfg = goal_config(seed, base)
    start = learned_state(policy, pattern, profile=profile, config=cfg)
    return simulate(policy, pattern, profile=profile, config=cfg, initial_state=start)


def write_docs(
    out_dir: str | Path,
    *,
    profile: ServiceProfile = DEFAULT_PROFILE,
    config: SimConfig | None = None,
    horizon_s: float | None = None,
    patterns: Sequence[str] = tuple(BUILTIN),
    command: str = "fleet compare-policies",
    goal_seeds: Sequence[int] = (),
) -> tuple[Path, list[PatternComparison], list[SeerGoalRun]]:
    """Run the comparison; write ``policies.md`` and ``img/<pattern>.png`` under
    ``out_dir``. With ``goal_seeds``, the goal against foresight is measured
    on each pattern with each seed and tabled too."""
    cfg = config or SimConfig()
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    comparisons = [
        compare_pattern(BUILTIN[name], profile=profile, config=cfg, horizon_s=horizon_s)
        for name in patterns
    ]
    for comp in comparisons:
        plot(
            comp.results,
            out / "img" / f"{comp.pattern.name}.png",
            objective_ms=cfg.latency_objective_ms,
        )
    goal_runs = [
        seer_goal(BUILTIN[name], seed, profile=profile, base=config, horizon_s=horizon_s)
        for name in patterns
        for seed in goal_seeds
    ]
    daily = None
    if "diurnal" in patterns and goal_seeds and horizon_s is None:
        daily = daily_floor_run(BUILTIN["diurnal"], goal_seeds[0], profile=profile, base=config)
    path = out / "policies.md"
    text = render(
        comparisons,
        profile=profile,
        config=cfg,
        command=command,
        goal_runs=goal_runs,
        daily=daily,
    )
    path.write_text(text, encoding="utf-8")
    return path, comparisons, goal_runs


__all__ = [
    "ALL_KINDS",
    "GOAL_CARRY_OVER",
    "GOAL_KINDS",
    "GOAL_KINDS_SEER",
    "GOAL_SEEDS",
    "GOAL_WARM_POOL",
    "POLICY_KINDS",
    "REFERENCE_KINDS",
    "PatternComparison",
    "SeerGoalRun",
    "compare_pattern",
    "daily_floor_run",
    "goal_config",
    "learned_state",
    "make_policy",
    "policy_kinds",
    "seer_goal",
    "static_for_peak",
    "write_docs",
]
