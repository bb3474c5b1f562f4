"""The capacity signal for batching GPU workers: busy time and NVML's GPU
utilization sit near 1.0 for a worker that batches continuously, at any load;
the default policy scales on the fill of the batches instead (saturation),
and takes a batching worker's throughput as its capacity only when its
batches are full."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from autoscaler.actuators.base import Capacity
from autoscaler.policy import DefaultPolicy, PolicyConfig, PolicyState
from autoscaler.signals import FULL_BATCH, batches, saturation
from autoscaler.simulator.engine import SimConfig, simulate
from autoscaler.simulator.patterns import Pattern
from autoscaler.types import Decision, Policy, Snapshot
from fleet.heartbeat import Heartbeat
from fleet.transport.base import Depth
from tests.autoscaler.test_signals import beat, make

pytestmark = pytest.mark.unit

WORKERS = 8
MAX_BATCH = 32
CONFIGURED_RPS = 100.0  # what `fleet recommend` measured one instance to sustain


def batching_beat(wid: str, sent_at: float, answered: int, **kw: Any) -> bytes:
    """A GPU worker that batches continuously: busy and NVML near 1.0."""
    kw.setdefault("busy_fraction", 0.97)
    kw.setdefault("gpu_utilization", 0.9)
    fill = kw.setdefault("batch_fill", 0.2)
    kw.setdefault("mean_batch_size", fill * MAX_BATCH)
    return beat(wid, sent_at, answered_total=answered, **kw)


async def _fleet_decisions(
    *, rps: float, backlog_growth: float, polls: int, wait_growth_ms: float = 0.0, **kw: Any
) -> list[Decision]:
    """``WORKERS`` batching workers each answering ``rps``, heartbeats every
    second, their queue wait growing by ``wait_growth_ms`` a second and the
    broker's backlog by ``backlog_growth``; the default policy decides every
    5 s and the actuator applies what it asks."""
    s, t, clock = await make(per_instance_rps=CONFIGURED_RPS)
    policy = DefaultPolicy(PolicyConfig(max_capacity=64, target_load=0.9))
    state: PolicyState = policy.initial_state()
    desired, backlog, decisions = WORKERS, 40.0, []
    assert t.on_beat is not None
    for second in range(1, 5 * polls + 1):
        clock.t += 1.0
        backlog += backlog_growth
        answered = round(rps * second)
        wait = 3.0 + wait_growth_ms * second
        for w in range(WORKERS):
            t.on_beat(
                batching_beat(
                    f"w{w}",
                    1000.0 + second,
                    answered,
                    throughput_rps=rps,
                    queue_wait_ms_p50=wait,
                    **kw,
                )
            )
        if second % 5 == 0:
            t.depths["a"] = Depth(model="a", ready=round(backlog), in_flight=0)
            snap = await s.collect(Capacity(in_service=WORKERS, pending=0, desired=desired))
            decision, state = policy.decide(snap, state)
            decisions.append(decision)
            desired = decision.desired
    return decisions


async def test_busy_batching_fleet_carrying_its_load_is_not_scaled_out() -> None:
    """8 workers at 90% NVML busy (97% busy time) carrying 85 req/s each, a
    load that needs 8 at the configured 100 req/s planned at 90% (headroom a
    deployment may keep): their batches are a fifth full, so the fleet holds
    at 8 (busy time as the signal asked for 10)."""
    decisions = await _fleet_decisions(rps=85.0, backlog_growth=0.0, polls=8)
    assert [d.desired for d in decisions] == [WORKERS] * 8
    # planned by throughput: 680 req/s at 90 per instance
    assert decisions[-1].reasons[0].startswith("need 7.57: 680.0 req/s at 90.0/instance")


async def test_overloaded_batching_fleet_is_scaled_out() -> None:
    """Batches full, the workers' queue wait growing and the broker's backlog
    with it: the fleet is beyond what it can answer and is scaled out at the
    first poll that has an arrival rate."""
    decisions = await _fleet_decisions(
        rps=110.0,
        backlog_growth=300.0,
        polls=2,
        wait_growth_ms=20.0,
        batch_fill=1.0,
        busy_fraction=0.99,
        gpu_utilization=0.99,
    )
    assert decisions[0].direction == "hold"  # the first poll: no arrival rate yet
    assert decisions[1].direction == "out" and decisions[1].desired >= 12, decisions[1]


async def test_a_batching_workers_throughput_is_its_capacity_only_at_full_batches() -> None:
    s, t, _ = await make(per_instance_rps=CONFIGURED_RPS)
    assert t.on_beat is not None
    cap = Capacity(in_service=1, pending=0, desired=1)
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    t.on_beat(batching_beat("w1", 1001.0, 85, throughput_rps=85.0))
    snap = await s.collect(cap)
    assert snap.per_instance_rps == CONFIGURED_RPS  # room in its batches: not a measurement
    assert snap.saturation == pytest.approx(0.97 * 0.2)
    assert snap.gpu_utilization == pytest.approx(0.9) and snap.busy_fraction == pytest.approx(0.97)
    t.on_beat(batching_beat("w1", 1002.0, 205, throughput_rps=120.0, batch_fill=1.0))
    snap = await s.collect(cap)
    assert snap.per_instance_rps == pytest.approx(120.0 / 0.97)  # full batches: its capacity
    assert snap.saturation == pytest.approx(0.97)


def test_saturation_of_one_heartbeat() -> None:
    def hb(**kw: Any) -> Heartbeat:
        return Heartbeat(worker_id="w", sent_at=1.0, **kw)

    single = hb(busy_fraction=0.5, mean_batch_size=1.0, batch_fill=1 / 32)
    assert not batches(single) and saturation(single) == 0.5 / 32  # it could batch 32
    unbatched = hb(busy_fraction=0.6, mean_batch_size=1.0, batch_fill=1.0)  # max batch 1
    assert not batches(unbatched) and saturation(unbatched) == 0.6
    batching = hb(busy_fraction=1.0, mean_batch_size=8.0, batch_fill=0.25)
    assert batches(batching) and saturation(batching) == 0.25
    idle = hb(busy_fraction=0.0)  # no batches in the interval
    assert not batches(idle) and saturation(idle) == 0.0
    assert 0.5 < FULL_BATCH <= 1.0


class Recording(Policy[PolicyState]):
    """The default policy, keeping every snapshot it was handed."""

    name = "recording"

    def __init__(self) -> None:
        self.inner = DefaultPolicy()
        self.snaps: list[Snapshot] = []

    def initial_state(self) -> PolicyState:
        return self.inner.initial_state()

    def decide(self, snapshot: Snapshot, state: PolicyState) -> tuple[Decision, PolicyState]:
        self.snaps.append(snapshot)
        return self.inner.decide(snapshot, state)


def test_simulated_workers_report_busy_time_as_batching_workers_do() -> None:
    """Three instances at 100 req/s batch (about 1.25 requests a run, of 16):
    busy time and GPU utilization read near 1.0 as NVML's would, saturation
    busy time times batch fill; the default policy plans by throughput and
    does not over-provision."""
    flat = Pattern(
        name="flat", horizon_s=900.0, rate=lambda t: np.full_like(t, 100.0), description=""
    )
    policy = Recording()
    r = simulate(policy, flat, config=SimConfig(initial_capacity=3))
    late = [s for s in policy.snaps if s.now > 300]
    assert all(s.gpu_utilization is not None and s.gpu_utilization > 0.85 for s in late)
    assert all(s.busy_fraction == s.gpu_utilization for s in late)
    assert all(s.saturation is not None and 0.03 < s.saturation < 0.1 for s in late)
    # 100 req/s at 45 planned per instance: 3 (busy time as the signal: 3/0.75 = 4, then 6, ...)
    assert set(r.timeline.desired[r.timeline.t_s > 300]) == {3.0}
