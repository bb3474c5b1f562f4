"""The worker: model loading, pipelines, the broker ingress, health and heartbeats.

A :class:`Worker` composes the parts: a :class:`~worker.model_table.ModelTable`
(every model version loaded by its runtime, warmed up, one pipeline each), the
:class:`~worker.broker_ingress.BrokerIngress` that turns broker deliveries into
pipeline items and settles them, the Open Inference Protocol's servers over HTTP and gRPC
(:class:`~worker.oip_http.OipHttpServer` and :class:`~worker.oip_grpc.OipGrpcServer`,
when ``oip_port`` or ``oip_grpc_port`` is set: other ingresses of the same
pipelines, through one :class:`~worker.sync_ingress.SyncIngress`), the HTTP
health server, and heartbeats.

The synchronous path is ready once the models are loaded and their pipelines
run, before the broker answers: it needs no broker. It stops being ready when
the worker drains.
Starting one changes no process-wide state; see :mod:`worker.tuning`.

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
import time

from fleet import interpreter
from fleet.cache import ResultCache
from fleet.errors import FleetError
from fleet.eventloop import cancel_and_wait, running_loop_kind
from fleet.heartbeat import Heartbeat, WorkerState
from fleet.jobs import ResultStore, open_cache, open_store
from fleet.logging import get_logger
from fleet.payloads import open_payloads
from fleet.redact import redact_url
from fleet.transport import Transport, connect
from worker.broker_ingress import BrokerIngress
from worker.gpu import gpu_utilization
from worker.health import HealthServer
from worker.ledger import Ledger
from worker.lifecycle import Backoff, BrokerWait
from worker.metrics import WorkerMetrics
from worker.model_table import ModelTable
from worker.oip_grpc import OipGrpcServer
from worker.oip_http import OipHttpServer
from worker.repository import ModelRepository
from worker.runtime import ModelRuntime
from worker.settings import WorkerSettings
from worker.stats import WindowStats
from worker.sync_ingress import SyncIngress
from worker.watcher import RepositoryWatcher

log = get_logger("worker.service")


class Worker:
    """One worker: its models, pipelines and broker ingress, its health server and heartbeats."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.metrics = WorkerMetrics()
        self.state: WorkerState = "starting"
        self.stats = WindowStats()
        self.ledger = Ledger(self.metrics, self.stats)
        self.table = ModelTable()
        self._transport: Transport | None = None
        self._ingress: BrokerIngress | None = None
        self._results: ResultStore | None = None
        self._cache: ResultCache | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.watcher: RepositoryWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._health: HealthServer | None = None
        self.boot: BrokerWait | None = None  # the wait for the broker at start
        self.sync: SyncIngress | None = None  # the OIP servers' shared ingress
        self.oip: OipHttpServer | None = None
        self.oip_grpc: OipGrpcServer | None = None
        self._serving = False  # models loaded, pipelines running, not draining
        self._idle_logged: str | None = None
        self.http_port: int | None = None
        self.oip_port: int | None = None
        self.oip_grpc_port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("worker not started")
        return self._transport

    @property
    def runtimes(self) -> dict[str, dict[str, ModelRuntime]]:
        """The loaded runtimes by model and version."""
        return self.table.runtimes

    @property
    def models(self) -> list[str]:
        return self.table.models

    async def start(self) -> None:
        """Load and warm every model, connect, serve. Returns once ready."""
        s = self.settings
        if s.http_port is not None:
            self._health = HealthServer(
                ready=self._readiness, metrics=self.metrics.render, details=self._details
            )
            self.http_port = await self._health.start(s.http_host, s.http_port)
        self.table = await asyncio.to_thread(ModelTable.load, s.models)
        for model, versions in self.runtimes.items():
            for version, runtime in versions.items():
                self.metrics.model_provider.labels(model, version, runtime.provider).set(1)
        self.table.start(
            worker_id=self.worker_id, on_batch=self.ledger.batch, threads=s.max_model_threads
        )
        self._serving = True
        await self._start_oip()
        self._transport = await self._wait_for_broker()
        await self._open_stores()
        self._ingress = BrokerIngress(
            self._transport,
            self.table,
            self.ledger,
            worker_id=self.worker_id,
            max_message_bytes=s.max_message_bytes,
            prefetch=s.prefetch,
            max_held_requests=s.max_held_requests,
            max_held_bytes=s.max_held_bytes,
            results=self._results,
            payloads=None if s.payloads is None else open_payloads(s.payloads),
            claim_threshold=s.claim_threshold,
            cache=self._cache,
            cache_ttl=s.cache_ttl,
            notify=s.notify,
        )
        await self._ingress.start()
        self._start_watching(self._ingress)
        self.state = "ready"
        self.metrics.ready.set(1)
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeats())
        log.info(
            "worker ready",
            worker_id=self.worker_id,
            broker=redact_url(s.broker),
            models={m: sorted(v) for m, v in self.runtimes.items()},
            providers=self.table.providers,
            http_port=self.http_port,
            oip_port=self.oip_port,
            oip_grpc_port=self.oip_grpc_port,
            event_loop=running_loop_kind(),
            **interpreter.summary(),
        )

    async def _start_oip(self) -> None:
        """The Open Inference Protocol's servers, where the settings ask for them."""
        s = self.settings
        if s.oip_port is None and s.oip_grpc_port is None:
            return
        self.sync = SyncIngress(
            self.table,
            self.ledger,
            ready=lambda: self._serving,
            max_queued=s.max_sync_requests or 4 * self.table.max_batch_size(),
            default_timeout=s.sync_timeout,
        )
        if s.oip_port is not None:
            self.oip = OipHttpServer(
                self.sync, max_body_bytes=s.max_message_bytes, repository=lambda: self.watcher
            )
            self.oip_port = await self.oip.start(s.oip_host, s.oip_port)
        if s.oip_grpc_port is not None:
            self.oip_grpc = OipGrpcServer(self.sync, max_message_bytes=s.max_message_bytes)
            self.oip_grpc_port = await self.oip_grpc.start(s.oip_host, s.oip_grpc_port)

    async def _open_stores(self) -> None:
        """The result store and the result cache, where the settings name them."""
        s = self.settings
        if s.results is not None:
            self._results = open_store(s.results)
            await self._results.connect()
        if s.cache is not None:
            self._cache = open_cache(s.cache)
            await self._cache.connect()

    async def _wait_for_broker(self) -> Transport:
        """The connected transport, once the broker answers (see
        :class:`~worker.lifecycle.BrokerWait`); not ready meanwhile."""
        s = self.settings
        counter = self.metrics.broker_connect_attempts
        self.boot = BrokerWait(
            s.broker,
            backoff=Backoff(
                initial=min(s.broker_retry_initial, s.broker_retry_max), cap=s.broker_retry_max
            ),
            timeout=s.broker_wait_timeout,
            on_attempt=lambda outcome: counter.labels(outcome).inc(),
        )
        transport = connect(s.broker)
        await self.boot.connect(transport)
        return transport

    async def stop(self) -> None:
        """Drain: stop consuming, finish and answer what was received, ack, close."""
        if self.state == "stopped":
            return
        self.state = "draining"
        self._serving = False
        self.metrics.ready.set(0)
        log.info("draining", worker_id=self.worker_id, in_flight=self.in_flight())
        await self._stop_watching()
        if self._ingress is not None:
            await self._ingress.stop_consuming()
        try:
            await asyncio.wait_for(self.table.close(), self.settings.drain_timeout)
            await asyncio.wait_for(self._settled(), self.settings.drain_timeout)
        except TimeoutError:
            log.warning(
                "drain timed out; the broker will redeliver the rest", left=self.in_flight()
            )
        await self._shutdown()

    async def abort(self) -> None:
        """Stop at once without finishing anything (what a crash looks like to
        the broker: everything unacked is delivered again)."""
        self._serving = False
        await self._stop_watching()
        await self.table.abort()
        await self._shutdown()

    def _start_watching(self, ingress: BrokerIngress) -> None:
        """Keep the served versions in step with the repository (see
        :mod:`worker.watcher`), unless ``watch_interval`` is 0: then only
        explicit loads and unloads change them."""
        s = self.settings
        self.watcher = RepositoryWatcher(
            ModelRepository(s.models),
            self.table,
            interval=s.watch_interval,
            metrics=self.metrics,
            on_change=ingress.model_changed,
            on_removed=ingress.model_removed,
        )
        if s.watch_interval <= 0:
            return
        self.table.on_unknown = self.watcher.wake
        self._watch_task = asyncio.get_running_loop().create_task(
            self.watcher.run(), name="repository-watcher"
        )

    async def _stop_watching(self) -> None:
        """No version is loaded or retired from here on."""
        self.table.on_unknown = None  # requests for versions on their way stay held:
        # the table answers them Unavailable (retriable) when it closes
        if self._watch_task is not None:
            await cancel_and_wait(self._watch_task)
            self._watch_task = None

    async def _shutdown(self) -> None:
        self.state = "stopped"
        if self._ingress is not None:
            self._ingress.close()
        if self._heartbeat_task is not None:
            await cancel_and_wait(self._heartbeat_task)
        if self._transport is not None:
            try:
                await self._send_heartbeat()
            except FleetError:
                pass
            await self._transport.close()
        if self._results is not None:
            await self._results.close()
        if self._cache is not None:
            await self._cache.close()
        self._serving = False
        if self.oip is not None:
            await self.oip.stop()
        if self.oip_grpc is not None:
            await self.oip_grpc.stop()
        if self._health is not None:
            await self._health.stop()
        log.info("worker stopped", worker_id=self.worker_id, answered=self.stats.answered_total)

    async def _settled(self) -> None:
        if self._ingress is not None:
            await self._ingress.settled()

    def in_flight(self) -> int:
        """Requests received (from the broker or over OIP) and not yet answered."""
        queued = self._ingress.in_flight() if self._ingress is not None else 0
        return queued + (self.sync.in_flight() if self.sync is not None else 0)

    def _readiness(self) -> tuple[bool, str]:
        if self.boot is not None and self.boot.status is not None:
            return False, self.boot.status
        if self.state != "ready":
            return False, self.state
        if self._transport is None or not self._transport.connected:
            return False, "broker disconnected"
        return True, "ready"

    def _details(self) -> dict[str, object]:
        """What ``/readyz`` shows besides readiness: each model version's provider."""
        details: dict[str, object] = {
            "models": {
                model: {version: {"provider": r.provider} for version, r in versions.items()}
                for model, versions in self.runtimes.items()
            }
        }
        if self.table.policies:
            details["policies"] = {
                model: policy.model_dump(exclude_defaults=True)
                for model, policy in sorted(self.table.policies.items())
            }
        if self.watcher is not None and self.watcher.policy_problems:
            details["policies refused"] = dict(sorted(self.watcher.policy_problems.items()))
        if self.watcher is not None and self.watcher.refused:
            details["refused"] = {
                f"{model}:{version}": r.reason
                for (model, version), r in sorted(self.watcher.refused.items())
            }
        return details

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
        idle = self._idle_reason()
        max_batch = self.table.max_batch_size()
        w = self.stats.roll()
        sync = self.sync.window() if self.sync is not None else None
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
            inference_ms_p50=w.inference_p50 * 1000,
            reply_ms_p50=w.reply_p50 * 1000,
            in_flight=self.in_flight(),
            requests_per_message=w.requests_per_message,
            gpu_utilization=gpu,
            provider=",".join(self.table.providers),
            idle_reason=idle,
            answered_total=self.stats.answered_total,
            errors_total=self.stats.errors_total,
            expired_total=self.stats.expired_total,
            sync_in_flight=sync.in_flight if sync else 0,
            sync_arrived_total=sync.arrived_total if sync else 0,
            sync_rejected_total=sync.rejected_total if sync else 0,
            sync_queue_wait_ms_p50=sync.queue_wait_p50 * 1000 if sync else 0.0,
            oip_port=self.oip_port,
            oip_grpc_port=self.oip_grpc_port,
        )

    def _idle_reason(self) -> str | None:
        """Why consumers get nothing, logged when it changes (e.g. Kafka: more
        workers than partitions leaves some consumers nothing)."""
        reasons = self._ingress.idle_reasons() if self._ingress is not None else []
        idle = "; ".join(reasons) or None
        if idle != self._idle_logged:
            if idle:
                log.warning("consumers idle", worker_id=self.worker_id, reason=idle)
            self._idle_logged = idle
        return idle

    async def _send_heartbeat(self) -> None:
        await self.transport.publish_heartbeat(self.heartbeat().encode())


__all__ = ["Worker", "WorkerSettings"]
