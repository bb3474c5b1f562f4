"""Signals from a fake transport: missing is None, the EWMA, stale heartbeats."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest

from autoscaler.actuators.base import Capacity
from autoscaler.ewma import Ewma
from autoscaler.signals import Signals
from fleet.errors import ModelNotFound, Unavailable
from fleet.heartbeat import Heartbeat
from fleet.transport.base import Capability, Depth, OnBytes, ProduceRateReader

pytestmark = pytest.mark.unit

CAP = Capacity(in_service=2, pending=1, desired=3)
CAP0 = Capacity(in_service=0, pending=1, desired=1)  # nothing in service: nothing answers


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Sub:
    async def cancel(self) -> None:
        return None


class FakeTransport:
    """Only what signals use: depth, declare_model, subscribe_heartbeats and
    the capabilities it declares (none)."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset()

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def __init__(self) -> None:
        self.depths: dict[str, Depth | Exception] = {}
        self.declared: list[str] = []
        self.on_beat: OnBytes | None = None

    async def declare_model(self, model: str) -> None:
        self.declared.append(model)

    async def subscribe_heartbeats(self, on_beat: OnBytes) -> _Sub:
        self.on_beat = on_beat
        return _Sub()

    async def depth(self, model: str) -> Depth:
        d = self.depths[model]
        if isinstance(d, Exception):
            raise d
        return d


class KafkaLike(FakeTransport, ProduceRateReader):
    """Reads the produce rate from the broker; its lag counts what consumers hold."""

    capabilities = frozenset({Capability.PRODUCE_RATE, Capability.LAG_COUNTS_IN_FLIGHT})

    def __init__(self) -> None:
        super().__init__()
        self.rates: dict[str, float | None] = {}

    async def produce_rate(self, model: str) -> float | None:
        return self.rates[model]


class RateButNoCapability(KafkaLike):
    """Has the method but does not declare the capability: not asked."""

    capabilities = frozenset()


class LagCountsInFlight(FakeTransport):
    capabilities = frozenset({Capability.LAG_COUNTS_IN_FLIGHT})


def beat(wid: str, sent_at: float, **kw: Any) -> bytes:
    kw.setdefault("models", ["a"])
    kw.setdefault("interval_s", 1.0)
    return Heartbeat(worker_id=wid, sent_at=sent_at, **kw).encode()


async def make(
    transport: FakeTransport | None = None, models: tuple[str, ...] = ("a",), **kw: Any
) -> tuple[Signals, FakeTransport, Clock]:
    t = transport or FakeTransport()
    clock = Clock()
    kw.setdefault("arrival_smoothing_s", 0.0)
    s = Signals(t, list(models), clock=clock, **kw)  # type: ignore[arg-type]
    await s.start()
    return s, t, clock


async def test_declares_models_and_subscribes() -> None:
    _, t, _ = await make(models=("a", "b"))
    assert t.declared == ["a", "b"]
    assert t.on_beat is not None


async def test_missing_signals_are_none_never_zero() -> None:
    s, t, _ = await make()
    t.depths["a"] = Unavailable("broker down")
    snap = await s.collect(CAP)
    assert snap.backlog is None
    assert snap.arrival_rate is None
    assert snap.per_instance_rps is None
    assert snap.busy_fraction is None
    assert snap.gpu_utilization is None
    assert (snap.in_service, snap.pending, snap.desired) == (2, 1, 3)


async def test_one_unreadable_model_makes_the_sum_missing() -> None:
    s, t, _ = await make(models=("a", "b"))
    t.depths["a"] = Depth(model="a", ready=5, in_flight=1)
    t.depths["b"] = ModelNotFound("no queues")
    assert (await s.collect(CAP)).backlog is None


async def test_backlog_sums_ready_and_in_flight_over_models() -> None:
    s, t, _ = await make(models=("a", "b"))
    t.depths["a"] = Depth(model="a", ready=5, in_flight=2)
    t.depths["b"] = Depth(model="b", ready=7, in_flight=0)
    assert (await s.collect(CAP)).backlog == 14


async def test_message_counts_are_scaled_to_requests_by_coalescing() -> None:
    s, t, _ = await make()
    t.depths["a"] = Depth(model="a", ready=10, in_flight=2)
    assert t.on_beat is not None
    t.on_beat(beat("w1", 1.0, requests_per_message=8.0))
    t.on_beat(beat("w2", 1.0, requests_per_message=4.0))
    assert (await s.collect(CAP)).backlog == 12 * 6


async def test_kafka_produce_rate_is_scaled_to_requests() -> None:
    s, t, _ = await make(KafkaLike())
    assert isinstance(t, KafkaLike) and t.on_beat is not None
    t.rates["a"] = 100.0
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    t.on_beat(beat("w1", 1.0, requests_per_message=3.0))
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(300.0)


async def test_unknown_in_flight_comes_from_heartbeats() -> None:
    s, t, _ = await make(models=("a", "b"))
    t.depths["a"] = Depth(model="a", ready=5, in_flight=None)
    t.depths["b"] = Depth(model="b", ready=1, in_flight=3)
    assert t.on_beat is not None
    t.on_beat(beat("w1", 1.0, in_flight=4, models=["a"]))
    t.on_beat(beat("w2", 1.0, in_flight=6, models=["b"]))  # b's broker count already has it
    t.on_beat(beat("w3", 1.0, in_flight=9, models=["other"]))  # not watched
    assert (await s.collect(CAP)).backlog == 5 + 4 + 1 + 3


async def test_kafka_lag_already_holds_in_flight() -> None:
    t = LagCountsInFlight()
    s, _, _ = await make(t)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=12, in_flight=None)
    t.on_beat(beat("w1", 1.0, in_flight=4))
    assert (await s.collect(CAP)).backlog == 12


async def test_first_poll_has_no_rate_then_backlog_growth_is_arrival() -> None:
    s, t, clock = await make()
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    assert (await s.collect(CAP0)).arrival_rate is None
    clock.t += 2.0
    t.depths["a"] = Depth(model="a", ready=100, in_flight=0)
    assert (await s.collect(CAP0)).arrival_rate == pytest.approx(50.0)
    clock.t += 2.0  # drained faster than it arrives: never negative
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    assert (await s.collect(CAP0)).arrival_rate == 0.0


async def test_answered_counters_add_to_arrival() -> None:
    s, t, clock = await make()
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=10, in_flight=0)
    t.on_beat(beat("w1", 100.0, answered_total=1000))
    await s.collect(CAP)
    clock.t += 1.0
    t.on_beat(beat("w1", 101.0, answered_total=1030))  # 30/s answered
    t.depths["a"] = Depth(model="a", ready=20, in_flight=0)  # and 10/s more waiting
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(40.0)


async def test_counter_reset_is_not_negative() -> None:
    s, t, clock = await make()
    assert t.on_beat is not None
    t.on_beat(beat("w1", 100.0, answered_total=1000))
    t.on_beat(beat("w1", 101.0, answered_total=20))  # restarted under the same id
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    await s.collect(CAP)
    clock.t += 1.0
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(20.0)


async def test_arrival_is_smoothed() -> None:
    s, t, clock = await make(arrival_smoothing_s=10.0)
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    await s.collect(CAP0)
    clock.t += 1.0
    t.depths["a"] = Depth(model="a", ready=100, in_flight=0)
    first = (await s.collect(CAP0)).arrival_rate
    assert first == pytest.approx(100.0)  # the first sample sets the average
    clock.t += 1.0
    t.depths["a"] = Depth(model="a", ready=100, in_flight=0)  # nothing new arrived
    second = (await s.collect(CAP0)).arrival_rate
    alpha = 1 - math.exp(-1.0 / 10.0)
    assert second == pytest.approx(100.0 + alpha * (0.0 - 100.0))


def test_ewma_time_constant() -> None:
    e = Ewma(5.0)
    assert e.update(10.0, 1.0) == 10.0
    e.update(0.0, 5.0)
    assert e.value == pytest.approx(10.0 * math.exp(-1.0))
    assert Ewma(0.0).update(3.0, 1.0) == 3.0


async def test_produce_rate_is_used_where_the_transport_has_it() -> None:
    t = KafkaLike()
    t.rates = {"a": 30.0, "b": 12.0}
    s, _, clock = await make(t, models=("a", "b"))
    t.depths["a"] = Depth(model="a", ready=0, in_flight=None)
    t.depths["b"] = Depth(model="b", ready=0, in_flight=None)
    assert (await s.collect(CAP0)).arrival_rate == pytest.approx(42.0)
    t.rates["b"] = None  # unknown for one model: from the backlog instead
    clock.t += 1
    t.depths["a"] = Depth(model="a", ready=25, in_flight=None)
    assert (await s.collect(CAP0)).arrival_rate == pytest.approx(25.0)


async def test_produce_rate_only_where_the_capability_is_declared() -> None:
    t = RateButNoCapability()
    t.rates = {"a": 30.0}
    s, _, clock = await make(t)
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    assert (await s.collect(CAP0)).arrival_rate is None  # first poll, no rate read
    clock.t += 1
    t.depths["a"] = Depth(model="a", ready=7, in_flight=0)
    assert (await s.collect(CAP0)).arrival_rate == pytest.approx(7.0)


async def test_heartbeat_figures_and_stale_ones_dropped() -> None:
    s, t, clock = await make(per_instance_rps=77.0)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    t.on_beat(beat("w1", 1.0, throughput_rps=100.0, busy_fraction=0.5, gpu_utilization=0.6))
    t.on_beat(beat("w2", 1.0, throughput_rps=300.0, busy_fraction=0.75, gpu_utilization=None))
    t.on_beat(beat("w3", 1.0, state="starting", busy_fraction=0.0))
    snap = await s.collect(CAP)
    assert snap.per_instance_rps == pytest.approx((200.0 + 400.0) / 2)
    assert snap.busy_fraction == pytest.approx(0.625)
    assert snap.gpu_utilization == pytest.approx(0.6)
    assert len(s.live_workers()) == 3

    clock.t += 2.5  # w1 beats again; the others are 2.5 intervals old: still live
    t.on_beat(beat("w1", 3.5, throughput_rps=100.0, busy_fraction=0.5, gpu_utilization=0.6))
    assert len(s.live_workers()) == 3
    clock.t += 1.0  # w2 and w3 are now 3.5 intervals old: dropped
    assert [b.worker_id for b in s.live_workers()] == ["w1"]
    snap = await s.collect(CAP)
    assert snap.per_instance_rps == pytest.approx(200.0)
    assert snap.busy_fraction == pytest.approx(0.5)

    clock.t += 10.0  # everyone stale: heartbeat signals missing again
    snap = await s.collect(CAP)
    assert snap.busy_fraction is None and snap.gpu_utilization is None
    assert snap.per_instance_rps == 77.0  # the configured figure


async def test_idle_workers_fall_back_to_the_configured_rate() -> None:
    s, t, _ = await make(per_instance_rps=50.0, min_busy_fraction=0.25)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    t.on_beat(beat("w1", 1.0, throughput_rps=2.0, busy_fraction=0.01))  # 200/s: noise
    snap = await s.collect(CAP)
    assert snap.per_instance_rps == 50.0
    assert snap.busy_fraction == pytest.approx(0.01)


async def test_without_configuration_the_last_measurement_stays() -> None:
    s, t, _ = await make()
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    assert (await s.collect(CAP)).per_instance_rps is None
    t.on_beat(beat("w1", 1.0, throughput_rps=90.0, busy_fraction=0.9))
    assert (await s.collect(CAP)).per_instance_rps == pytest.approx(100.0)
    t.on_beat(beat("w1", 2.0, throughput_rps=0.0, busy_fraction=0.0))
    assert (await s.collect(CAP)).per_instance_rps == pytest.approx(100.0)


async def test_stopped_and_undecodable_heartbeats() -> None:
    s, t, _ = await make()
    assert t.on_beat is not None
    seen: list[str] = []
    s.add_listener(lambda b, _t: seen.append(f"{b.worker_id}:{b.state}"))
    t.on_beat(b"not json")
    t.on_beat(beat("w1", 1.0))
    t.on_beat(beat("w1", 2.0, state="stopped"))
    assert s.live_workers() == []
    assert seen == ["w1:ready", "w1:stopped"]


async def test_out_of_order_heartbeat_is_ignored() -> None:
    s, t, _ = await make()
    assert t.on_beat is not None
    t.on_beat(beat("w1", 5.0, busy_fraction=0.5))
    t.on_beat(beat("w1", 4.0, busy_fraction=0.1))
    assert s.live_workers()[0].busy_fraction == 0.5


async def test_silent_workers_make_the_arrival_rate_unknown_not_zero() -> None:
    """Heartbeats stop while the load goes on: the answer rate is unknown, so
    the arrival rate is missing (the policy holds), never a falling rate
    that scales in."""
    s, t, clock = await make(silence_hold_s=60.0)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=10, in_flight=0)
    t.on_beat(beat("w1", 100.0, answered_total=0))
    t.on_beat(beat("w2", 100.0, answered_total=0))
    await s.collect(CAP)
    clock.t += 1.0
    t.on_beat(beat("w1", 101.0, answered_total=180))
    t.on_beat(beat("w2", 101.0, answered_total=180))
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(360.0)
    for _ in range(20):  # the heartbeats stop; the backlog stays where it was
        clock.t += 5.0
        assert (await s.collect(CAP)).arrival_rate is None
    assert s.live_workers() == []


async def test_one_silent_worker_holds_the_rate_unknown_for_a_while() -> None:
    s, t, clock = await make(silence_hold_s=60.0)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    total = {"w1": 0, "w2": 0}
    sent = 100.0

    def beats(*ids: str) -> None:
        for wid in ids:
            total[wid] += 50
            t.on_beat(beat(wid, sent, answered_total=total[wid]))

    beats("w1", "w2")
    sent += 1.0
    beats("w1", "w2")
    await s.collect(CAP)
    seen = []
    for _ in range(30):  # w2 falls silent at once; w1 goes on at 50/s
        clock.t += 1.0
        sent += 1.0
        beats("w1")
        seen.append((await s.collect(CAP)).arrival_rate)
    # w2 is dropped after three intervals; its silence then holds the rate
    # unknown for 60 s (the first polls still counted its last rate)
    assert seen[0] == pytest.approx(100.0)
    assert all(r is None for r in seen[4:])
    clock.t += 60.0
    sent += 60.0
    beats("w1")
    clock.t += 1.0
    sent += 1.0
    beats("w1")
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(50.0)


async def test_after_a_restart_one_heartbeat_is_no_answer_rate() -> None:
    """A fresh autoscaler has heard each worker once: their answer rates are
    unknown, and the second poll must not read an arrival rate of 0."""
    s, t, clock = await make()
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=40, in_flight=8)
    t.on_beat(beat("w1", 500.0, answered_total=90_000, interval_s=5.0))
    await s.collect(CAP)
    clock.t += 5.0
    t.depths["a"] = Depth(model="a", ready=40, in_flight=8)
    assert (await s.collect(CAP)).arrival_rate is None
    t.on_beat(beat("w1", 505.0, answered_total=90_900, interval_s=5.0))  # 180/s
    clock.t += 5.0
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(180.0)


async def test_requests_per_message_is_remembered_while_no_worker_is_live() -> None:
    s, t, clock = await make()
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=10, in_flight=0)
    t.on_beat(beat("w1", 1.0, requests_per_message=8.0))
    assert (await s.collect(CAP)).backlog == 80
    clock.t += 10.0  # w1 is stale: no worker says how many requests a message holds
    assert s.live_workers() == []
    assert (await s.collect(CAP)).backlog == 80


async def test_snapshot_time_is_the_wall_clock() -> None:
    """Policies keep times in their state, and the state outlives the
    process: ``now`` comes from the wall clock, not the monotonic one."""
    s, t, _ = await make(wall_clock=lambda: 1.7e9)
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    assert (await s.collect(CAP)).now == 1.7e9


# ---------------------------------------------------------------------- the synchronous path


async def test_synchronous_calls_held_add_to_the_backlog_once() -> None:
    s, t, _ = await make(models=("a", "b"))
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=5, in_flight=None)  # in flight from heartbeats
    t.depths["b"] = Depth(model="b", ready=0, in_flight=2)
    # w1 holds 4 queued requests and 3 synchronous calls; w2 only synchronous ones
    t.on_beat(beat("w1", 1.0, in_flight=7, sync_in_flight=3, models=["a"]))
    t.on_beat(beat("w2", 1.0, in_flight=6, sync_in_flight=6, models=["b"]))
    assert (await s.collect(CAP)).backlog == 5 + 4 + 2 + 3 + 6


async def test_synchronous_arrivals_add_to_the_brokers_produce_rate() -> None:
    t = KafkaLike()
    t.rates = {"a": 20.0}
    s, _, clock = await make(t)
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=None)
    t.on_beat(beat("idle", 100.0))  # never served a synchronous call: adds 0
    t.on_beat(beat("w1", 100.0, sync_arrived_total=500, sync_rejected_total=10))
    assert (await s.collect(CAP)).arrival_rate is None  # w1's rate is not known yet
    clock.t += 2.0
    # 70 calls/s arrived at w1, 5/s of them refused: demand all the same
    t.on_beat(beat("w1", 102.0, sync_arrived_total=640, sync_rejected_total=20))
    assert (await s.collect(CAP)).arrival_rate == pytest.approx(20.0 + 70.0)


async def test_an_http_only_fleet_has_an_arrival_rate_from_its_heartbeats() -> None:
    """No broker traffic: backlog growth is 0, the answer rate and the
    refused calls are the whole demand."""
    s, t, clock = await make()
    assert t.on_beat is not None
    t.depths["a"] = Depth(model="a", ready=0, in_flight=0)
    t.on_beat(beat("w1", 100.0, sync_arrived_total=0, answered_total=0))
    await s.collect(CAP)
    clock.t += 1.0
    t.on_beat(
        beat(
            "w1",
            101.0,
            sync_arrived_total=150,
            sync_rejected_total=30,
            answered_total=112,
            sync_in_flight=8,
            in_flight=8,
        )
    )
    snap = await s.collect(CAP)
    assert snap.backlog == 8
    assert snap.arrival_rate == pytest.approx(8 + 112 + 30)  # waiting + answered + refused
