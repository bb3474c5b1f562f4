"""What happened to every request, counted the same way whatever ingress it came by.

The :class:`Ledger` keeps both of the worker's views: the Prometheus metrics
(``/metrics``) and the window statistics its heartbeats carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fleet.stages import Histogram, StageHistograms
from worker.metrics import WorkerMetrics
from worker.pipeline import BatchStats, Outcome
from worker.stats import WindowStats


def _stage_histograms() -> StageHistograms:
    return StageHistograms(
        "fleet_worker_stage_seconds",
        "Per request, the worker's stages: batch_wait (receipt to the start of its "
        "batch's run), inference (the batch's run), reply (the end of the run to the "
        "reply published)",
        labels=("model",),
    )


@dataclass(eq=False, slots=True)
class Ledger:
    metrics: WorkerMetrics
    stats: WindowStats
    stages: StageHistograms = field(default_factory=_stage_histograms)
    # per (model, version): its batch size, inference and queue wait children,
    # and its batch_wait and inference stage histograms, each looked up once
    _batch: dict[tuple[str, str], tuple[Histogram, ...]] = field(default_factory=dict)
    in_flight: int = 0  # read by ``fleet_worker_in_flight`` when scraped

    def __post_init__(self) -> None:
        self.metrics.registry.register(self.stages)
        # a plain count, read at the scrape: not two locked updates per request
        self.metrics.in_flight.set_function(lambda: self.in_flight)

    def _count(self, model: str, version: str, outcome: str, n: int = 1) -> None:
        """``fleet_worker_requests{model, version, outcome}`` += n."""
        self.metrics.requests.inc((model, version, outcome), n)

    def message(self, items: int) -> None:
        """A message (a client's coalesced requests) arrived with ``items`` requests."""
        self.stats.record_message(items)

    def submitted(self) -> None:
        """A request went into a pipeline: in flight until :meth:`finished`."""
        self.in_flight += 1

    def finished(self, outcomes: Sequence[Outcome]) -> None:
        """Requests a pipeline took came out answered, failed or expired (a
        batch's: the answered ones counted once per model version)."""
        self.in_flight -= len(outcomes)
        answered: dict[tuple[str, str], int] = {}
        for outcome in outcomes:
            model = outcome.item.request.model
            reply = outcome.reply
            if reply is None:
                self.expired(model, outcome.item.request.version or "")
            elif reply.ok:
                key = (model, reply.version)
                answered[key] = answered.get(key, 0) + 1
            else:
                self.error(model, reply.version)
        for (model, version), n in answered.items():
            self.stats.answered_total += n
            self._count(model, version, "ok", n)

    def expired(self, model: str, version: str = "") -> None:
        """A request was dropped unanswered: its deadline had passed."""
        self.stats.expired_total += 1
        self._count(model, version, "expired")

    def error(self, model: str, version: str = "") -> None:
        """A request was answered with an error."""
        self.stats.errors_total += 1
        self._count(model, version, "error")

    def dead_lettered(self, requests: int = 0) -> None:
        """A message went to the dead-letter queue, with ``requests`` of its
        requests counted as failed besides those answered with an error."""
        self.metrics.dead_lettered.inc()
        self.stats.errors_total += requests

    def batch(self, b: BatchStats) -> None:
        """A pipeline ran a batch."""
        self.stats.record_batch(b.rows, b.inference_s, b.queue_wait_s)
        key = (b.model, b.version)
        children = self._batch.get(key)
        if children is None:
            m = self.metrics
            children = self._batch[key] = (
                m.batch_size.labels(*key),
                m.inference.labels(*key),
                m.queue_wait.labels(*key),
                self.stages.histogram("batch_wait", b.model),
                self.stages.histogram("inference", b.model),
            )
        batch_size, inference, queue_wait, batch_wait, inference_stage = children
        batch_size.observe(b.rows)
        inference.observe(b.inference_s)
        for w in b.queue_wait_s:
            queue_wait.observe(w)
            batch_wait.observe(w)
        inference_stage.observe(b.inference_s, len(b.queue_wait_s))

    def replied(self, model: str, seconds: float, requests: int) -> None:
        """``requests`` replies of ``model`` were published ``seconds`` after
        their batch's run ended."""
        self.stats.record_reply(seconds)
        self.stages.histogram("reply", model).observe(seconds, requests)


__all__ = ["Ledger"]
