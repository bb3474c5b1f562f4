"""The latency benchmark's load generator, run alone (its "null" mode): the
seeded Poisson arrivals it starts, and the shape of what it reports, which
the benchmark takes out of the fleet's CPU per request."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.arrivals import offsets
from benchmarks.latency import ROOT, _client

pytestmark = pytest.mark.unit


def test_the_generator_alone_starts_every_seeded_arrival_and_reports_its_cpu() -> None:
    result = _client(
        ROOT,
        broker="unused://",
        model="m",
        width=4,
        seed=3,
        mode="null",
        stages=5,
        rate=400,
        duration=0.5,
    )
    rng = np.random.default_rng(3)
    rng.standard_normal((256, 4))  # the request pool, drawn first
    assert len(result["lat"]) == len(list(offsets(rng, 400, 0.5)))
    assert {len(row) for row in result["stages"]} == {5}
    assert result["cpu_s"] > 0
