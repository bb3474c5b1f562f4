"""The codec benchmark's steps run against this build's API."""

from __future__ import annotations

import pytest

from benchmarks.codec import _cases

pytestmark = pytest.mark.unit


def test_every_step_runs_and_the_round_trip_answers_each_request() -> None:
    steps = _cases(rows=3)
    assert len(steps) == 8
    results = {name: step() for name, step in steps.items()}
    decoded = results["client: decode replies"].items
    assert [r.id for r in decoded] == [f"{i:032x}" for i in range(3)]
    arrays = results["client: outputs as numpy"]
    assert [a["label"].tolist() for a in arrays] == [[0], [1], [2]]
    assert all(a["probabilities"].shape == (1, 10) for a in arrays)
