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
