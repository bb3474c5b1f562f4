from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Iterator

import pytest

from worker import gpu

pytestmark = pytest.mark.unit


class _NVMLError(Exception):
    pass


def _fake_nvml(*, fail_init: bool = False) -> types.ModuleType:
    calls = {"init": 0}
    module = types.ModuleType("pynvml")
    module.__spec__ = importlib.machinery.ModuleSpec("pynvml", None)  # installed, as it were

    def init() -> None:
        calls["init"] += 1
        if fail_init:
            raise _NVMLError("NVML Shared Library Not Found")

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByUUID = lambda uuid: uuid  # type: ignore[attr-defined]
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(gpu=37, memory=5)  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    gpu.reset()
    yield
    gpu.reset()


def test_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert gpu.gpu_utilization() is None
    assert gpu.device_name() is None


def test_with_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.gpu_utilization() == pytest.approx(0.37)
    assert gpu.device_name() == "NVIDIA H100 80GB HBM3"
    assert gpu.gpu_utilization() == pytest.approx(0.37)
    assert fake.calls["init"] == 1  # the handle is cached


def test_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(fail_init=True))
    assert gpu.gpu_utilization() is None
    assert gpu.device_name() is None


def test_visible_device_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234,GPU-5678")
    assert gpu._handle() is not None
    assert gpu._handle()[1] == "GPU-1234"  # type: ignore[index]
