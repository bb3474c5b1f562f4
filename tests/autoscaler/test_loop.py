"""The control loop with the dry-run actuator and a stub policy: one log line
per decision, metrics on /metrics, failures that do not stop the loop."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from autoscaler.actuators.base import Actuator, Capacity
from autoscaler.actuators.dry_run import DryRunActuator
from autoscaler.config import parse_config
from autoscaler.loop import Autoscaler, from_config
from autoscaler.metrics import AutoscalerMetrics, CloudWatchPublisher, MetricsServer
from autoscaler.policy import DefaultPolicy, PolicyConfig
from autoscaler.signals import Signals
from autoscaler.state_store import StateStore
from autoscaler.types import Decision, Policy, Snapshot
from fleet.contract import Priority
from fleet.errors import Unavailable
from fleet.heartbeat import Heartbeat
from fleet.transport import Transport, connect
from fleet.transport.memory import MemoryBroker

pytestmark = pytest.mark.unit


@dataclass
class StubState:
    calls: int = 0


class BacklogPolicy(Policy[StubState]):
    """One instance per 10 waiting requests, at most 5."""

    name = "stub"

    def __init__(self) -> None:
        self.seen: list[Snapshot] = []

    def initial_state(self) -> StubState:
        return StubState()

    def decide(self, snapshot: Snapshot, state: StubState) -> tuple[Decision, StubState]:
        self.seen.append(snapshot)
        want = snapshot.desired if snapshot.backlog is None else min(5, -(-snapshot.backlog // 10))
        decision = Decision.to(snapshot.desired, want, f"backlog {snapshot.backlog}")
        return decision, StubState(state.calls + 1)


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    name = f"loop-{uuid.uuid4().hex[:8]}"
    t = connect(f"memory://{name}")
    await t.connect()
    yield t
    await t.close()
    MemoryBroker.reset(name)


async def _fill(t: Transport, model: str, n: int) -> None:
    for _ in range(n):
        await t.publish_request(model, Priority.ONLINE, b"x")


def _decision_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e.get("event") == "autoscaler.decision"]


async def test_one_log_line_per_decision(transport: Transport) -> None:
    policy = BacklogPolicy()
    act = DryRunActuator(initial_capacity=1, max_capacity=4)
    scaler = Autoscaler(
        policy=policy, actuator=act, signals=Signals(transport, ["m"]), poll_interval_s=0.05
    )
    with capture_logs() as logs:
        await scaler.start()
        await _fill(transport, "m", 25)
        scaler.signals.on_heartbeat(Heartbeat(worker_id="w", models=["m"], sent_at=100.0))
        d1 = await scaler.run_once()  # 25 waiting -> 3
        # a second heartbeat: the worker's answer rate (0) is known, so is the arrival rate
        scaler.signals.on_heartbeat(Heartbeat(worker_id="w", models=["m"], sent_at=101.0))
        d2 = await scaler.run_once()  # unchanged -> hold
        await _fill(transport, "m", 30)
        d3 = await scaler.run_once()  # 55 waiting -> 5 (the stub's cap), clamped to 4
        await scaler.close()
    assert (d1.desired, d1.direction) == (3, "out")
    assert (d2.desired, d2.direction) == (3, "hold")
    assert (d3.desired, d3.direction) == (4, "out")
    assert any("clamped from 5 to 4" in r for r in d3.reasons)
    lines = _decision_lines(logs)
    assert len(lines) == 3
    for line, d in zip(lines, (d1, d2, d3), strict=True):
        assert line["desired"] == d.desired and line["direction"] == d.direction
        assert line["reasons"] == list(d.reasons)
        for key in ("backlog", "arrival_rate", "in_service", "pending"):
            assert key in line
    assert lines[0]["backlog"] == 25 and lines[2]["backlog"] == 55
    assert lines[0]["arrival_rate"] is None  # no rate from a single reading
    assert lines[1]["arrival_rate"] is not None
    assert [c[:2] for c in act.calls] == [(3, 3), (5, 4)]
    assert policy.seen[1].desired == 3 and policy.seen[1].in_service == 3


async def test_metrics_are_exposed(transport: Transport) -> None:
    metrics = AutoscalerMetrics()
    server = MetricsServer(metrics, host="127.0.0.1", port=0)
    scaler = Autoscaler(
        policy=BacklogPolicy(),
        actuator=DryRunActuator(),
        signals=Signals(transport, ["m"]),
        poll_interval_s=0.05,
        metrics=metrics,
        server=server,
    )
    async with scaler:
        await _fill(transport, "m", 12)
        await scaler.run_once()
        await scaler.run_once()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{server.port}/healthz") as resp:
                assert resp.status == 200
    values = _parse(text)
    assert values["fleet_autoscaler_desired"] == 2.0
    assert values["fleet_autoscaler_in_service"] == 2.0
    assert values["fleet_autoscaler_backlog"] == 12.0
    # two in service and no worker heard from: what they answer is unknown
    assert math.isnan(values["fleet_autoscaler_arrival_rate"])
    assert math.isnan(values["fleet_autoscaler_per_instance_rps"])  # missing, not 0
    assert math.isnan(values["fleet_autoscaler_busy_fraction"])
    assert math.isnan(values["fleet_autoscaler_saturation"])
    assert values['fleet_autoscaler_decisions_total{direction="out"}'] == 1.0
    assert values['fleet_autoscaler_decisions_total{direction="hold"}'] == 1.0
    assert values['fleet_autoscaler_decisions_total{direction="in"}'] == 0.0


def _parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class FlakyActuator(Actuator):
    kind = "flaky"

    def __init__(self) -> None:
        self.capacity_fails = True
        self.set_fails = True
        self.cap = Capacity(0, 0, 0)

    async def capacity(self) -> Capacity:
        if self.capacity_fails:
            raise Unavailable("group unreadable")
        return self.cap

    async def set_desired(self, n: int, reasons: tuple[str, ...] = ()) -> int:
        if self.set_fails:
            raise Unavailable("throttled for good")
        self.cap = Capacity(n, 0, n)
        return n


async def test_failures_are_logged_and_the_loop_goes_on(transport: Transport) -> None:
    act = FlakyActuator()
    scaler = Autoscaler(
        policy=BacklogPolicy(),
        actuator=act,
        signals=Signals(transport, ["m"]),
        poll_interval_s=0.02,
    )
    await scaler.start()  # declares the model's queues
    await _fill(transport, "m", 5)
    with capture_logs() as logs:
        d = await scaler.run_once()
        assert d.direction == "hold" and "capacity unreadable" in d.reasons[0]
        act.capacity_fails = False
        d = await scaler.run_once()
        assert d.direction == "hold" and d.desired == 0
        assert any("not applied: Unavailable" in r for r in d.reasons)
        act.set_fails = False
        stop = asyncio.Event()
        task = asyncio.create_task(scaler.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 30)  # ends at once; the bound only catches a hang
        await scaler.close()
    lines = _decision_lines(logs)
    assert lines[0]["log_level"] == "error" and lines[1]["log_level"] == "error"
    assert len(lines) == scaler.decisions >= 4
    assert lines[-1]["desired"] == 1 and lines[-1]["log_level"] == "info"


class FakeCloudWatch:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    def put_metric_data(self, **kwargs: Any) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("endpoint down")
        self.calls.append(kwargs)
        return {}


async def test_cloudwatch_metrics_each_poll_and_failures_not_fatal(transport: Transport) -> None:
    cw = FakeCloudWatch()
    pub = CloudWatchPublisher("Fleet/Test", region="us-east-1", client=cw, dimensions={"G": "g"})  # type: ignore[arg-type]
    scaler = Autoscaler(
        policy=BacklogPolicy(),
        actuator=DryRunActuator(initial_capacity=2),
        signals=Signals(transport, ["m"]),
        poll_interval_s=0.05,
        cloudwatch=pub,
    )
    await scaler.start()
    await _fill(transport, "m", 30)
    await scaler.run_once()
    (call,) = cw.calls
    assert call["Namespace"] == "Fleet/Test"
    data = {d["MetricName"]: d for d in call["MetricData"]}
    assert data["BacklogPerInstance"]["Value"] == 30 / 2  # per instance in service
    assert data["DesiredCapacity"]["Value"] == 3.0
    assert data["ScalingDecision"]["Value"] == 1.0
    assert data["DesiredCapacity"]["Dimensions"] == [{"Name": "G", "Value": "g"}]
    cw.fail = True
    with capture_logs() as logs:
        await scaler.run_once()
    assert pub.failures == 1
    assert any(e["event"] == "CloudWatch PutMetricData failed" for e in logs)
    await scaler.close()


async def test_from_config_builds_the_configured_autoscaler() -> None:
    name = f"from-config-{uuid.uuid4().hex[:6]}"
    cfg = parse_config(
        {
            "broker": f"memory://{name}",
            "models": ["m"],
            "policy": {"kind": "default", "max_capacity": 3},
            "actuator": {"kind": "dry-run", "initial_capacity": 2},
            "metrics": {"enabled": False},
        }
    )
    scaler = await from_config(cfg)
    try:
        assert isinstance(scaler.policy, DefaultPolicy)
        assert scaler.policy.config.max_capacity == 3
        assert isinstance(scaler.actuator, DryRunActuator)
        assert scaler.server is None and scaler.cloudwatch is None
        with capture_logs() as logs:
            decision = await scaler.run_once()
        (line,) = _decision_lines(logs)
        assert line["policy"] == "default" and line["backlog"] == 0
        assert line["in_service"] == 2 and line["desired"] == decision.desired
    finally:
        await scaler.close()
        MemoryBroker.reset(name)


class ScriptedSignals:
    """Hands the loop the snapshots a test scripts: ``(now, arrival rate)``
    per poll, with the actuator's capacity filled in."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script = list(script)

    def add_listener(self, listener: Any) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def collect(self, capacity: Capacity) -> Snapshot:
        now, rate = self.script.pop(0)
        return Snapshot(
            now=now,
            backlog=0,
            arrival_rate=rate,
            per_instance_rps=50.0,
            busy_fraction=None,
            gpu_utilization=None,
            in_service=capacity.in_service,
            pending=capacity.pending,
            desired=capacity.desired,
        )


def _scaler(
    script: list[tuple[float, float]], actuator: Actuator, store: StateStore | None = None
) -> Autoscaler:
    policy = DefaultPolicy(
        PolicyConfig(scale_in_cooldown_s=600, scale_in_stabilization_s=0, max_step_down=2)
    )
    return Autoscaler(
        policy=policy,
        actuator=actuator,
        signals=ScriptedSignals(script),  # type: ignore[arg-type]
        poll_interval_s=5.0,
        state_store=store,
    )


async def test_policy_state_survives_a_restart(tmp_path: Path) -> None:
    """A scale-in starts its cooldown; an autoscaler restarted within it
    reads the state back and holds, as the first one would have."""
    low = 45.0 * 2  # carried by 2 instances
    store = StateStore(tmp_path / "state.json")
    first = _scaler([(1000.0, low)], DryRunActuator(initial_capacity=8), store)
    async with first:
        assert (await first.run_once()).desired == 6
    assert (tmp_path / "state.json").exists()
    second = _scaler([(1010.0, low)], DryRunActuator(initial_capacity=6), store)
    async with second:
        d = await second.run_once()
    assert (d.desired, d.direction) == (6, "hold")
    assert any("scale-in cooldown" in r for r in d.reasons)
    # without the saved state the same poll scales in again
    fresh = _scaler([(1010.0, low)], DryRunActuator(initial_capacity=6))
    async with fresh:
        assert (await fresh.run_once()).desired == 4


async def test_a_refused_change_starts_no_cooldown() -> None:
    act = FlakyActuator()
    act.capacity_fails = False
    scaler = _scaler([(1000.0, 90.0), (1005.0, 90.0)], act)
    act.cap = Capacity(in_service=8, pending=0, desired=8)
    async with scaler:
        d = await scaler.run_once()
        assert d.direction == "hold" and any("not applied" in r for r in d.reasons)
        act.set_fails = False
        d = await scaler.run_once()
    assert (d.desired, d.direction) == (6, "in")


async def test_a_change_clamped_to_nothing_is_not_resent_every_poll() -> None:
    """At the actuator's ceiling, asking for more again each poll changes
    nothing: the loop remembers the ceiling and asks again only after a while."""
    act = DryRunActuator(initial_capacity=4, max_capacity=4)
    high = 50.0 * 10  # ten instances' worth
    script = [(1000.0 + 5 * i, high) for i in range(4)]
    scaler = _scaler(script, act)
    now = {"t": 0.0}
    scaler.clock = lambda: now["t"]
    decisions = []
    async with scaler:
        for t in (0.0, 5.0, 10.0, 400.0):
            now["t"] = t
            decisions.append(await scaler.run_once())
    assert [d.desired for d in decisions] == [4, 4, 4, 4]
    assert [c[:2] for c in act.calls] == [(10, 4), (10, 4)]  # the first, then after a while
    assert any("ceiling" in r for r in decisions[1].reasons)
