"""The worker's service loop.

For every broker message: decode → drop what expired → batch → infer off the
event loop → publish the replies (confirmed) → then ack. A message is acked
only when every request it carried has been answered (or dropped as
expired), so a crash at any point means redelivery, never loss.

A message that cannot be decoded goes to the dead-letter queue, and the callers
whose ids can still be read get a typed error at once. So does a message on its
last allowed delivery (it has been in flight on workers that died).

::

    worker = Worker(WorkerSettings(broker="memory://demo", models=Path("models")))
    await worker.start()   # models loaded and warmed, consuming
    ...
    await worker.stop()    # drain: stop consuming, finish, reply, ack
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from fleet import wire
from fleet.contract import ErrorInfo, ItemError, Priority, Reply, Request, Timings
from fleet.errors import FleetError, Internal, InvalidArgument, ModelNotFound
from fleet.heartbeat import Heartbeat, WorkerState
from fleet.logging import get_logger
from fleet.transport import Consumer, Delivery, Transport, connect
from worker.gpu import gpu_utilization
from worker.health import HealthServer
from worker.metrics import WorkerMetrics
from worker.pipeline import BatchStats, Feeds, Item, Outcome, Pipeline
from worker.repository import ModelRepository
from worker.runtime import Runtime
from worker.settings import WorkerSettings
from worker.stats import WindowStats

log = get_logger("worker.service")

_REPLY_ATTEMPTS = 4  # a reply that fails to publish is tried again after 0.25, 0.5, 1 s


@dataclass(eq=False, slots=True)
class _Message:
    """One broker message and the requests of it still unanswered."""

    delivery: Delivery
    remaining: int
    dead_letter: bool = False
    failed: bool = False  # a reply could not be published: leave it unacked


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.metrics = WorkerMetrics()
        self.state: WorkerState = "starting"
        self.stats = WindowStats()
        self.runtimes: dict[str, dict[str, Runtime]] = {}
        self._latest: dict[str, str] = {}
        self._pipelines: dict[tuple[str, str], Pipeline] = {}
        self._transport: Transport | None = None
        self._consumers: list[Consumer] = []
        self._messages: set[_Message] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._health: HealthServer | None = None
        self._limits = wire.Limits(max_message_bytes=settings.max_message_bytes)
        self._idle_logged: str | None = None
        self.http_port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("worker not started")
        return self._transport

    @property
    def models(self) -> list[str]:
        return sorted(self.runtimes)

    async def start(self) -> None:
        """Load and warm every model, connect, serve. Returns once ready."""
        s = self.settings
        # Model runs finish on an executor thread that needs the GIL back to
        # return; with the default 5 ms switch interval a busy event loop makes
        # every batch wait that long. 0.5 ms keeps the handoff short.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        if s.http_port is not None:
            self._health = HealthServer(ready=self._readiness, metrics=self.metrics.render)
            self.http_port = await self._health.start(s.http_host, s.http_port)
        await asyncio.to_thread(self._load_models)
        self._transport = connect(s.broker)
        await self._transport.connect()
        for model in self.models:
            await self._transport.declare_model(model)
            for version, runtime in self.runtimes[model].items():
                pipe = Pipeline(
                    model=model,
                    version=version,
                    runner=runtime,
                    max_wait=runtime.spec.config.max_wait_ms / 1000,
                    worker_id=self.worker_id,
                    emit=self._emit,
                    on_batch=self._on_batch,
                    threads=s.max_model_threads,
                )
                pipe.start()
                self._pipelines[(model, version)] = pipe
            prefetch = s.prefetch or 2 * max(
                r.max_batch_size for r in self.runtimes[model].values()
            )
            for priority in Priority:
                self._consumers.append(
                    await self._transport.consume(
                        model, priority, self._on_delivery, prefetch=prefetch
                    )
                )
        self.state = "ready"
        self.metrics.ready.set(1)
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeats())
        log.info(
            "worker ready",
            worker_id=self.worker_id,
            broker=_redact(s.broker),
            models={m: sorted(v) for m, v in self.runtimes.items()},
            providers=sorted({r.provider for v in self.runtimes.values() for r in v.values()}),
            http_port=self.http_port,
        )

    def _load_models(self) -> None:
        repo = ModelRepository(self.settings.models)
        for spec in repo.discover():
            runtime = Runtime.load(spec)
            runtime.warm_up()
            self.runtimes.setdefault(spec.name, {})[spec.version] = runtime
        for model in self.runtimes:
            self._latest[model] = repo.get(model).version  # the repository's "newest"

    async def stop(self) -> None:
        """Drain: stop consuming, finish and answer what was received, ack, close."""
        if self.state == "stopped":
            return
        self.state = "draining"
        self.metrics.ready.set(0)
        log.info("draining", worker_id=self.worker_id, in_flight=self._in_flight())
        for c in self._consumers:
            await c.cancel()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.close() for p in self._pipelines.values())),
                self.settings.drain_timeout,
            )
            await asyncio.wait_for(self._settled(), self.settings.drain_timeout)
        except TimeoutError:
            log.warning(
                "drain timed out; the broker will redeliver the rest", left=self._in_flight()
            )
        await self._shutdown()

    async def abort(self) -> None:
        """Stop at once without finishing anything (what a crash looks like to
        the broker: everything unacked is delivered again)."""
        for p in self._pipelines.values():
            await p.abort()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.state = "stopped"
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._transport is not None:
            try:
                await self._send_heartbeat()
            except FleetError:
                pass
            await self._transport.close()
        if self._health is not None:
            await self._health.stop()
        log.info("worker stopped", worker_id=self.worker_id, answered=self.stats.answered_total)

    async def _settled(self) -> None:
        while self._messages:
            await asyncio.sleep(0.01)

    def _in_flight(self) -> int:
        return sum(m.remaining for m in self._messages)

    def _readiness(self) -> tuple[bool, str]:
        if self.state != "ready":
            return False, self.state
        if self._transport is None or not self._transport.connected:
            return False, "broker disconnected"
        return True, "ready"

    # ------------------------------------------------------------------ requests
    async def _on_delivery(self, delivery: Delivery) -> None:
        msg = _Message(delivery=delivery, remaining=0)
        try:
            frame = wire.decode_requests(delivery.body, self._limits)
        except FleetError as exc:
            await self._refuse(msg, exc)
            return
        if delivery.attempt >= self.transport.options.delivery_limit:
            err = Internal(
                f"request failed on {delivery.attempt} deliveries (the workers handling it "
                "stopped); moved to the dead-letter queue"
            )
            await self._refuse(msg, err)
            return
        self._messages.add(msg)
        msg.remaining = len(frame.items)
        self.stats.record_message(len(frame.items))
        replies: list[Reply] = []
        now = time.time()
        for item in frame.items:
            if isinstance(item, ItemError):
                msg.dead_letter = True
                replies.append(self._error_reply(item.id, delivery.model, item.error))
                continue
            assert isinstance(item, Request)
            if item.expired(now):
                self.stats.expired_total += 1
                self.metrics.requests.labels(delivery.model, "expired").inc()
                msg.remaining -= 1
                continue
            try:
                pipe, feeds, rows = self._route(item, delivery.model)
            except FleetError as exc:
                replies.append(self._error_reply(item.id, delivery.model, exc))
                continue
            self.metrics.in_flight.inc()
            pipe.submit(
                Item(request=item, feeds=feeds, rows=rows, token=msg, reply_to=frame.reply_to)
            )
        if replies:
            await self._publish(frame.reply_to, replies, [msg] * len(replies))
        await self._maybe_settle(msg)

    def _route(self, req: Request, queue_model: str) -> tuple[Pipeline, Feeds, int]:
        if req.model != queue_model:
            raise InvalidArgument(
                f"request for model {req.model!r} arrived on {queue_model!r}'s queue"
            )
        versions = self.runtimes.get(req.model)
        if versions is None:
            raise ModelNotFound(f"this worker does not serve model {req.model!r}")
        version = req.version or self._latest[req.model]
        runtime = versions.get(version)
        if runtime is None:
            raise ModelNotFound(
                f"model {req.model!r} has no version {version!r}; versions: {sorted(versions)}"
            )
        feeds, rows = runtime.validate(req.inputs)
        return self._pipelines[(req.model, version)], feeds, rows

    async def _refuse(self, msg: _Message, exc: FleetError) -> None:
        """Dead-letter a whole message, telling every caller it names."""
        reply_to, ids = wire.salvage_ids(msg.delivery.body)
        log.warning("message dead-lettered", model=msg.delivery.model, error=str(exc), ids=len(ids))
        if reply_to and ids:
            replies = [self._error_reply(i, msg.delivery.model, exc) for i in ids]
            try:
                await self.transport.publish_reply(reply_to, wire.encode_replies(replies))
            except FleetError as pub_exc:
                log.warning("could not tell the callers", error=str(pub_exc))
        self.metrics.dead_lettered.inc()
        self.stats.errors_total += len(ids)
        await msg.delivery.reject()

    def _error_reply(self, rid: str, model: str, exc: FleetError) -> Reply:
        self.stats.errors_total += 1
        self.metrics.requests.labels(model, "error").inc()
        return Reply(
            id=rid, model=model, error=ErrorInfo.of(exc), timings=Timings(worker_id=self.worker_id)
        )

    # ------------------------------------------------------------------ replies
    async def _emit(self, outcomes: list[Outcome]) -> None:
        by_address: dict[str, tuple[list[Reply], list[_Message]]] = defaultdict(lambda: ([], []))
        for o in outcomes:
            msg = o.item.token
            assert isinstance(msg, _Message)
            self.metrics.in_flight.dec()
            if o.reply is None:
                self.stats.expired_total += 1
                self.metrics.requests.labels(o.item.request.model, "expired").inc()
                msg.remaining -= 1
                await self._maybe_settle(msg)
                continue
            replies, msgs = by_address[o.item.reply_to]
            replies.append(o.reply)
            msgs.append(msg)
            if o.reply.ok:
                self.stats.answered_total += 1
                self.metrics.requests.labels(o.item.request.model, "ok").inc()
            else:
                self.stats.errors_total += 1
                self.metrics.requests.labels(o.item.request.model, "error").inc()
        await asyncio.gather(*(self._publish(a, r, m) for a, (r, m) in by_address.items()))

    async def _publish(self, reply_to: str, replies: list[Reply], msgs: list[_Message]) -> None:
        body = wire.encode_replies(replies)
        for attempt in range(_REPLY_ATTEMPTS):
            try:
                await self.transport.publish_reply(reply_to, body)
                break
            except FleetError as exc:
                if exc.retriable and attempt + 1 < _REPLY_ATTEMPTS and self.state != "stopped":
                    await asyncio.sleep(0.25 * 2**attempt)
                    continue
                # not acked: the broker delivers the message again, here or elsewhere
                log.warning(
                    "publishing replies failed; leaving the request unacked", error=str(exc)
                )
                for m in msgs:
                    m.failed = True
        for m in msgs:
            m.remaining -= 1
        for m in set(msgs):
            await self._maybe_settle(m)

    async def _maybe_settle(self, msg: _Message) -> None:
        if msg.remaining > 0 or msg not in self._messages:
            return
        self._messages.discard(msg)
        try:
            if msg.failed:
                return
            if msg.dead_letter:
                self.metrics.dead_lettered.inc()
                await msg.delivery.reject()
            else:
                await msg.delivery.ack()
        except FleetError as exc:
            log.warning("ack failed; the message will be delivered again", error=str(exc))

    def _on_batch(self, b: BatchStats) -> None:
        self.stats.record_batch(b.rows, b.inference_s, b.queue_wait_s)
        model = b.model
        self.metrics.batch_size.labels(model).observe(b.rows)
        self.metrics.inference.labels(model).observe(b.inference_s)
        for w in b.queue_wait_s:
            self.metrics.queue_wait.labels(model).observe(w)

    # ------------------------------------------------------------------ heartbeats
    async def _heartbeats(self) -> None:
        while True:
            try:
                await self._send_heartbeat()
            except FleetError as exc:
                log.debug("heartbeat not sent", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_interval)

    def heartbeat(self) -> Heartbeat:
        gpu = gpu_utilization()
        if gpu is not None:
            self.metrics.gpu_utilization.set(gpu)
        # e.g. Kafka: more workers than partitions leaves some consumers nothing
        reasons = sorted({r for c in self._consumers if (r := c.idle_reason())})
        idle = "; ".join(reasons) or None
        if idle != self._idle_logged:
            if idle:
                log.warning("consumers idle", worker_id=self.worker_id, reason=idle)
            self._idle_logged = idle
        max_batch = max(
            (r.max_batch_size for v in self.runtimes.values() for r in v.values()), default=1
        )
        w = self.stats.roll()
        return Heartbeat(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            instance_id=os.environ.get("FLEET_INSTANCE_ID"),
            state=self.state,
            models=self.models,
            sent_at=time.time(),
            interval_s=self.settings.heartbeat_interval,
            throughput_rps=w.throughput_rps,
            busy_fraction=w.busy_fraction,
            batch_fill=w.mean_batch / max_batch if max_batch else 0.0,
            mean_batch_size=w.mean_batch,
            queue_wait_ms_p50=w.queue_wait_p50 * 1000,
            in_flight=self._in_flight(),
            requests_per_message=w.requests_per_message,
            gpu_utilization=gpu,
            provider=",".join(
                sorted({r.provider for v in self.runtimes.values() for r in v.values()})
            ),
            idle_reason=idle,
            answered_total=self.stats.answered_total,
            errors_total=self.stats.errors_total,
            expired_total=self.stats.expired_total,
        )

    async def _send_heartbeat(self) -> None:
        await self.transport.publish_heartbeat(self.heartbeat().encode())


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


__all__ = ["Worker", "WorkerSettings"]
