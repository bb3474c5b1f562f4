"""Prometheus metrics of one worker (its own registry, so several workers can
live in one process, as they do in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from fleet.stages import Counters, Histograms

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # observed on every batch: fleet's own lock-free families, not prometheus_client's
        self.requests = Counters(
            "fleet_worker_requests",
            "Requests by model version and outcome (version empty: refused before a version)",
            ("model", "version", "outcome"),
        )
        self.batch_size = Histograms(
            "fleet_worker_batch_size", "Rows per batch", ("model", "version"), _BATCH_BUCKETS
        )
        self.queue_wait = Histograms(
            "fleet_worker_queue_wait_seconds",
            "From the client's publish to the start of inference",
            ("model", "version"),
            _TIME_BUCKETS,
        )
        self.inference = Histograms(
            "fleet_worker_inference_seconds",
            "Model run per batch",
            ("model", "version"),
            _TIME_BUCKETS,
        )
        for family in (self.requests, self.batch_size, self.queue_wait, self.inference):
            r.register(family)
        self.in_flight = Gauge(
            "fleet_worker_in_flight", "Requests received, not answered", registry=r
        )
        self.gpu_utilization = Gauge(
            "fleet_worker_gpu_utilization", "GPU utilization 0..1", registry=r
        )
        self.ready = Gauge("fleet_worker_ready", "1 when serving", registry=r)
        self.dead_lettered = Counter(
            "fleet_worker_dead_lettered", "Messages sent to the dead-letter queue", registry=r
        )
        self.model_provider = Gauge(
            "fleet_worker_model_provider",
            "1 for the execution provider each loaded model version runs on",
            ["model", "version", "provider"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "fleet_worker_model_load_failures",
            "Model versions found in the repository while serving and refused",
            ["model", "version"],
            registry=r,
        )
        self.broker_connect_attempts = Counter(
            "fleet_worker_broker_connect_attempts",
            "Attempts to reach the broker while starting, by outcome",
            ["outcome"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["WorkerMetrics"]
