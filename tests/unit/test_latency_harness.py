"""The latency benchmark's load generator, run alone (its "null" mode): the
seeded Poisson arrivals it starts, and the shape of what it reports, which
the benchmark takes out of the fleet's CPU per request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.arrivals import offsets
from benchmarks.latency import CLIENT

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_generator_alone_starts_every_seeded_arrival_and_reports_its_cpu() -> None:
    args = {"model": "m", "width": 4, "seed": 3, "mode": "null", "stages": 5}
    args |= {"rate": 400, "duration": 0.5, "broker": "unused://"}
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(3)
    rng.standard_normal((256, 4))  # the request pool, drawn first
    assert len(result["lat"]) == len(list(offsets(rng, 400, 0.5)))
    assert {len(row) for row in result["stages"]} == {5}
    assert result["cpu_s"] > 0
