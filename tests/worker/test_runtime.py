"""The runtime interface: the registry, a model naming its runtime, and a runtime
that is not ONNX Runtime served end to end by a worker."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from fleet.errors import ConfigError, InvalidArgument
from fleet.tensor import Tensor
from fleet.transport.memory import MemoryBroker
from producer import Client
from tests.helpers import running_worker
from tests.worker.fakes import DoublingRuntime, doubling_repo, loaded
from worker.config import ModelConfig
from worker.onnx_runtime import SPEC as ONNX_SPEC
from worker.repository import ModelRepository
from worker.runtime import RUNTIMES, RuntimeSpec, load_runtime
from worker.tuning import SERVING_SWITCH_INTERVAL, tune_process_for_serving


@pytest.mark.unit
def test_onnxruntime_is_registered_by_its_entry_point() -> None:
    assert "onnxruntime" in RUNTIMES.names()
    assert RUNTIMES.get("onnxruntime") is ONNX_SPEC
    assert ModelConfig().runtime == ONNX_SPEC.name


@pytest.mark.unit
def test_a_model_is_loaded_by_the_runtime_it_names(tmp_path: Path, doubling: RuntimeSpec) -> None:
    root = doubling_repo(tmp_path, "twice", 'runtime = "doubling"\n')
    runtime = load_runtime(ModelRepository(root).get("twice"))
    assert isinstance(runtime, DoublingRuntime) and loaded == [runtime]
    feeds, rows = runtime.validate([Tensor.from_numpy("x", np.ones((3, 2), np.float32))])
    assert rows == 3
    np.testing.assert_array_equal(runtime.run(feeds)["y"], np.full((3, 2), 2.0))


@pytest.mark.unit
def test_an_unknown_runtime_names_the_file_and_the_known_ones(tmp_path: Path) -> None:
    root = doubling_repo(tmp_path, "twice", 'runtime = "doubling"\n')
    spec = ModelRepository(root).get("twice")
    config = tmp_path / "twice" / "1" / "config.toml"
    with pytest.raises(ConfigError) as info:
        load_runtime(spec)
    assert info.value.message.startswith(f"{config}: runtime: unknown model runtime 'doubling'")
    assert "known: onnxruntime" in info.value.message


@pytest.mark.memory
async def test_a_worker_serves_a_registered_runtime(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str
) -> None:
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\nmax_batch_size = 4\n')
    name = f"rt-{uuid.uuid4().hex[:8]}"
    url = f"memory://{name}"
    try:
        async with running_worker(url, root) as worker, Client(url, timeout=10) as client:
            x = np.arange(6, dtype=np.float32).reshape(3, 2)
            out = await client.infer(unique_model, {"x": x})
            with pytest.raises(InvalidArgument, match="one FP32 input 'x'"):
                await client.infer(unique_model, {"z": x})
            beat = worker.heartbeat()
    finally:
        MemoryBroker.reset(name)
    np.testing.assert_array_equal(out["y"], 2 * x)
    (runtime,) = loaded
    assert runtime.warmed and runtime.batches == [3]
    assert worker.runtimes == {unique_model: {"1": runtime}}
    assert beat.provider == "DoublingProvider" and beat.models == [unique_model]
    assert worker.stats.answered_total == 1 and worker.stats.errors_total == 1


@pytest.mark.memory
async def test_starting_a_worker_leaves_the_switch_interval_alone(
    tmp_path: Path, doubling: RuntimeSpec, unique_model: str
) -> None:
    root = doubling_repo(tmp_path, unique_model, 'runtime = "doubling"\n')
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)  # not the default, not what serving tunes it to
    chosen = sys.getswitchinterval()  # as the interpreter stores it (whole microseconds)
    try:
        async with running_worker(f"memory://{unique_model}", root):
            assert sys.getswitchinterval() == chosen
        assert sys.getswitchinterval() == chosen
    finally:
        sys.setswitchinterval(before)
        MemoryBroker.reset(unique_model)


@pytest.mark.unit
def test_tuning_a_serving_process_shortens_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        tune_process_for_serving()
        # the interpreter keeps whole microseconds
        assert sys.getswitchinterval() == pytest.approx(SERVING_SWITCH_INTERVAL, abs=2e-6)
        sys.setswitchinterval(0.0001)
        shorter = sys.getswitchinterval()
        tune_process_for_serving()  # a shorter one already set is kept
        assert sys.getswitchinterval() == shorter
    finally:
        sys.setswitchinterval(before)
