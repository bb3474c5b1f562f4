from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fleet.stages import BUCKETS, Histogram, StageHistograms

pytestmark = pytest.mark.unit


def test_quantiles_interpolate_within_their_bucket() -> None:
    h = Histogram((0.001, 0.002, 0.004))
    for v in (0.0005, 0.0015, 0.0015, 0.003):
        h.observe(v)
    assert h.count == 4 and h.sum == pytest.approx(0.0065)
    assert h.quantile(0.25) == pytest.approx(0.001)  # the first bucket's top
    assert h.quantile(0.5) == pytest.approx(0.0015)  # half-way through the second
    assert h.quantile(1.0) == pytest.approx(0.004)
    assert Histogram().quantile(0.5) == 0.0


def test_past_the_last_bound_is_the_last_bound_and_reset_empties() -> None:
    h = Histogram()
    h.observe(60.0, times=3)
    assert h.count == 3 and h.quantile(0.99) == BUCKETS[-1]
    h.reset()
    assert h.count == 0 and h.quantile(0.5) == 0.0


def test_stage_histograms_are_a_prometheus_collector() -> None:
    stages = StageHistograms("fleet_test_stage_seconds", "test", labels=("model",))
    stages.observe("decode", 0.0002, "m")
    stages.histogram("decode", "m").observe(0.02)
    registry = CollectorRegistry()
    registry.register(stages)
    text = generate_latest(registry).decode()
    assert 'fleet_test_stage_seconds_count{model="m",stage="decode"} 2.0' in text
    assert 'fleet_test_stage_seconds_bucket{le="0.00025",model="m",stage="decode"} 1.0' in text
    assert 'fleet_test_stage_seconds_bucket{le="+Inf",model="m",stage="decode"} 2.0' in text
