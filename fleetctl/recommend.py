"""``fleet recommend``: ramp offered load against one worker until saturation.

Steps of open-loop Poisson load (each ``growth`` times the last), one request per
broker message, each request timed from publish to reply by its id. The ramp
stops at saturation: throughput stops growing (less than 5% more than the
step before), p99 latency passes the objective, or more than 1% of requests
fail or go unanswered. The worker's own reply timings (batch size and model
run time) give the service-time profile.

Outputs: ``profile.json`` (for ``fleet simulate``), ``autoscaler.toml`` (a
starting configuration the autoscaler loads: the per-instance target,
``min = ceil(min_rps / per_instance)``,
``max = ceil(peak_rps / per_instance * growth_factor)``) and ``recommend.png``
(throughput and latency against offered load). ``autoscaler.toml`` names the
broker without its password: the autoscaler takes that from
``FLEET_BROKER_PASSWORD`` or the file ``FLEET_BROKER_PASSWORD_FILE`` names.

Traffic goes through :class:`producer.Client`, the client every user has, set
to one request per broker message and many publishes in flight.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoscaler.simulator.profile import ServiceProfile
from fleet.contract import Reply
from fleet.errors import FleetError, ModelNotFound
from fleet.logging import get_logger
from fleet.redact import dataclass_repr, strip_password, url_password
from fleet.settings import BROKER, resolve_password
from producer import Client

log = get_logger("fleetctl.recommend")


@dataclass(frozen=True, kw_only=True, slots=True)
class RampSettings:
    broker: str
    model: str
    input_name: str = "input"
    features: int = 64
    objective_ms: float = 100.0
    start_rps: float = 20.0
    growth: float = 1.5
    step_s: float = 10.0
    max_rps: float = 20_000.0
    max_steps: int = 40
    settle_s: float = 5.0  # how long to wait for a step's last replies
    ready_timeout_s: float = 30.0  # how long to wait for a worker to declare the model
    max_error_share: float = 0.01
    min_growth: float = 1.05  # throughput must grow at least this much per step

    def __post_init__(self) -> None:
        if self.growth <= 1 or self.start_rps <= 0 or self.step_s <= 0 or self.features < 1:
            raise ValueError("need growth > 1, start_rps > 0, step_s > 0, features >= 1")

    def __repr__(self) -> str:
        return dataclass_repr(self)  # the broker's password as ***


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    offered_rps: float
    throughput_rps: float  # replies received per second during the step
    sent: int
    answered: int
    errors: int  # error replies plus requests never answered
    p50_ms: float
    p99_ms: float

    @property
    def error_share(self) -> float:
        return self.errors / self.sent if self.sent else 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Recommendation:
    model: str
    objective_ms: float
    steps: tuple[Step, ...]
    sustainable_rps: float  # the most throughput of a step within the objective
    knee_rps: float  # offered load of the last step within the objective
    stopped_because: str
    profile: ServiceProfile

    def summary(self) -> str:
        lines = [f"{'offered':>9} {'throughput':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
        for s in self.steps:
            lines.append(
                f"{s.offered_rps:9.1f} {s.throughput_rps:10.1f} {s.p50_ms:8.1f}"
                f" {s.p99_ms:8.1f} {100 * s.error_share:6.2f}%"
            )
        lines.append(f"saturation: {self.stopped_because}")
        lines.append(
            f"sustainable: {self.sustainable_rps:.1f} req/s per instance within "
            f"p99 {self.objective_ms:g} ms; latency knee at {self.knee_rps:.1f} req/s offered"
        )
        return "\n".join(lines)


@dataclass(slots=True)
class _Tracker:
    """Per-step latencies and the worker's batch timings, from the replies."""

    latency_ms: list[float] = field(default_factory=list)
    failed: int = 0
    reply_times: list[float] = field(default_factory=list)
    batch_ms: dict[int, list[float]] = field(default_factory=dict)

    def on_reply(self, reply: Reply, sent: float) -> None:
        now = time.monotonic()
        self.latency_ms.append((now - sent) * 1e3)
        self.reply_times.append(now)
        if reply.error is not None:
            self.failed += 1
        elif reply.timings.batch_size > 0:
            self.batch_ms.setdefault(reply.timings.batch_size, []).append(
                reply.timings.inference_ms
            )


def _client(settings: RampSettings) -> Client:
    """One request per broker message, published concurrently: the worker
    sees the offered rate as it is, not smoothed by the client's coalescing."""
    deadline_s = max(30.0, settings.step_s + settings.settle_s)
    broker = resolve_password(settings.broker, BROKER)  # naming only the user: from the env
    return Client(broker, timeout=deadline_s, max_batch=1, max_publishes=256)


async def _wait_for_worker(client: Client, settings: RampSettings) -> None:
    """Send one request until a worker has declared the model's queues."""
    inputs = {settings.input_name: np.zeros((1, settings.features), dtype=np.float32)}
    end = time.monotonic() + settings.ready_timeout_s
    while True:
        try:
            await client.infer_reply(settings.model, inputs)
            return
        except ModelNotFound:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


async def _one(client: Client, settings: RampSettings, tracker: _Tracker, x: np.ndarray) -> None:
    sent = time.monotonic()
    try:
        reply = await client.infer_reply(settings.model, {settings.input_name: x})
    except FleetError as exc:  # refused or never answered: counted as unanswered
        log.debug("recommend.request_failed", error=repr(exc))
        return
    tracker.on_reply(reply, sent)


async def _offer(
    client: Client, settings: RampSettings, tracker: _Tracker, rate: float
) -> tuple[list[asyncio.Task[None]], float, float]:
    """Start ``rate`` requests/s for one step; returns the tasks and the step's span."""
    rng = np.random.default_rng(int(rate * 1000) % (2**32))
    # Poisson arrivals: the sustainable rate is then what real traffic, with
    # its bursts, gets within the objective
    due_at = np.cumsum(rng.exponential(1.0 / rate, int(rate * settings.step_s * 1.5) + 64))
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < settings.step_s:
        due = int(np.searchsorted(due_at, elapsed, side="right"))
        for _ in range(max(0, due - len(tasks))):
            x = rng.standard_normal((1, settings.features)).astype(np.float32)
            tasks.append(asyncio.create_task(_one(client, settings, tracker, x)))
        await asyncio.sleep(0.005)
    return tasks, start, time.monotonic()


async def _run_step(
    client: Client, settings: RampSettings, rate: float, batch_ms: dict[int, list[float]]
) -> Step:
    tracker = _Tracker(batch_ms=batch_ms)
    tasks, start, end = await _offer(client, settings, tracker, rate)
    _done, late = await asyncio.wait(tasks, timeout=settings.settle_s) if tasks else (set(), set())
    for task in late:  # replies arriving after the settle time are not counted
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    window = [t for t in tracker.reply_times if start <= t <= end]
    lat = sorted(tracker.latency_ms)
    return Step(
        offered_rps=rate,
        throughput_rps=len(window) / max(end - start, 1e-9),
        sent=len(tasks),
        answered=len(lat),
        errors=(len(tasks) - len(lat)) + tracker.failed,
        p50_ms=float(np.percentile(lat, 50)) if lat else math.inf,
        p99_ms=float(np.percentile(lat, 99)) if lat else math.inf,
    )


async def recommend(settings: RampSettings) -> Recommendation:
    """Ramp until saturation and derive the per-instance target and the profile."""
    batch_ms: dict[int, list[float]] = {}
    steps: list[Step] = []
    reason = f"reached --max-rps {settings.max_rps:g}"
    async with _client(settings) as client:
        await _wait_for_worker(client, settings)
        rate = settings.start_rps
        for _ in range(settings.max_steps):
            if rate > settings.max_rps:
                break
            step = await _run_step(client, settings, rate, batch_ms)
            steps.append(step)
            log.info(
                "recommend.step",
                offered=round(step.offered_rps, 1),
                throughput=round(step.throughput_rps, 1),
                p99_ms=round(step.p99_ms, 1),
                errors=step.errors,
            )
            if step.error_share > settings.max_error_share:
                reason = f"errors {100 * step.error_share:.1f}% at {rate:.0f} req/s offered"
                break
            if step.p99_ms > settings.objective_ms:
                reason = f"p99 {step.p99_ms:.0f} ms over the objective at {rate:.0f} req/s offered"
                break
            if (
                len(steps) > 1
                and step.throughput_rps < settings.min_growth * steps[-2].throughput_rps
            ):
                reason = f"throughput stopped growing at {step.throughput_rps:.0f} req/s"
                break
            rate *= settings.growth
    good = [
        s
        for s in steps
        if s.p99_ms <= settings.objective_ms and s.error_share <= settings.max_error_share
    ]
    if good:
        sustainable = max(s.throughput_rps for s in good)
        knee = max(s.offered_rps for s in good)
    else:
        first = steps[0]
        sustainable = first.throughput_rps * min(1.0, settings.objective_ms / first.p99_ms)
        knee = first.offered_rps
        reason += "; no step was within the objective (the target is scaled down from the first)"
    return Recommendation(
        model=settings.model,
        objective_ms=settings.objective_ms,
        steps=tuple(steps),
        sustainable_rps=max(sustainable, 1e-3),
        knee_rps=knee,
        stopped_because=reason,
        profile=_profile(settings, batch_ms, max(sustainable, 1e-3)),
    )


def _profile(
    settings: RampSettings, measured: dict[int, list[float]], sustainable: float
) -> ServiceProfile:
    sizes = sorted(b for b, v in measured.items() if v)
    if not sizes:
        batch_ms: tuple[tuple[int, float], ...] = ((1, 1e3 / max(sustainable, 1e-3)),)
    else:
        batch_ms = tuple((b, max(statistics.median(measured[b]), 1e-3)) for b in sizes)
    return ServiceProfile(
        model=settings.model,
        max_batch=max(b for b, _ in batch_ms),
        batch_ms=batch_ms,
        sustainable_rps=sustainable,
        latency_objective_ms=settings.objective_ms,
        source=f"recommend {settings.model}",
    )


# --------------------------------------------------------------------------- outputs


def capacity_bounds(
    per_instance_rps: float, *, min_rps: float, peak_rps: float, growth_factor: float
) -> tuple[int, int]:
    """``min = ceil(min_rps / per_instance)``, ``max = ceil(peak_rps / per_instance * growth)``."""
    low = math.ceil(min_rps / per_instance_rps - 1e-9)
    high = max(1, low, math.ceil(peak_rps / per_instance_rps * growth_factor - 1e-9))
    return low, high


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def config_toml(
    rec: Recommendation,
    *,
    broker: str,
    min_rps: float,
    peak_rps: float,
    growth_factor: float,
) -> str:
    """A starting autoscaler configuration (``autoscaler.config`` schema). The
    broker URL is written without its password, which a file must not hold."""
    per = round(rec.sustainable_rps, 2)
    low, high = capacity_bounds(
        per, min_rps=min_rps, peak_rps=peak_rps, growth_factor=growth_factor
    )
    lines = [
        f"# Written by fleet recommend for model {rec.model!r}: {per:g} req/s per instance",
        f"# within p99 {rec.objective_ms:g} ms; min = ceil({min_rps:g} / {per:g}),",
        f"# max = ceil({peak_rps:g} / {per:g} x {growth_factor:g}).",
        *_password_note(broker),
        f"broker = {_toml_value(strip_password(broker))}",
        f"models = {_toml_value([rec.model])}",
        f"per_instance_rps = {_toml_value(per)}",
        "",
        "[policy]",
        'kind = "default"',
        f"min_capacity = {low}",
        f"max_capacity = {high}",
        f"per_instance_rps = {_toml_value(per)}",
        "",
        "[actuator]",
        'kind = "dry-run"',
        "",
    ]
    return "\n".join(lines)


def _password_note(broker: str) -> list[str]:
    if url_password(broker) is None:
        return []
    return [
        "# The broker's password is not written here: the autoscaler reads it from",
        "# FLEET_BROKER_PASSWORD, or from the file FLEET_BROKER_PASSWORD_FILE names.",
    ]


def plot_ramp(rec: Recommendation, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [s.offered_rps for s in rec.steps]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=100)
    ax.plot(
        offered, [s.throughput_rps for s in rec.steps], "o-", color="#1f77b4", label="throughput"
    )
    ax.plot(offered, offered, color="gray", lw=0.6, ls=":", label="offered")
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("throughput (req/s)")
    ax.axvline(rec.knee_rps, color="black", lw=0.6, ls="--", label="knee")
    ax2 = ax.twinx()
    ax2.plot(offered, [s.p99_ms for s in rec.steps], "s-", color="#d62728", label="p99")
    ax2.plot(offered, [s.p50_ms for s in rec.steps], ".-", color="#ff7f0e", label="p50")
    ax2.axhline(rec.objective_ms, color="#d62728", lw=0.6, ls="--")
    ax2.set_ylabel("latency (ms)")
    ax2.set_yscale("log")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(f"{rec.model}: {rec.sustainable_rps:.0f} req/s sustainable per instance")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_outputs(
    rec: Recommendation,
    out_dir: str | Path,
    *,
    broker: str | None = None,
    min_rps: float,
    peak_rps: float,
    growth_factor: float,
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile_path = out / "profile.json"
    rec.profile.save(profile_path)
    config_path = out / "autoscaler.toml"
    config_path.write_text(
        config_toml(
            rec,
            broker=broker or "amqp://guest:guest@127.0.0.1:5672/",
            min_rps=min_rps,
            peak_rps=peak_rps,
            growth_factor=growth_factor,
        ),
        encoding="utf-8",
    )
    return [profile_path, config_path, plot_ramp(rec, out / "recommend.png")]


__all__ = [
    "RampSettings",
    "Recommendation",
    "Step",
    "capacity_bounds",
    "config_toml",
    "plot_ramp",
    "recommend",
    "write_outputs",
]
