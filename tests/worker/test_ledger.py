"""The worker's ledger: what its metrics and heartbeat totals say of settled batches."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from worker.ledger import Ledger
from worker.metrics import WorkerMetrics
from worker.pipeline import Outcome
from worker.stats import WindowStats

pytestmark = pytest.mark.unit


def _outcome(model: str, version: str, *, ok: bool | None) -> Outcome:
    """An outcome: answered (``ok``), answered with an error (``not ok``) or expired (None)."""
    request = SimpleNamespace(model=model, version=version)
    reply = None if ok is None else SimpleNamespace(ok=ok, version=version)
    item: Any = SimpleNamespace(request=request)
    return Outcome(item, reply)  # type: ignore[arg-type]


def _sample(text: str, line_start: str) -> float:
    return float(next(x for x in text.splitlines() if x.startswith(line_start)).split()[-1])


def test_in_flight_is_read_when_scraped_and_a_batch_counts_every_outcome() -> None:
    ledger = Ledger(WorkerMetrics(), WindowStats())
    for _ in range(5):
        ledger.submitted()
    assert _sample(ledger.metrics.render().decode(), "fleet_worker_in_flight ") == 5.0
    batch = [
        _outcome("a", "1", ok=True),
        _outcome("a", "1", ok=True),
        _outcome("a", "2", ok=True),
        _outcome("a", "1", ok=False),
    ]
    ledger.finished(batch)
    text = ledger.metrics.render().decode()
    assert _sample(text, "fleet_worker_in_flight ") == 1.0
    ok = 'fleet_worker_requests_total{model="a",outcome="ok",'
    assert _sample(text, ok + 'version="1"}') == 2.0
    assert _sample(text, ok + 'version="2"}') == 1.0
    assert _sample(text, 'fleet_worker_requests_total{model="a",outcome="error",') == 1.0
    ledger.finished([_outcome("a", "1", ok=None)])
    text = ledger.metrics.render().decode()
    assert _sample(text, "fleet_worker_in_flight ") == 0.0
    assert _sample(text, 'fleet_worker_requests_total{model="a",outcome="expired",') == 1.0
    stats = ledger.stats
    assert (stats.answered_total, stats.errors_total, stats.expired_total) == (3, 1, 1)


def test_a_batch_is_exposed_as_prometheus_clients_own_histograms_would_expose_it() -> None:
    """The batch metrics are fleet's lock-free families; what a scrape reads
    is what prometheus_client's ``Histogram`` gives for the same observations
    (less its ``_created`` samples)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from worker.metrics import _BATCH_BUCKETS, _TIME_BUCKETS
    from worker.pipeline import BatchStats

    ledger = Ledger(WorkerMetrics(), WindowStats())
    batches = [(3, 0.002, [0.001, 0.0007, 0.03]), (1, 0.0004, [0.2])]
    for rows, inference, waits in batches:
        ledger.batch(BatchStats("a", rows, inference, waits, version="1"))
    registry = CollectorRegistry()
    theirs = {
        name: Histogram(name, doc, ["model", "version"], buckets=buckets, registry=registry)
        for name, doc, buckets in (
            ("fleet_worker_batch_size", "Rows per batch", _BATCH_BUCKETS),
            ("fleet_worker_inference_seconds", "Model run per batch", _TIME_BUCKETS),
            (
                "fleet_worker_queue_wait_seconds",
                "From the client's publish to the start of inference",
                _TIME_BUCKETS,
            ),
        )
    }
    for rows, inference, waits in batches:
        theirs["fleet_worker_batch_size"].labels("a", "1").observe(rows)
        theirs["fleet_worker_inference_seconds"].labels("a", "1").observe(inference)
        for w in waits:
            theirs["fleet_worker_queue_wait_seconds"].labels("a", "1").observe(w)

    def lines(text: str, name: str) -> list[str]:
        return [x for x in text.splitlines() if name in x and "_created" not in x]

    ours_text = ledger.metrics.render().decode()
    theirs_text = generate_latest(registry).decode()
    for name in theirs:
        assert lines(ours_text, name) == lines(theirs_text, name), name
    assert _sample(ours_text, 'fleet_worker_batch_size_bucket{le="4.0",model="a",version="1"}') == 2
