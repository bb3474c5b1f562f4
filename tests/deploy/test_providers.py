"""The execution provider a deployed worker uses when its model's config.toml
names none: the best this device offers (CUDA where the process sees an NVIDIA
GPU, the CPU otherwise; TensorRT only when listed), and on a GPU host a build
that cannot use the GPU is refused unless allow_cpu_fallback says otherwise.

The GPU is faked with device files under a temporary directory; on a real GPU
host `gpu_present()` reads /dev and /proc/driver/nvidia.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from fleet.errors import ConfigError
from tests.worker.models import linear_model, spec_for
from worker import config as worker_config
from worker.config import ModelConfig, default_providers, gpu_present
from worker.onnx_runtime import OnnxRuntime

pytestmark = pytest.mark.deploy

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
CUDA_FIRST = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _host(tmp_path: Path, *, devices: list[str], gpus: list[str]) -> tuple[Path, Path]:
    dev, driver = tmp_path / "dev", tmp_path / "gpus"
    dev.mkdir()
    driver.mkdir()
    for name in devices:
        (dev / name).touch()
    for name in gpus:
        (driver / name).mkdir()
    return dev, driver


@pytest.mark.parametrize(
    ("devices", "gpus", "env", "present"),
    [
        pytest.param(["nvidia0", "nvidiactl"], ["0000:00:1e.0"], {}, True, id="g5"),
        pytest.param(["nvidia3"], [], {}, True, id="device-node-only"),
        pytest.param([], ["0000:00:1e.0"], {}, True, id="driver-list-only"),
        pytest.param(["nvidiactl", "nvidia-uvm"], [], {}, False, id="driver-without-gpu"),
        pytest.param([], [], {}, False, id="cpu-host"),
        pytest.param(["nvidia0"], ["x"], {"CUDA_VISIBLE_DEVICES": ""}, False, id="all-hidden"),
        pytest.param(["nvidia0"], ["x"], {"CUDA_VISIBLE_DEVICES": "-1"}, False, id="hidden-by-1"),
        pytest.param(["nvidia0"], ["x"], {"CUDA_VISIBLE_DEVICES": "0"}, True, id="first-visible"),
    ],
)
def test_gpu_present(
    tmp_path: Path, devices: list[str], gpus: list[str], env: dict[str, str], present: bool
) -> None:
    dev, driver = _host(tmp_path, devices=devices, gpus=gpus)
    assert gpu_present(dev=dev, driver=driver, env=env) is present


def test_gpu_present_without_a_driver_directory(tmp_path: Path) -> None:
    assert gpu_present(dev=tmp_path, driver=tmp_path / "missing", env={}) is False


def test_default_is_cuda_on_a_gpu_host_and_cpu_elsewhere() -> None:
    assert default_providers(gpu=True) == CUDA_FIRST
    assert default_providers(gpu=False) == ("CPUExecutionProvider",)
    # TensorRT is never a default: it is used only where it is configured.
    assert all("Tensorrt" not in p for gpu in (True, False) for p in default_providers(gpu=gpu))


def test_config_without_providers_takes_the_gpu_on_a_gpu_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_config, "gpu_present", lambda: True)
    config = ModelConfig()
    assert config.providers == CUDA_FIRST
    assert config.on_gpu
    # The CPU on a GPU host is a mistake (the CPU image on a g5): refused by default.
    assert config.allow_cpu_fallback is False
    assert config.pad_to_bucket is True
    explicit = ModelConfig.from_mapping({"providers": ["CPUExecutionProvider"]})
    assert explicit.providers == ("CPUExecutionProvider",)


def test_config_without_providers_on_a_cpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_config, "gpu_present", lambda: False)
    config = ModelConfig()
    assert config.providers == ("CPUExecutionProvider",)
    assert config.allow_cpu_fallback is True and not config.on_gpu


def test_another_runtime_gets_no_gpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_config, "gpu_present", lambda: True)
    config = ModelConfig.from_mapping({"runtime": "python"})
    assert config.providers == ("CPUExecutionProvider",) and config.pad_to_bucket is False


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_a_cpu_build_on_a_gpu_host_is_refused_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_config, "gpu_present", lambda: True)
    spec = spec_for(linear_model(), tmp_path)
    with pytest.raises(ConfigError, match="requested CUDAExecutionProvider") as info:
        OnnxRuntime.load(spec)
    assert "allow_cpu_fallback" in info.value.message
    allowed = spec_for(linear_model(), tmp_path, name="allowed", allow_cpu_fallback=True)
    assert OnnxRuntime.load(allowed).provider == "CPUExecutionProvider"


def test_the_provider_in_use_is_reported_on_this_host(tmp_path: Path) -> None:
    # The default on this machine, loaded for real: the session runs on the
    # provider the default asked for first and the runtime reports it, or, a
    # GPU host with a build that cannot use it, loading is refused.
    spec = spec_for(linear_model(), tmp_path)
    wanted = default_providers()[0]
    if wanted not in ort.get_available_providers():
        with pytest.raises(ConfigError, match=f"requested {wanted}"):
            OnnxRuntime.load(spec)
        return
    assert OnnxRuntime.load(spec).provider == wanted
