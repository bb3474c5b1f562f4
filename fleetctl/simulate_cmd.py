"""``fleet simulate``, ``fleet recommend`` and ``fleet compare-policies``.

Registered on the ``fleet`` command line with :func:`add_commands`; everything
heavy is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fleetctl.formatting import HelpFormatter, Subparsers

if TYPE_CHECKING:
    from autoscaler.simulator.engine import SimConfig
    from autoscaler.simulator.profile import ServiceProfile

_FMT = HelpFormatter


def _sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="service-time profile JSON from 'fleet recommend' (default: the built-in profile)",
    )
    p.add_argument(
        "--boot-delay",
        type=float,
        default=120.0,
        help="seconds of a cold boot, from launching an instance to its container running",
    )
    p.add_argument(
        "--warm-pool",
        type=int,
        default=0,
        help="stopped, pre-initialized instances kept ready to start (0: no warm pool)",
    )
    p.add_argument(
        "--warm-boot",
        type=float,
        default=40.0,
        help="seconds to start an instance from the warm pool",
    )
    p.add_argument(
        "--model-load",
        type=float,
        default=0.0,
        help="seconds to load and warm the model, after a cold boot or a warm start alike",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds a request waits in the queue before it is dropped as a miss"
        " (default: it waits as long as it takes)",
    )
    p.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between policy decisions"
    )
    p.add_argument(
        "--objective-ms", type=float, default=100.0, help="latency objective in milliseconds"
    )
    p.add_argument("--price", type=float, default=1.006, help="price per instance-hour")
    p.add_argument(
        "--queue-limit",
        type=int,
        default=50_000,
        help="requests the broker holds before refusing more",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for the arrivals")
    p.add_argument(
        "--horizon",
        type=float,
        default=None,
        help="seconds to simulate (default: the pattern's own length)",
    )
    p.add_argument("--dt", type=float, default=0.1, help="simulation step in seconds")
    _spot_options(p)


def _spot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--warm-pool-auto",
        action="store_true",
        help="size the warm pool at every poll as the policy suggests, never below --warm-pool"
        ' (the ec2 actuator\'s warm_pool = "auto")',
    )
    p.add_argument(
        "--spot-interruptions",
        type=float,
        default=0.0,
        metavar="PER_HOUR",
        help="spot interruptions per instance-hour in service (default 0: on-demand)",
    )
    p.add_argument(
        "--spot-notice",
        type=float,
        default=120.0,
        help="seconds from an interruption's notice to the instance's end (EC2: 120)",
    )
    p.add_argument(
        "--no-capacity-rebalance",
        dest="capacity_rebalance",
        action="store_false",
        help="launch an interrupted instance's replacement once it is gone, not at the notice",
    )


def _sim_config(args: argparse.Namespace) -> tuple[SimConfig, ServiceProfile]:
    from autoscaler.simulator.engine import SimConfig
    from autoscaler.simulator.profile import DEFAULT_PROFILE, ServiceProfile

    profile = ServiceProfile.load(args.profile) if args.profile else DEFAULT_PROFILE
    cfg = SimConfig(
        dt_s=args.dt,
        poll_interval_s=args.poll_interval,
        boot_delay_s=args.boot_delay,
        latency_objective_ms=args.objective_ms,
        price_per_hour=args.price,
        queue_limit=args.queue_limit,
        seed=args.seed,
        warm_pool_size=args.warm_pool,
        warm_start_s=args.warm_boot,
        warm_pool_auto=args.warm_pool_auto,
        model_load_s=args.model_load,
        deadline_s=args.deadline,
        spot_interruptions_per_hour=args.spot_interruptions,
        spot_notice_s=args.spot_notice,
        capacity_rebalance=args.capacity_rebalance,
        initial_capacity=None if getattr(args, "warm_start", True) else 1,
    )
    return cfg, profile


def add_commands(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Register ``simulate``, ``recommend`` and ``compare-policies``."""
    _add_simulate(sub)
    _add_recommend(sub)
    _add_compare(sub)


def _add_simulate(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a traffic pattern against scaling policies",
        description="Replay a traffic pattern against one or more scaling policies and "
        "compare SLO misses, latency, instance-hours and cost. Writes a PNG per run.",
        formatter_class=_FMT,
    )
    p.add_argument(
        "--pattern",
        default="spiky",
        help="spiky, diurnal, triple, ramp, bursty, or csv:FILE: rows of 'seconds,rate', or"
        " one column of request timestamps in seconds, replayed as they came",
    )
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="start from a warm fleet sized for the pattern's first minute (default: a cold"
        " start from one instance), to see steady-state behaviour apart from a cold start",
    )
    p.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="KIND",
        help="policy kind, repeatable: any registered kind (built in: default, target-tracking,"
        " keda, static), or clairvoyant (a reference that reads the pattern ahead; not a policy"
        " you can run) (default: every registered kind)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="an autoscaler TOML file whose [policy] is simulated too, as 'configured'",
    )
    p.add_argument(
        "--static-capacity",
        type=int,
        default=None,
        help="instances of the static policy (default: enough for the pattern's peak)",
    )
    p.add_argument("--out", type=Path, default=Path("."), help="directory for the PNG")
    _sim_options(p)
    p.set_defaults(handler=_simulate)


def _add_recommend(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "recommend",
        help="ramp load against one worker; recommend per-instance target and min/max",
        description="Ramp offered load against one running worker until saturation, report "
        "the sustainable requests/s per instance and the latency knee, and write the "
        "service-time profile, a starting autoscaler configuration and a plot.",
        formatter_class=_FMT,
    )
    p.add_argument("--broker", required=True, help="broker URL the worker consumes from")
    p.add_argument("--model", required=True, help="model name to load")
    p.add_argument("--input-name", default="input", help="name of the model's input tensor")
    p.add_argument(
        "--features", type=int, default=64, help="FP32 features per request (input shape [1, N])"
    )
    p.add_argument(
        "--objective-ms", type=float, default=100.0, help="p99 latency objective in milliseconds"
    )
    p.add_argument("--start-rps", type=float, default=20.0, help="offered load of the first step")
    p.add_argument(
        "--growth", type=float, default=1.5, help="factor between the offered loads of two steps"
    )
    p.add_argument("--step-seconds", type=float, default=10.0, help="length of each step")
    p.add_argument(
        "--max-rps", type=float, default=20_000.0, help="stop ramping at this offered load"
    )
    p.add_argument(
        "--min-rps", type=float, default=10.0, help="lowest expected traffic, for min capacity"
    )
    p.add_argument(
        "--peak-rps", type=float, default=1000.0, help="highest expected traffic, for max capacity"
    )
    p.add_argument(
        "--growth-factor", type=float, default=1.5, help="headroom on the peak, for max capacity"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("recommend"),
        help="directory for profile.json, autoscaler.toml and recommend.png",
    )
    p.set_defaults(handler=_recommend)


def _add_compare(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare-policies",
        help="regenerate the policy comparison table and plots for the documentation",
        description="Run every built-in pattern against every policy and write "
        "policies.md with the comparison table, the goal check and img/<pattern>.png.",
        formatter_class=_FMT,
    )
    p.add_argument("--out", type=Path, default=Path("docs"), help="documentation directory")
    p.add_argument(
        "--goal-seeds",
        type=int,
        default=5,
        metavar="N",
        help="measure the goal against foresight on seeds 0..N-1 of each pattern, with a warm"
        " pool (0: skip it)",
    )
    p.add_argument(
        "--pattern",
        action="append",
        default=None,
        help="only these built-in patterns (repeatable; default: all)",
    )
    _sim_options(p)
    p.set_defaults(handler=_compare)


def _simulate(args: argparse.Namespace) -> int:
    from autoscaler.simulator.compare import REFERENCE_KINDS, make_policy, policy_kinds
    from autoscaler.simulator.engine import SimResult, simulate
    from autoscaler.simulator.patterns import get_pattern
    from autoscaler.simulator.report import plot, text_table

    cfg, profile = _sim_config(args)
    pattern = get_pattern(args.pattern)
    kinds = args.policy or list(policy_kinds())
    unknown = sorted(set(kinds) - {*policy_kinds(), *REFERENCE_KINDS})
    if unknown:
        known = ", ".join((*policy_kinds(), *REFERENCE_KINDS))
        print(
            f"fleet simulate: unknown policy kind {unknown[0]!r}; known: {known}", file=sys.stderr
        )
        return 2
    results: list[SimResult] = []
    for kind in kinds:
        policy = make_policy(
            kind,
            pattern,
            profile,
            static_capacity=args.static_capacity,
            horizon_s=args.horizon,
            config=cfg,
        )
        results.append(
            simulate(
                policy, pattern, profile=profile, config=cfg, horizon_s=args.horizon, name=kind
            )
        )
    if args.config is not None:
        from autoscaler.config import load_config
        from autoscaler.factory import build_policy

        configured = build_policy(load_config(args.config).policy)
        results.append(
            simulate(
                configured,
                pattern,
                profile=profile,
                config=cfg,
                horizon_s=args.horizon,
                name="configured",
            )
        )
    print(text_table(results))
    if cfg.spot_interruptions_per_hour > 0:
        counts = ", ".join(f"{r.policy} {r.interrupted}" for r in results)
        print(f"\nspot interruptions: {counts}")
    if cfg.warm_pool_auto:
        pools = ", ".join(f"{r.policy} {r.mean_warm_pool:.1f}" for r in results)
        print(f"\nwarm pool, mean instances stopped in it: {pools}")
    path = plot(
        results, args.out / f"simulate-{pattern.name}.png", objective_ms=cfg.latency_objective_ms
    )
    print(f"\nplot: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from autoscaler.simulator.compare import write_docs
    from autoscaler.simulator.patterns import BUILTIN
    from autoscaler.simulator.report import text_table

    cfg, profile = _sim_config(args)
    path, comparisons, goal_runs = write_docs(
        args.out,
        profile=profile,
        config=cfg,
        horizon_s=args.horizon,
        patterns=args.pattern or list(BUILTIN),
        goal_seeds=range(args.goal_seeds),
        command=_command_line(args),
    )
    for comp in comparisons:
        print(text_table(comp.results))
        if comp.goal is not None:
            print("\n".join(f"  {line}" for line in comp.goal.lines))
        print()
    for run in goal_runs:
        verdict = "met" if run.goal.met else "NOT met"
        print(f"goal against foresight, {run.pattern} seed {run.seed}: {verdict}")
        print("\n".join(f"  {line}" for line in run.goal.lines))
    print(f"wrote {path} and {path.parent / 'img'}")
    met = all(c.goal is None or c.goal.met for c in comparisons)
    return 0 if met and all(run.goal.met for run in goal_runs) else 1


def _command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the documentation as it was asked for."""
    parts = ["fleet compare-policies"]
    if args.goal_seeds != 5:
        parts.append(f"--goal-seeds {args.goal_seeds}")
    if args.horizon is not None:
        parts.append(f"--horizon {args.horizon:g}")
    for name in args.pattern or []:
        parts.append(f"--pattern {name}")
    return " ".join(parts)


def _recommend(args: argparse.Namespace) -> int:
    import asyncio

    from fleetctl.recommend import RampSettings, recommend, write_outputs

    settings = RampSettings(
        broker=args.broker,
        model=args.model,
        input_name=args.input_name,
        features=args.features,
        objective_ms=args.objective_ms,
        start_rps=args.start_rps,
        growth=args.growth,
        step_s=args.step_seconds,
        max_rps=args.max_rps,
    )
    result = asyncio.run(recommend(settings))
    paths = write_outputs(
        result,
        args.out,
        broker=args.broker,
        min_rps=args.min_rps,
        peak_rps=args.peak_rps,
        growth_factor=args.growth_factor,
    )
    print(result.summary())
    for path in paths:
        print(f"wrote {path}")
    return 0


__all__ = ["add_commands"]
