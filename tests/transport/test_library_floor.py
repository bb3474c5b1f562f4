"""The library-floor benchmark's echo answers every call it makes, on each real broker,
and splits each round trip into its broker legs."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import library_floor
from benchmarks.arrivals import offsets
from tests.conftest import BROKERS, broker_url_for


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=BROKERS[k.split("-")[0]].mark)
        for k in ("amqp", "amqp-wire", "kafka", "kafka-wire")
    ],
)
def test_the_echo_answers_every_call(kind: str) -> None:
    url = broker_url_for(kind.split("-")[0])
    runs = library_floor.measure(kind, url, [40], 1.0, 128)
    run = runs[40]
    assert run["failed"] == 0
    calls = len(list(offsets(np.random.default_rng(0), 40, 1.0)))  # the benchmark's seed
    assert len(run["lat"]) == calls > 0
    assert all(x > 0 for x in run["lat"])
    # each round trip split into its two broker legs, on the host's one monotonic
    # clock: both legs happen within the round trip, so neither is negative
    # and together they are no longer than it (the server's own time, at
    # least microseconds, lies between them: the 1 us allowed is rounding's)
    legs = list(zip(run["request_leg"], run["reply_leg"], strict=True))
    assert len(legs) == calls
    assert all(
        0 <= req and 0 <= rep and req + rep <= lat + 1e-6
        for (req, rep), lat in zip(legs, run["lat"], strict=True)
    )
    assert run["cpu_s"] > 0
    assert run["inference_s"] == 0.0 and run["stages"] == []
