"""End to end on this machine, RabbitMQ and Kafka each: a burst of requests
makes a backlog → once demand is past one instance the ``local`` actuator
starts workers within two poll intervals → the backlog drains → after the
scale-in cooldown the extra workers stop by SIGTERM (exit 0) → every request
was answered exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler.actuators.local import LocalActuator
from autoscaler.config import parse_config
from autoscaler.loop import Autoscaler, from_config
from autoscaler.types import Decision, Snapshot
from producer import Client

POLL_S = 0.5
BURST = 3000
PER_INSTANCE_RPS = 100.0
DRAIN_TIME_S = 2.0
# demand this far past one instance's full capacity must scale out: beyond the
# policy's 10% tolerance band even with no utilisation headroom at all
OVER_ONE = 1.1


def _demand_in_instances(s: Snapshot) -> float:
    """Instances needed at 100% utilisation for the arrival rate plus draining
    the backlog within the drain time: a lower bound on what any policy asks."""
    rate = s.arrival_rate or 0.0
    backlog = s.backlog or 0
    return (rate + backlog / DRAIN_TIME_S) / PER_INSTANCE_RPS


def e2e_config(broker: str, model: str, models_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Short intervals so the whole cycle fits in well under a minute."""
    return {
        "broker": broker,
        "models": [model],
        "poll_interval_s": POLL_S,
        # plan with a fixed per-instance figure (heartbeats would measure the
        # tiny test model at thousands of requests/s and never ask for more)
        "per_instance_rps": PER_INSTANCE_RPS,
        "min_busy_fraction": 1.0,
        "arrival_smoothing_s": 1.0,
        "policy": {
            "kind": "default",
            "min_capacity": 1,
            "max_capacity": 3,
            "drain_time_s": DRAIN_TIME_S,
            "scale_out_cooldown_s": 1.0,
            "scale_in_cooldown_s": 2.0,
            "scale_in_stabilization_s": 3.0,
            "predict_surges": False,
        },
        "actuator": {
            "kind": "local",
            "models_dir": str(models_dir),
            "max_workers": 3,
            "grace_period_s": 20.0,
            "extra_args": ["--heartbeat-interval", "0.5"],
            "log_dir": str(log_dir),
        },
        "metrics": {"port": 0},
    }


@dataclass
class Recorder:
    began: float = field(default_factory=time.monotonic)
    polls: list[tuple[float, Snapshot, Decision]] = field(default_factory=list)

    def __call__(self, snapshot: Snapshot, decision: Decision) -> None:
        self.polls.append((time.monotonic(), snapshot, decision))

    def first(self, pred: Any, after: float = 0.0) -> tuple[float, Snapshot, Decision] | None:
        return next((p for p in self.polls if p[0] >= after and pred(p[1], p[2])), None)


async def _until(pred: Any, timeout: float, what: str, rec: Recorder) -> float:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            tail = [
                (round(t - rec.began, 2), s.backlog, d.desired, d.direction)
                for t, s, d in rec.polls[-8:]
            ]
            raise AssertionError(f"timed out waiting for {what}; last polls: {tail}")
        await asyncio.sleep(0.05)
    return time.monotonic()


# alone under xdist: it starts and stops worker processes against the shared
# servers and measures its cycle in polls
@pytest.mark.exclusive
@pytest.mark.timeout(90)
async def test_backlog_scales_out_drains_and_scales_in(
    real_broker: str, model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    model = f"{unique_model}-digits"
    cfg = parse_config(e2e_config(real_broker, model, model_repo, tmp_path / "workers"))
    rec = Recorder()
    scaler: Autoscaler = await from_config(cfg)
    # the one worker is stopped below for longer than its heartbeats stay
    # fresh: it falls silent, and the answer rate then counts as unknown (no
    # scale-in) for a while; as short here as the test's other intervals
    scaler.signals.silence_hold_s = 1.0
    scaler.on_decision = rec
    act = scaler.actuator
    assert isinstance(act, LocalActuator)
    stop = asyncio.Event()
    await scaler.start()  # declares the model's queues/topics
    loop_task = asyncio.create_task(scaler.run(stop))
    try:
        # the floor: one worker in service before any traffic
        await _until(
            lambda: rec.polls and rec.polls[-1][1].in_service == 1, 40, "one ready worker", rec
        )
        first_worker = act.workers[0].worker_id

        async with Client(real_broker, timeout=60.0, max_batch=1) as client:
            x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
            burst_at = time.monotonic()
            # the one worker holds still while the burst arrives, so that it
            # queues up whatever the speed of the client and of the machine
            held = act.workers[0]
            os.kill(held.pid, signal.SIGSTOP)
            try:
                calls = [
                    asyncio.ensure_future(client.infer(model, {"input": x}, timeout=60.0))
                    for _ in range(BURST)
                ]
                # ... until a poll sees demand clearly beyond one instance (a
                # client slowed down by a loaded machine, its requests taken
                # as they come, would otherwise never make one) ...
                await _until(
                    lambda: (
                        rec.first(lambda s, d: _demand_in_instances(s) > OVER_ONE, burst_at)
                        is not None
                    ),
                    20,
                    "a backlog beyond one instance",
                    rec,
                )
            finally:
                os.kill(held.pid, signal.SIGCONT)
            # ... and workers are started within two polls of that poll (a
            # small backlog at a modest rate is rightly held; counted in polls:
            # a loaded machine stretches seconds)
            # (the decision is recorded once the actuator has started its workers)
            await _until(
                lambda: rec.first(lambda s, d: d.direction == "out", burst_at) is not None,
                10,
                "a scale-out",
                rec,
            )
            assert len(act.workers) > 1
            started = time.monotonic()
            out = rec.first(lambda s, d: d.direction == "out", burst_at)
            assert out is not None
            beyond = rec.first(lambda s, d: _demand_in_instances(s) > OVER_ONE, burst_at)
            assert beyond is not None  # waited for above
            if beyond[0] < out[0]:  # else: out no later than that
                polls_between = sum(1 for p in rec.polls if beyond[0] < p[0] <= out[0])
                assert polls_between <= 2, (polls_between, out[2].reasons)

            results = await asyncio.wait_for(asyncio.gather(*calls), 60)
            assert len(results) == BURST
            assert all(r and all(a.shape[0] == 1 for a in r.values()) for r in results)
            assert client.stats.answered == BURST and client.stats.failed == 0

        # the backlog drains, and after the stabilization window and the
        # scale-in cooldown the fleet is back at the floor (in either order:
        # the floor may come while one instance's share is still queued): the
        # extra workers get SIGTERM and exit 0
        drained = await _until(
            lambda: rec.polls[-1][1].backlog == 0 and rec.polls[-1][0] > started, 30, "drained", rec
        )
        await _until(lambda: act.status()["desired"] == 1, 25, "scale-in", rec)
        await asyncio.wait_for(act.wait_stopped(), 25)
        assert drained > started
        # the step back to the floor comes only once the floor is enough: the
        # arrival rate plus the backlog cleared within the drain time fit in one
        # instance (a backlog left then is one instance's to clear, e.g. up to
        # 200 requests at no arrivals; how much is left depends on how fast
        # this machine drained, so only the bound is asserted)
        to_floor = [p for p in rec.polls if p[2].direction == "in" and p[2].desired == 1]
        assert to_floor, "never scaled back in"
        at_floor = to_floor[-1][1]
        assert at_floor.backlog is not None and at_floor.arrival_rate is not None
        assert _demand_in_instances(at_floor) <= 1.0, (at_floor, to_floor[-1][2].reasons)
        extra = len(act.stopped_by_sigterm)
        assert extra >= 1
        assert all(rc == 0 for _, rc in act.stopped_by_sigterm), act.stopped_by_sigterm
        assert act.killed == 0 and act.unexpected_exits == 0
        assert [w.worker_id for w in act.workers] == [first_worker]  # the oldest stays
    finally:
        stop.set()
        await asyncio.wait_for(loop_task, 10)
        await scaler.close()
    # closing stops the last worker the same way
    assert all(rc == 0 for _, rc in act.stopped_by_sigterm)
