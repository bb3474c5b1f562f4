"""Step response of the autoscaler: RabbitMQ, the ``local`` actuator, ``digits``.

Offered load runs open loop at ``--base-rps`` until the fleet is settled, then
steps to ``--step`` times that. Printed: the time from the step to the first
scale-out decision and to the backlog being drained (back to its pre-step
level), each also as a multiple of the poll interval, plus what the load saw.

    python benchmarks/autoscale_step.py --broker amqp://guest:guest@127.0.0.1:5672/

The planning figure ``--per-instance-rps`` is what the policy divides the
arrival rate by (the default policy, as ``fleet recommend`` would configure it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autoscaler.actuators.local import LocalActuator  # noqa: E402
from autoscaler.config import parse_config  # noqa: E402
from autoscaler.loop import from_config  # noqa: E402
from autoscaler.types import Decision, Snapshot  # noqa: E402
from fleet.logging import configure  # noqa: E402
from producer import Client  # noqa: E402
from producer.loadgen import drive, random_inputs  # noqa: E402
from worker.zoo import build_all  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--broker",
        default=os.environ.get("FLEET_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    p.add_argument("--poll", type=float, default=1.0, help="poll interval, s")
    p.add_argument("--base-rps", type=float, default=50.0)
    p.add_argument("--step", type=float, default=10.0, help="load multiplier at the step")
    p.add_argument("--per-instance-rps", type=float, default=100.0)
    p.add_argument("--max-workers", type=int, default=4)
    p.add_argument("--settle", type=float, default=8.0, help="seconds at the base load")
    p.add_argument("--after", type=float, default=20.0, help="seconds at the stepped load")
    p.add_argument(
        "--client-batch", type=int, default=8, help="requests per broker message (coalescing)"
    )
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    models = ROOT / ".cache" / "bench-models"
    build_all(models)
    work = Path(tempfile.mkdtemp(prefix="fleet-step-"))
    repo = work / "models"
    repo.mkdir()
    model = f"step{uuid.uuid4().hex[:8]}"
    (repo / model).symlink_to(models / "digits", target_is_directory=True)
    cfg = parse_config(
        {
            "broker": args.broker,
            "models": [model],
            "poll_interval_s": args.poll,
            "per_instance_rps": args.per_instance_rps,
            "min_busy_fraction": 1.0,  # plan with the configured figure
            "arrival_smoothing_s": args.poll,
            "policy": {
                "kind": "default",
                "min_capacity": 1,
                "max_capacity": args.max_workers,
                "drain_time_s": 5.0,
                "scale_out_cooldown_s": 2 * args.poll,
                "scale_in_cooldown_s": 60.0,
                "scale_in_stabilization_s": 60.0,
                "predict_surges": False,
            },
            "actuator": {
                "kind": "local",
                "models_dir": str(repo),
                "max_workers": args.max_workers,
                "extra_args": ["--heartbeat-interval", "0.5"],
                "log_dir": str(work / "logs"),
                "grace_period_s": 30.0,
            },
            "metrics": {"enabled": False},
        },
        source="benchmark",
    )
    polls: list[tuple[float, Snapshot, Decision]] = []
    outstanding: list[tuple[float, int]] = []  # requests sent and not yet answered
    clients: list[Client] = []

    def record(snapshot: Snapshot, decision: Decision) -> None:
        now = time.monotonic()
        polls.append((now, snapshot, decision))
        if clients:
            outstanding.append((now, clients[0].in_flight))

    scaler = await from_config(cfg)
    scaler.on_decision = record
    act = scaler.actuator
    assert isinstance(act, LocalActuator)
    stop = asyncio.Event()
    await scaler.start()
    task = asyncio.create_task(scaler.run(stop))
    try:
        deadline = time.monotonic() + 60
        while not (polls and polls[-1][1].in_service >= 1):
            if time.monotonic() > deadline:
                raise RuntimeError("the first worker never became ready")
            await asyncio.sleep(0.1)
        inputs = random_inputs(64)
        async with Client(args.broker, timeout=120.0, max_batch=args.client_batch) as client:
            clients.append(client)
            base = await drive(
                client,
                model,
                inputs,
                duration=args.settle,
                rate=args.base_rps,
                concurrency=1 << 20,
                timeout=120.0,
            )
            pre = [
                s.backlog or 0 for t, s, _ in polls[-max(2, int(args.settle / args.poll) // 2) :]
            ]
            step_at = time.monotonic()
            stepped = await drive(
                client,
                model,
                inputs,
                duration=args.after,
                rate=args.base_rps * args.step,
                concurrency=1 << 20,
                timeout=120.0,
            )
    finally:
        stop.set()
        await task
        workers = len(act.workers)
        await scaler.close()
    first_out = next((t for t, _, d in polls if t >= step_at and d.direction == "out"), None)
    level = max(pre) if pre else 0
    after = [(t, s.backlog or 0) for t, s, _ in polls if t >= step_at]
    peak_at, peak = max(after, key=lambda p: p[1]) if after else (step_at, 0)
    # drained: back to the pre-step level, or to a tenth of the peak when the
    # stepped load keeps a few requests in flight all the time
    floor = max(level, peak // 10)
    drained = None
    if peak > level:
        drained = next((t for t, b in after if t > peak_at and b <= floor), None)
    waiting = [(t, n) for t, n in outstanding if t >= step_at]
    w_peak_at, w_peak = max(waiting, key=lambda p: p[1]) if waiting else (step_at, 0)
    w_floor = max(int(args.base_rps * args.step * 0.05), w_peak // 10)
    w_drained = next((t for t, n in waiting if t > w_peak_at and n <= w_floor), None)
    return {
        "caller_peak": w_peak,
        "caller_floor": w_floor,
        "caller_drained_s": None if w_drained is None else w_drained - step_at,
        "poll_s": args.poll,
        "step": f"{args.base_rps:g} -> {args.base_rps * args.step:g} req/s",
        "to_first_scale_out_s": None if first_out is None else first_out - step_at,
        "to_drained_s": None if drained is None else drained - step_at,
        "backlog_before": level,
        "drained_level": floor,
        "backlog_peak": peak,
        "workers_at_end": workers,
        "base": base.line(),
        "stepped": stepped.line(),
        "lost": base.lost + stepped.lost,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(level=args.log_level, json=False)
    r = asyncio.run(run(args))
    poll = r["poll_s"]

    def fmt(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s ({v / poll:.2f} x poll interval)"

    print(f"step {r['step']}, poll interval {poll:g} s")
    print(f"  step -> first scale-out decision: {fmt(r['to_first_scale_out_s'])}")
    if r["backlog_peak"] <= r["backlog_before"]:
        print(f"  backlog never grew past its pre-step level ({r['backlog_before']})")
    else:
        print(f"  step -> backlog drained:          {fmt(r['to_drained_s'])}")
    print(
        f"  backlog (broker messages) before {r['backlog_before']}, peak {r['backlog_peak']},"
        f" drained = back to {r['drained_level']}"
    )
    print(
        f"  requests awaiting replies (caller side): peak {r['caller_peak']},"
        f" drained (<= {r['caller_floor']}) after {fmt(r['caller_drained_s'])}"
    )
    print(f"  workers at the end: {r['workers_at_end']}")
    print(f"  base load:    {r['base']}")
    print(f"  stepped load: {r['stepped']}")
    print(f"  requests lost: {r['lost']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
