"""Jobs count in the autoscaler's signals: with nothing to do the worker group
goes to zero, and a submitted job brings a worker back, which runs it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from autoscaler.actuators.local import LocalActuator
from autoscaler.config import parse_config
from autoscaler.loop import Autoscaler, from_config
from fleet.jobs import JobState
from producer import Client
from tests.autoscaler.test_e2e_scaling import Recorder, _until, e2e_config
from tests.conftest import BROKERS, broker_url_for
from tests.helpers import assert_digits_answers, direct_onnx
from tests.jobs.conftest import redis_url

pytestmark = pytest.mark.jobs


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=BROKERS[k].mark) for k in ("amqp", "kafka")]
)
async def test_jobs_bring_a_group_at_zero_back(
    kind: str, model_repo: Path, unique_model: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    broker, results, model = broker_url_for(kind), redis_url(), f"{unique_model}-digits"
    raw = e2e_config(broker, model, model_repo, tmp_path / "workers")
    raw["policy"] |= {"min_capacity": 0, "scale_to_zero": True, "idle_to_zero_s": 2.0}
    raw["actuator"]["env"] = {"FLEET_RESULTS": results}  # the store, never on argv
    scaler: Autoscaler = await from_config(parse_config(raw))
    rec = Recorder()
    scaler.on_decision = rec
    act = scaler.actuator
    assert isinstance(act, LocalActuator)
    stop = asyncio.Event()
    await scaler.start()
    loop_task = asyncio.create_task(scaler.run(stop))
    try:

        def at_zero() -> bool:  # decided by the loop (not the actuator's state at start)
            polls = rec.polls
            return bool(polls) and polls[-1][2].desired == 0 and not act.workers

        await _until(at_zero, 60, "zero", rec)
        zero_at = time.monotonic()
        x = np.random.default_rng(8).random((20, 64), dtype=np.float32)
        async with Client(broker, results=results) as client:
            assert client.jobs is not None
            submitted = time.monotonic()
            ids = [await client.submit(model, {"input": x[i : i + 1]}) for i in range(20)]
            replies = await asyncio.gather(*(client.jobs.reply(j, timeout=90) for j in ids))
            answered = time.monotonic() - submitted
            states = {(await client.jobs.status(j)).state for j in ids}
        assert states == {JobState.DONE}
        got = [r.arrays() for r in replies]
        assert_digits_answers(
            np.concatenate([g["label"] for g in got]),
            np.concatenate([g["probabilities"] for g in got]),
            direct_onnx(model_repo / model, {"input": x}),
        )
        back = rec.first(lambda s, d: d.desired >= 1, zero_at)
        assert back is not None and "scale from zero" in " ".join(back[2].reasons), back
        await _until(lambda: act.status()["desired"] == 0, 60, "back to zero", rec)
        print(f"{kind}: 20 jobs submitted at zero workers, all done {answered:.1f} s later")
    finally:
        stop.set()
        await asyncio.wait_for(loop_task, 10)
        await scaler.close()
