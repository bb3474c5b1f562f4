"""``fleet jobs status|result|cancel`` read the result store only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fleet import wire
from fleet.contract import Reply
from fleet.jobs import new_job_id, open_store
from fleet.tensor import Tensor
from tests.conftest import ROOT
from tests.jobs.conftest import redis_url

pytestmark = pytest.mark.jobs


def fleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetctl", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_status_result_and_cancel_from_the_command_line(tmp_path: Path) -> None:
    url = redis_url()
    password, _, host = url.removeprefix("redis://:").partition("@")
    env = {**os.environ, "FLEET_RESULTS": f"redis://{host}", "FLEET_RESULTS_PASSWORD": password}
    done, open_job = new_job_id(), new_job_id()
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    frame = wire.encode_replies(
        [Reply(id=done, model="m", version="1", outputs=(Tensor.from_numpy("y", y),))]
    )
    async with open_store(url) as store:
        await store.create(done, model="m")
        await store.finish(done, ok=True, result=frame)
        await store.create(open_job, model="m")
    status = fleet("jobs", "status", done, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "done" and password not in status.stdout
    out = tmp_path / "y.npz"
    got = fleet("jobs", "result", done, "--out", str(out), env=env)
    assert got.returncode == 0 and "y: float32 [2, 3]" in got.stdout
    np.testing.assert_array_equal(np.load(out)["y"], y)
    late = fleet("jobs", "result", open_job, "--timeout", "0.2", env=env)
    assert late.returncode == 1 and "DeadlineExceeded" in late.stderr
    assert fleet("jobs", "cancel", open_job, env=env).returncode == 0
    assert fleet("jobs", "cancel", open_job, env=env).returncode == 1  # ended already
    gone = fleet("jobs", "result", new_job_id(), env=env)
    assert gone.returncode == 1 and "JobNotFound" in gone.stderr
