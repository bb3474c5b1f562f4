"""``fleet recommend`` against a real worker on the memory transport."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.simulator.profile import ServiceProfile
from fleetctl.recommend import RampSettings, capacity_bounds, recommend, write_outputs

pytestmark = pytest.mark.memory


def test_capacity_bounds() -> None:
    assert capacity_bounds(100.0, min_rps=150, peak_rps=1000, growth_factor=1.5) == (2, 15)
    assert capacity_bounds(100.0, min_rps=0, peak_rps=10, growth_factor=1.0) == (0, 1)


async def test_recommend_against_a_worker(
    tmp_path: Path, model_repo: Path, unique_model: str
) -> None:
    from autoscaler.config import load_config
    from fleet.transport.memory import MemoryBroker
    from worker.service import Worker, WorkerSettings

    name = f"rec-{unique_model}"
    url = f"memory://{name}"
    model = f"{unique_model}-mlp"
    worker = Worker(WorkerSettings(broker=url, models=model_repo, worker_id="w1", http_port=None))
    await worker.start()
    try:
        rec = await recommend(
            RampSettings(
                broker=url,
                model=model,
                features=256,
                start_rps=50.0,
                growth=2.0,
                step_s=1.0,
                settle_s=2.0,
                max_rps=100_000.0,
            )
        )
    finally:
        await worker.stop()
        MemoryBroker.reset(name)

    assert len(rec.steps) >= 2
    assert rec.sustainable_rps > 0
    last = rec.steps[-1]
    saturated = (
        last.p99_ms > rec.objective_ms
        or last.error_share > 0.01
        or last.throughput_rps < 1.05 * rec.steps[-2].throughput_rps
    )
    assert saturated, rec.summary()
    assert rec.profile.batch_ms, "the worker's reply timings give the profile"

    paths = write_outputs(rec, tmp_path, broker=url, min_rps=10, peak_rps=2000, growth_factor=1.5)
    assert {p.name for p in paths} == {"profile.json", "autoscaler.toml", "recommend.png"}
    profile = ServiceProfile.load(tmp_path / "profile.json")
    assert profile.sustainable_rps == pytest.approx(rec.sustainable_rps, rel=1e-3)
    cfg = load_config(tmp_path / "autoscaler.toml")
    assert cfg.models == [model]
    assert cfg.policy.kind == "default"
    low, high = capacity_bounds(
        round(rec.sustainable_rps, 2), min_rps=10, peak_rps=2000, growth_factor=1.5
    )
    assert cfg.policy.params["min_capacity"] == low
    assert cfg.policy.params["max_capacity"] == high
