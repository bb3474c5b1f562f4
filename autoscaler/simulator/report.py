"""Comparison tables, the goal check and plots of simulation results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoscaler.simulator.engine import SimResult
from autoscaler.simulator.patterns import Pattern

COLUMNS = (
    "pattern",
    "policy",
    "over objective",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "instance-h",
    "cost",
    "peak backlog",
    "actions",
)


def _ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def row(r: SimResult) -> tuple[str, ...]:
    return (
        r.pattern,
        r.policy,
        f"{100 * r.over_share:.2f}%",
        _ms(r.p50_ms),
        _ms(r.p95_ms),
        _ms(r.p99_ms),
        f"{r.instance_hours:.1f}",
        f"${r.cost:,.2f}",
        f"{r.peak_backlog:,}",
        str(r.actions),
    )


def markdown_table(results: Sequence[SimResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def text_table(results: Sequence[SimResult]) -> str:
    rows = [COLUMNS, *(row(r) for r in results)]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    out = []
    for i, x in enumerate(rows):
        out.append(
            "  ".join(
                c.ljust(w) if j < 2 else c.rjust(w)
                for j, (c, w) in enumerate(zip(x, widths, strict=True))
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


@dataclass(frozen=True, kw_only=True, slots=True)
class GoalCheck:
    """The goal the default policy must meet on one pattern."""

    pattern: str
    failures: tuple[str, ...]
    lines: tuple[str, ...]
    claims: tuple[tuple[str, bool], ...] = ()
    """Each part of the goal by a short name, and whether it holds."""

    def holds(self, claim: str) -> bool:
        return dict(self.claims)[claim]

    @property
    def met(self) -> bool:
        return not self.failures


MAX_STATIC_SHARE = 0.5
"""The goal: at most this share of static-for-the-peak's instance-hours ..."""
MAX_OVER_SHARE = 0.01
"""... with at most this share of requests over the objective."""


def meets_static_goal(result: SimResult, static: SimResult) -> bool:
    """The goal against static provisioning for the peak, for any result."""
    return (
        result.instance_hours <= MAX_STATIC_SHARE * static.instance_hours
        and result.over_share <= MAX_OVER_SHARE
    )


def check_goal(
    default: SimResult,
    target_tracking: SimResult,
    keda: SimResult,
    static: SimResult,
    *,
    max_static_share: float = MAX_STATIC_SHARE,
    max_over_share: float = MAX_OVER_SHARE,
) -> GoalCheck:
    """Fewer requests over the objective than target tracking and KEDA with no
    more instance-hours than either; against static provisioning for the peak,
    at most half its instance-hours with at most 1% over the objective."""
    failures: list[str] = []
    lines: list[str] = []

    def claim(ok: bool, text: str) -> None:
        lines.append(("met: " if ok else "NOT met: ") + text)
        if not ok:
            failures.append(text)

    d = default
    for base in (target_tracking, keda):
        claim(
            d.over_objective < base.over_objective,
            f"over objective {100 * d.over_share:.2f}%"
            f" < {base.policy} {100 * base.over_share:.2f}%",
        )
        claim(
            d.instance_hours <= base.instance_hours,
            f"instance-hours {d.instance_hours:.1f} <= {base.policy} {base.instance_hours:.1f}",
        )
    share = d.instance_hours / static.instance_hours if static.instance_hours else math.inf
    claim(
        share <= max_static_share,
        f"instance-hours {100 * share:.0f}% of static's {static.instance_hours:.1f}"
        f" (at most {100 * max_static_share:.0f}%)",
    )
    claim(
        d.over_share <= max_over_share,
        f"over objective {100 * d.over_share:.2f}% (at most {100 * max_over_share:.0f}%)",
    )
    return GoalCheck(pattern=d.pattern, failures=tuple(failures), lines=tuple(lines))


MAX_SEER_HOURS = 1.10
"""The goal against foresight: at most this multiple of the clairvoyant
reference's instance-hours ..."""
MAX_OVER_ABOVE_SEER = 0.005
"""... with at most ``MAX_OVER_SHARE`` of requests over the objective, and at
most this share more than the reference."""


def check_seer_goal(
    default: SimResult, target_tracking: SimResult, keda: SimResult, seer: SimResult
) -> GoalCheck:
    """The goal against foresight: instance-hours at most 1.10x the
    clairvoyant reference's; requests over the objective at most 1% and at
    most the reference's + 0.5 percentage points; fewer over the objective
    than target tracking and KEDA at no more instance-hours than either."""
    failures: list[str] = []
    lines: list[str] = []
    claims: list[tuple[str, bool]] = []

    def claim(key: str, ok: bool, text: str) -> None:
        claims.append((key, ok))
        lines.append(("met: " if ok else "NOT met: ") + text)
        if not ok:
            failures.append(text)

    d = default
    ratio = d.instance_hours / seer.instance_hours if seer.instance_hours else math.inf
    claim(
        "hours",
        ratio <= MAX_SEER_HOURS,
        f"instance-hours {d.instance_hours:.2f} = {ratio:.2f}x clairvoyant's"
        f" {seer.instance_hours:.2f} (at most {MAX_SEER_HOURS:.2f}x)",
    )
    claim(
        "over",
        d.over_share <= MAX_OVER_SHARE,
        f"over objective {100 * d.over_share:.2f}% (at most {100 * MAX_OVER_SHARE:.0f}%)",
    )
    claim(
        "over-seer",
        d.over_share <= seer.over_share + MAX_OVER_ABOVE_SEER,
        f"over objective {100 * d.over_share:.2f}% <= clairvoyant's"
        f" {100 * seer.over_share:.2f}% + {100 * MAX_OVER_ABOVE_SEER:.1f} pp",
    )
    for base in (target_tracking, keda):
        claim(
            base.policy,
            d.over_objective < base.over_objective and d.instance_hours <= base.instance_hours,
            f"over objective {100 * d.over_share:.2f}% < {base.policy}"
            f" {100 * base.over_share:.2f}% at instance-hours {d.instance_hours:.2f}"
            f" <= {base.instance_hours:.2f}",
        )
    return GoalCheck(
        pattern=d.pattern, failures=tuple(failures), lines=tuple(lines), claims=tuple(claims)
    )


GOAL_WARM_POOL = 4
GOAL_WARM_START_S = 40.0
"""Warm instances in the goal's fleet: a burst's first step (4 x 50 req/s)
starts in ``warm_start_s`` (40 s) instead of a cold boot (120 s)."""

DAILY_FLOOR = 1.0
"""The ``daily_floor`` the docs measure on ``diurnal``, against the default
policy without one."""

GOAL_CARRY_OVER = ("spiky",)
"""Patterns on which the default policy starts with the state it learned in
an earlier run of the same pattern (as a restarted autoscaler reads it back
from its state file): a recurring surge is predicted from its first one."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SeerGoalRun:
    """The goal against foresight on one pattern and seed."""

    pattern: str
    seed: int
    results: tuple[SimResult, ...]
    goal: GoalCheck

    def by_policy(self, name: str) -> SimResult:
        return next(r for r in self.results if r.policy == name)


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#7f7f7f", "#9467bd", "#ff7f0e")


@dataclass(frozen=True, kw_only=True, slots=True)
class PatternComparison:
    """Every policy compared on one pattern, and the goal check when the
    baselines it is judged against were among them."""

    pattern: Pattern
    results: tuple[SimResult, ...]
    goal: GoalCheck | None

    def by_policy(self, name: str) -> SimResult:
        return next(r for r in self.results if r.policy == name)


def plot(results: Sequence[SimResult], path: str | Path, *, objective_ms: float = 100.0) -> Path:
    """One figure (900x600 px): offered load, desired and in-service capacity,
    backlog and p99 latency over time, one colour per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(9, 6), dpi=100, sharex=True)
    hours = max(r.horizon_s for r in results) > 3 * 3600
    scale, unit = (3600.0, "h") if hours else (60.0, "min")
    first = results[0].timeline
    axes[0].plot(first.t_s / scale, first.offered_rps, color="black", lw=0.8)
    axes[0].set_ylabel("offered\nreq/s", fontsize=8)
    for i, r in enumerate(results):
        tl, color = r.timeline, _COLORS[i % len(_COLORS)]
        x = tl.t_s / scale
        axes[1].step(x, tl.desired, where="post", color=color, lw=0.9, label=f"{r.policy} desired")
        axes[1].plot(x, tl.in_service, color=color, lw=0.6, ls=":", alpha=0.9)
        axes[2].plot(x, tl.backlog, color=color, lw=0.8)
        axes[3].plot(x, tl.p99_ms, color=color, lw=0.8, label=r.policy)
    axes[1].set_ylabel("instances\n(: in service)", fontsize=8)
    axes[2].set_ylabel("backlog", fontsize=8)
    axes[2].set_yscale("symlog", linthresh=100)
    axes[3].set_ylabel("p99 ms", fontsize=8)
    axes[3].set_yscale("log")
    axes[3].axhline(objective_ms, color="black", lw=0.6, ls="--")
    axes[3].set_xlabel(f"time ({unit})", fontsize=8)
    axes[3].legend(fontsize=7, ncol=len(results), loc="upper left")
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results[0].pattern}", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = [
    "COLUMNS",
    "GOAL_CARRY_OVER",
    "GOAL_WARM_POOL",
    "GOAL_WARM_START_S",
    "MAX_OVER_ABOVE_SEER",
    "MAX_OVER_SHARE",
    "MAX_SEER_HOURS",
    "MAX_STATIC_SHARE",
    "GoalCheck",
    "PatternComparison",
    "SeerGoalRun",
    "check_goal",
    "check_seer_goal",
    "markdown_table",
    "meets_static_goal",
    "plot",
    "row",
    "text_table",
]
