"""``fleet recommend``: ramp offered load against one worker until saturation.

Steps of open-loop load (each ``growth`` times the last), one request per
broker message, each request timed from publish to reply by its id. The ramp
stops at saturation: throughput stops growing (less than 5% more than the
step before), p99 latency passes the objective, or more than 1% of requests
fail or go unanswered. The worker's own reply timings (batch size and model
run time) give the service-time profile.

Outputs: ``profile.json`` (for ``fleet simulate``), ``autoscaler.toml`` (a
starting configuration the autoscaler loads: the per-instance target,
``min = ceil(min_rps / per_instance)``,
``max = ceil(peak_rps / per_instance * growth_factor)``) and ``recommend.png``
(throughput and latency against offered load).

Only :mod:`fleet` is used to talk to the worker: request frames go out with
:func:`fleet.transport.connect` and :func:`fleet.wire.encode_requests`, replies
come back to an inbox.
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
from fleet import wire
from fleet.contract import Priority, Reply, Request, new_request_id
from fleet.errors import ModelNotFound
from fleet.logging import get_logger
from fleet.tensor import Tensor
from fleet.transport import Transport, connect

log = get_logger("autoscaler.recommend")


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
    sent_at: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    reply_times: list[float] = field(default_factory=list)
    batch_ms: dict[int, list[float]] = field(default_factory=dict)

    def on_reply(self, body: bytes) -> None:
        now = time.monotonic()
        try:
            frame = wire.decode_replies(body)
        except Exception:
            log.warning("undecodable reply frame")
            return
        for item in frame.items:
            if not isinstance(item, Reply):
                continue
            sent = self.sent_at.get(item.id)
            if sent is None or item.id in self.latency_ms:
                continue  # not ours, or a duplicate
            self.latency_ms[item.id] = (now - sent) * 1e3
            self.reply_times.append(now)
            if item.error is not None:
                self.failed.add(item.id)
            elif item.timings.batch_size > 0:
                self.batch_ms.setdefault(item.timings.batch_size, []).append(
                    item.timings.inference_ms
                )


def _request(settings: RampSettings, payload: np.ndarray, deadline_s: float) -> Request:
    now = time.time()
    return Request(
        id=new_request_id(),
        model=settings.model,
        inputs=(Tensor.from_numpy(settings.input_name, payload),),
        deadline=now + deadline_s,
        priority=Priority.ONLINE,
        sent_at=now,
    )


async def _wait_for_worker(transport: Transport, settings: RampSettings, inbox: str) -> None:
    """Publish one request until a worker has declared the model's queues."""
    payload = np.zeros((1, settings.features), dtype=np.float32)
    end = time.monotonic() + settings.ready_timeout_s
    while True:
        req = _request(settings, payload, 30.0)
        try:
            await transport.publish_request(
                settings.model, Priority.ONLINE, wire.encode_requests([req], reply_to=inbox)
            )
            return
        except ModelNotFound:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


async def _run_step(
    transport: Transport, settings: RampSettings, tracker: _Tracker, inbox: str, rate: float
) -> Step:
    rng = np.random.default_rng(int(rate * 1000) % (2**32))
    ids: list[str] = []
    start = time.monotonic()
    tick = 0.005
    deadline_s = max(30.0, settings.step_s + settings.settle_s)
    publishes: set[asyncio.Task[None]] = set()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= settings.step_s:
            break
        due = int(rate * elapsed) - len(ids)
        for _ in range(max(0, due)):
            payload = rng.standard_normal((1, settings.features)).astype(np.float32)
            req = _request(settings, payload, deadline_s)
            tracker.sent_at[req.id] = time.monotonic()
            ids.append(req.id)
            body = wire.encode_requests([req], reply_to=inbox)
            task = asyncio.create_task(
                transport.publish_request(settings.model, Priority.ONLINE, body)
            )
            publishes.add(task)
            task.add_done_callback(publishes.discard)
        await asyncio.sleep(tick)
    end = time.monotonic()
    if publishes:
        results = await asyncio.gather(*publishes, return_exceptions=True)
        refused = sum(1 for r in results if isinstance(r, BaseException))
        if refused:
            log.warning("publishes refused", count=refused)
    settle_end = time.monotonic() + settings.settle_s
    while time.monotonic() < settle_end and any(i not in tracker.latency_ms for i in ids):
        await asyncio.sleep(0.02)
    window = [t for t in tracker.reply_times if start <= t <= end]
    lat = sorted(tracker.latency_ms[i] for i in ids if i in tracker.latency_ms)
    answered = len(lat)
    errors = (len(ids) - answered) + sum(1 for i in ids if i in tracker.failed)
    for i in ids:  # forget this step's ids: replies arriving later are ignored
        tracker.sent_at.pop(i, None)
    return Step(
        offered_rps=rate,
        throughput_rps=len(window) / max(end - start, 1e-9),
        sent=len(ids),
        answered=answered,
        errors=errors,
        p50_ms=float(np.percentile(lat, 50)) if lat else math.inf,
        p99_ms=float(np.percentile(lat, 99)) if lat else math.inf,
    )


async def recommend(settings: RampSettings) -> Recommendation:
    """Ramp until saturation and derive the per-instance target and the profile."""
    tracker = _Tracker()
    steps: list[Step] = []
    reason = f"reached --max-rps {settings.max_rps:g}"
    async with connect(settings.broker) as transport:
        inbox = await transport.open_inbox(tracker.on_reply)
        await _wait_for_worker(transport, settings, inbox)
        rate = settings.start_rps
        for _ in range(settings.max_steps):
            if rate > settings.max_rps:
                break
            step = await _run_step(transport, settings, tracker, inbox, rate)
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
        profile=_profile(settings, tracker, max(sustainable, 1e-3)),
    )


def _profile(settings: RampSettings, tracker: _Tracker, sustainable: float) -> ServiceProfile:
    sizes = sorted(b for b, v in tracker.batch_ms.items() if v)
    if not sizes:
        batch_ms: tuple[tuple[int, float], ...] = ((1, 1e3 / max(sustainable, 1e-3)),)
    else:
        batch_ms = tuple((b, max(statistics.median(tracker.batch_ms[b]), 1e-3)) for b in sizes)
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
    """A starting autoscaler configuration (``autoscaler.config`` schema)."""
    per = round(rec.sustainable_rps, 2)
    low, high = capacity_bounds(
        per, min_rps=min_rps, peak_rps=peak_rps, growth_factor=growth_factor
    )
    lines = [
        f"# Written by fleet recommend for model {rec.model!r}: {per:g} req/s per instance",
        f"# within p99 {rec.objective_ms:g} ms; min = ceil({min_rps:g} / {per:g}),",
        f"# max = ceil({peak_rps:g} / {per:g} x {growth_factor:g}).",
        f"broker = {_toml_value(broker)}",
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
