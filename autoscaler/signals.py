"""Signals: one :class:`~autoscaler.types.Snapshot` per poll.

- **backlog**: summed over the watched models from :meth:`Transport.depth`
  (RabbitMQ ready + unacked; Kafka lag, which already includes what workers
  hold uncommitted). Where RabbitMQ's management API does not report unacked
  messages, the in-flight counts of live workers' heartbeats stand in.
  Depth counts broker messages; clients coalesce several requests into one
  message, so message counts are scaled by the mean requests per message the
  live workers report in their heartbeats (the last figure heard while none
  is live).
  The **synchronous path** (the Open Inference Protocol over HTTP and gRPC)
  goes through no broker: the requests live workers hold for it
  (``sync_in_flight``) are added to the backlog, and left out of the
  in-flight counts that stand in for a broker's.
- **arrival rate**: requests/s offered, an EWMA of the transport's
  ``produce_rate(model)`` where it can read one (:class:`ProduceRateReader`,
  :attr:`Capability.PRODUCE_RATE`), else of
  ``Δbacklog/Δt + answer rate`` (the answer rate from the heartbeats'
  ``answered_total`` counters). The answer rate is *unknown*, and so is the
  arrival rate, while instances are in service and no worker is heard from,
  while a live worker has sent only one heartbeat (no rate yet, as after an
  autoscaler restart), and for ``silence_hold_s`` after a worker fell silent
  without saying it stopped: a worker that is not heard from is not a worker
  that answers nothing. Synchronous demand is added as the heartbeats'
  ``sync_arrived_total`` counters' rates on the produce-rate path (refused
  calls included: a load balancer's retries are demand too), and as their
  ``sync_rejected_total`` rates on the backlog path (what was answered is in
  the answer rate, what waits is in the backlog). A worker that has served
  synchronous calls but sent one heartbeat makes that part unknown.
- **per-instance throughput, busy fraction, GPU utilization, saturation**:
  from heartbeats of workers in state ``ready``; a heartbeat older than three
  of its own intervals is dropped. A worker *batches* when its model runs
  hold more than one request on average (``mean_batch_size > 1``). Busy time
  and NVML's GPU utilization sit near 1.0 for a worker that batches
  continuously, at any load, so neither measures its headroom: its
  **saturation** (the capacity signal the default policy scales on) is its
  busy fraction times the fill of its batches (``batch_fill``, mean batch
  size / max batch size): the room left in its batches is headroom too. A
  worker whose max batch is 1 fills every batch, so its saturation is its
  busy fraction.
  Sustainable per-instance rps is ``throughput / busy_fraction`` where that
  is a measurement of capacity: a worker that does not batch and is busy
  enough (``min_busy_fraction``), or one whose batches are full
  (``batch_fill >= FULL_BATCH``: it answers all it can). A batching worker
  with room in its batches answers what it is offered, not what it could, so
  its throughput says nothing of its capacity: the configured
  ``per_instance_rps`` (or the last measurement) stands.
- **in service, pending, desired**: from the actuator.
- **now**: the wall clock (``wall_clock``), so that times a policy keeps in its
  state stay meaningful across restarts; intervals and heartbeat ages are
  measured on the monotonic ``clock``.

A signal that cannot be read is ``None``, never 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscaler.actuators.base import Capacity
from autoscaler.ewma import Ewma
from autoscaler.types import Snapshot
from fleet.errors import DecodeError, FleetError
from fleet.heartbeat import Heartbeat
from fleet.logging import get_logger
from fleet.transport.base import Capability, Consumer, Depth, ProduceRateReader, Transport

log = get_logger("autoscaler.signals")

STALE_INTERVALS = 3.0  # a heartbeat older than this many of its intervals is dropped
FULL_BATCH = 0.95  # a batch fill from which a batching worker's throughput is its capacity
SILENCE_HOLD_S = 60.0  # the answer rate is unknown this long after a worker fell silent

HeartbeatListener = Callable[[Heartbeat, float], None]


@dataclass(slots=True)
class _Worker:
    beat: Heartbeat
    received_at: float  # monotonic
    answer_rate: float | None = None  # from the last two distinct heartbeats
    sync_rate: float | None = None  # synchronous calls arriving per second, likewise
    reject_rate: float | None = None  # synchronous calls refused per second, likewise


class Signals:
    """Collects snapshots. Call :meth:`start` (subscribes to heartbeats), then
    :meth:`collect` once per poll."""

    def __init__(
        self,
        transport: Transport,
        models: Sequence[str],
        *,
        per_instance_rps: float | None = None,
        arrival_smoothing_s: float = 10.0,
        min_busy_fraction: float = 0.25,
        declare_queues: bool = True,
        silence_hold_s: float = SILENCE_HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.models = list(models)
        self.per_instance_rps = per_instance_rps
        self.min_busy_fraction = min_busy_fraction
        self.declare_queues = declare_queues
        self.silence_hold_s = silence_hold_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._arrival = Ewma(arrival_smoothing_s)
        self._silent_at: float | None = None  # when a worker last fell silent
        self._per_message = 1.0  # the last requests-per-message figure heard
        self._workers: dict[str, _Worker] = {}
        self._listeners: list[HeartbeatListener] = []
        self._sub: Consumer | None = None
        self._last_poll: float | None = None
        self._last_backlog: int | None = None
        self._measured_rps: float | None = None
        self.last_depths: dict[str, Depth | None] = {}

    # ------------------------------------------------------------------ heartbeats
    def add_listener(self, listener: HeartbeatListener) -> None:
        """Also hand every decoded heartbeat to ``listener(beat, received_at)``."""
        self._listeners.append(listener)

    async def start(self) -> None:
        if self.declare_queues:
            for model in self.models:
                try:
                    await self.transport.declare_model(model)
                except FleetError as exc:
                    log.warning("could not declare model queues", model=model, error=repr(exc))
        if self._sub is None:
            self._sub = await self.transport.subscribe_heartbeats(self.on_heartbeat_bytes)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.cancel()
            except FleetError as exc:
                log.warning("could not cancel heartbeat subscription", error=repr(exc))

    def on_heartbeat_bytes(self, data: bytes) -> None:
        try:
            beat = Heartbeat.decode(data)
        except DecodeError as exc:
            log.warning("dropping an undecodable heartbeat", error=exc.message)
            return
        self.on_heartbeat(beat)

    def on_heartbeat(self, beat: Heartbeat) -> None:
        now = self.clock()
        for listener in self._listeners:
            try:
                listener(beat, now)
            except Exception:
                log.exception("heartbeat listener failed")
        if beat.models and not set(beat.models) & set(self.models):
            return  # a worker for other models
        if beat.state == "stopped":
            self._workers.pop(beat.worker_id, None)
            return
        prev = self._workers.get(beat.worker_id)
        if prev is not None and beat.sent_at < prev.beat.sent_at:
            return  # out of order: keep the newer one
        w = _Worker(beat=beat, received_at=now)
        if prev is not None:
            w.answer_rate, w.sync_rate, w.reject_rate = (
                prev.answer_rate,
                prev.sync_rate,
                prev.reject_rate,
            )
        if prev is not None and beat.sent_at > prev.beat.sent_at:
            dt = beat.sent_at - prev.beat.sent_at
            w.answer_rate = _rate(prev.beat.answered_total, beat.answered_total, dt)
            w.sync_rate = _rate(prev.beat.sync_arrived_total, beat.sync_arrived_total, dt)
            w.reject_rate = _rate(prev.beat.sync_rejected_total, beat.sync_rejected_total, dt)
        self._workers[beat.worker_id] = w

    def live_workers(self) -> list[Heartbeat]:
        """Heartbeats of workers heard from within three of their intervals."""
        now = self.clock()
        for wid, w in list(self._workers.items()):
            if now - w.received_at > STALE_INTERVALS * max(w.beat.interval_s, 1e-3):
                del self._workers[wid]
                self._silent_at = now  # gone without saying it stopped
        return [w.beat for w in self._workers.values()]

    # ------------------------------------------------------------------ polling
    async def _depths(self) -> dict[str, Depth | None]:
        out: dict[str, Depth | None] = {}
        for model in self.models:
            try:
                out[model] = await self.transport.depth(model)
            except FleetError as exc:
                log.warning("backlog unreadable", model=model, error=repr(exc))
                out[model] = None
        return out

    def _per_message_now(self, live: list[Heartbeat]) -> float:
        """Requests per broker message, from the live workers; while none
        says, the last figure heard (1 before any)."""
        ratios = [b.requests_per_message for b in live if b.requests_per_message >= 1]
        if ratios:
            self._per_message = sum(ratios) / len(ratios)
        return self._per_message

    def _backlog(self, depths: dict[str, Depth | None], live: list[Heartbeat]) -> int | None:
        if any(d is None for d in depths.values()):
            return None
        messages = 0
        unknown_in_flight: set[str] = set()
        for model, d in depths.items():
            assert d is not None
            messages += d.ready
            if d.in_flight is None:
                unknown_in_flight.add(model)
            else:
                messages += d.in_flight
        total = round(messages * self._per_message) + sum(b.sync_in_flight for b in live)
        # Kafka lag (end offset - committed) already counts what workers hold
        # uncommitted; elsewhere an unknown in-flight count is the workers' sum.
        if unknown_in_flight and not self.transport.can(Capability.LAG_COUNTS_IN_FLIGHT):
            total += sum(
                b.in_flight - b.sync_in_flight
                for b in live
                if not b.models or set(b.models) & unknown_in_flight
            )
        return total

    async def _produce_rate(self) -> float | None:
        """Messages/s published for the watched models, where the transport
        reads it from the broker (:attr:`Capability.PRODUCE_RATE`)."""
        reader = self.transport
        if not reader.can(Capability.PRODUCE_RATE) or not isinstance(reader, ProduceRateReader):
            return None
        total = 0.0
        for model in self.models:
            try:
                value = await reader.produce_rate(model)
            except FleetError as exc:
                log.warning("produce rate unreadable", model=model, error=repr(exc))
                return None
            if value is None:
                return None
            total += float(value)
        return total

    def _answer_rate(self, in_service: int, now: float) -> float | None:
        """Requests/s the workers answer, or ``None`` when that is unknown:
        instances in service and no worker heard from, a live worker with no
        rate yet (a single heartbeat), or a worker fallen silent lately."""
        workers = list(self._workers.values())
        if not workers:
            return None if in_service > 0 else 0.0
        if any(w.answer_rate is None for w in workers):
            return None
        if self._silent_at is not None and now - self._silent_at < self.silence_hold_s:
            return None
        return sum(w.answer_rate or 0.0 for w in workers)

    def _sync_rates(self) -> tuple[float, float] | None:
        """Synchronous calls arriving and refused per second, summed over the
        workers; ``None`` while a worker that has served some has no rate yet."""
        arrived = rejected = 0.0
        for w in self._workers.values():
            if w.sync_rate is None or w.reject_rate is None:
                if w.beat.sync_arrived_total > 0:
                    return None
                continue
            arrived += w.sync_rate
            rejected += w.reject_rate
        return arrived, rejected

    async def _arrival_rate(self, now: float, backlog: int | None, in_service: int) -> float | None:
        """The smoothed arrival rate: the broker's produce rate where it has
        one, else backlog growth plus the answer rate; plus the synchronous
        path's (see the module's docstring). ``None`` when a part is unknown
        (never a 0 that is only missing data)."""
        produced = await self._produce_rate()
        sync = self._sync_rates()
        dt = now - self._last_poll if self._last_poll is not None else None
        if produced is not None:
            if sync is None:
                return None
            produced *= self._per_message  # messages/s to requests/s
            return self._arrival.update(produced + sync[0], dt or 0.0)
        if backlog is None or self._last_backlog is None or not dt:
            return None  # the first poll, or the backlog could not be read
        answered = self._answer_rate(in_service, now)
        if answered is None or sync is None:
            return None
        raw = max(0.0, (backlog - self._last_backlog) / dt + answered + sync[1])
        return self._arrival.update(raw, dt)

    def _measures_capacity(self, beat: Heartbeat) -> bool:
        """Whether ``throughput / busy_fraction`` is what the worker could
        answer: it batches and its batches are full, or it does not batch and
        is busy enough for its busy time to say."""
        if beat.throughput_rps <= 0 or beat.busy_fraction <= 0:
            return False
        if batches(beat):
            return beat.batch_fill >= FULL_BATCH
        return beat.busy_fraction >= self.min_busy_fraction

    def _per_instance(self, ready: list[Heartbeat]) -> float | None:
        measured = [b for b in ready if self._measures_capacity(b)]
        estimates = [b.throughput_rps / b.busy_fraction for b in measured]
        if estimates:
            self._measured_rps = sum(estimates) / len(estimates)
            return self._measured_rps
        if self.per_instance_rps is not None:
            return self.per_instance_rps
        return self._measured_rps

    async def collect(self, capacity: Capacity) -> Snapshot:
        """Read every signal once."""
        now = self.clock()
        live = self.live_workers()
        ready = [b for b in live if b.state == "ready"]
        depths = await self._depths()
        self.last_depths = depths
        self._per_message_now(live)
        backlog = self._backlog(depths, live)
        arrival = await self._arrival_rate(now, backlog, capacity.in_service)
        self._last_poll = now
        self._last_backlog = backlog

        gpus = [b.gpu_utilization for b in ready if b.gpu_utilization is not None]
        loads = [saturation(b) for b in ready]
        return Snapshot(
            now=self.wall_clock(),
            backlog=backlog,
            arrival_rate=arrival,
            per_instance_rps=self._per_instance(ready),
            busy_fraction=(sum(b.busy_fraction for b in ready) / len(ready)) if ready else None,
            gpu_utilization=(sum(gpus) / len(gpus)) if gpus else None,
            in_service=capacity.in_service,
            pending=capacity.pending,
            desired=capacity.desired,
            warm=capacity.warm,
            saturation=(sum(loads) / len(loads)) if loads else None,
        )


def _rate(before: int, after: int, dt: float) -> float:
    """Per second, from two readings of a counter ``dt`` seconds apart; a
    counter that went back (the worker restarted under the same id) started
    again from 0."""
    counted = after - before
    return (after if counted < 0 else counted) / dt


def batches(beat: Heartbeat) -> bool:
    """Whether the worker batches: more than one request per model run on average."""
    return beat.mean_batch_size > 1.0 and beat.batch_fill > 0.0


def saturation(beat: Heartbeat) -> float:
    """The share of a worker's capacity in use (1: at capacity): its busy
    fraction times the fill of its batches (a batching worker is busy nearly
    all the time at any load; the room left in its batches is its headroom).
    A heartbeat without a batch fill (no batch in the interval) counts its
    busy fraction alone."""
    if beat.batch_fill <= 0.0:
        return beat.busy_fraction
    return beat.busy_fraction * min(beat.batch_fill, 1.0)


__all__ = [
    "FULL_BATCH",
    "STALE_INTERVALS",
    "HeartbeatListener",
    "Signals",
    "batches",
    "saturation",
]
