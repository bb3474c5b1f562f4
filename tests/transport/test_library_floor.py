"""The library-floor benchmark's echo answers every call it makes, on each real broker."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import library_floor
from tests.conftest import BROKERS, broker_url_for


def _arrivals(rate: float, seconds: float, seed: int) -> int:
    """How many calls the seeded open loop makes: the same draws as the benchmark's."""
    rng, at, n = np.random.default_rng(seed), 0.0, 0
    while at < seconds:
        n += 1
        at += rng.exponential(1.0 / rate)
    return n


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=BROKERS[k].mark) for k in ("amqp", "kafka")]
)
def test_the_echo_answers_every_call_and_reports_both_processes_cpu(kind: str) -> None:
    url = broker_url_for(kind)
    runs = library_floor.measure(kind, url, [40], 1.0, 128)
    run = runs[40]
    assert run["failed"] == 0
    assert len(run["lat"]) == _arrivals(40, 1.0, 0) > 0
    assert all(x > 0 for x in run["lat"])
    assert run["cpu_s"] > 0 and run["worker_cpu_s"] >= 0
    assert run["inference_s"] == 0.0 and run["stages"] == []
