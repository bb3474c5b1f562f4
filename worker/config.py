"""A model version's serving settings, read from ``<root>/<model>/<version>/config.toml``.

Every field is optional::

    runtime = "onnxruntime"      # the model runtime that loads the model (see worker.runtime)
    max_batch_size = 32          # rows per model run
    max_wait_ms = 0.0            # how long a free model waits to fill a batch (0: not at all)
    inline_below_ms = 1.0        # a batch known to run faster runs on the event loop (0: never)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]   # default: see below
    allow_cpu_fallback = false   # may the session run on CPU when a GPU was asked for?
    intra_op_threads = 0         # 0: the CPUs this process may use (affinity, quota), less one
    inter_op_threads = 1
    allow_spinning = false       # ORT pool threads busy-wait for work when true
    buckets = [1, 2, 4, 8, 16, 32]   # batch sizes warmed up (and padded to)
    pad_to_bucket = true         # pad each batch up to the next bucket
    trt_cache_dir = "/var/cache/fleet/trt"

Defaults that depend on other fields are filled in when the file is read, so a
loaded :class:`ModelConfig` holds the values the runtime will use. Without
``providers`` an ONNX Runtime model gets the best this device offers
(:func:`default_providers`): CUDA, then the CPU, where the process sees an
NVIDIA GPU; the CPU otherwise. TensorRT is used only where it is listed. On a
GPU host the CPU is then a fallback that is refused unless
``allow_cpu_fallback = true`` (a CPU-only build on a GPU instance is a mistake). The
fields after ``max_wait_ms`` are ONNX Runtime's; another runtime ignores them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleet.config_file import bad_fields, error_lines, read_toml

CONFIG_FILE = "config.toml"

#: Execution providers that run on an accelerator rather than on the host CPU.
GPU_PROVIDERS = frozenset(
    {
        "TensorrtExecutionProvider",
        "NvTensorRTRTXExecutionProvider",
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)

CPU_ONLY = ("CPUExecutionProvider",)
CUDA_FIRST = ("CUDAExecutionProvider", "CPUExecutionProvider")
_NVIDIA_DEVICE = re.compile(r"nvidia[0-9]+")
_HIDDEN = frozenset({"", "-1", "none", "NoDevFiles"})

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_CPU_CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CPU_CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(cpu_max: Path = CPU_MAX) -> int | None:
    """The CPU quota of this process's cgroup, rounded up; None when unlimited or unknown.

    Reads cgroup v2's ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) and
    falls back to cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    """
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        fields = []
        if cpu_max == CPU_MAX:
            try:
                fields = [_CPU_CFS_QUOTA.read_text().strip(), _CPU_CFS_PERIOD.read_text().strip()]
            except OSError:
                return None
    if len(fields) != 2 or fields[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def available_cpus(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup quota.

    ONNX Runtime's own default is the host's core count, which oversubscribes a
    container limited to a few CPUs.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_max)
    return max(1, min(cpus, limit) if limit is not None else cpus)


def gpu_present(
    *,
    dev: Path = Path("/dev"),
    driver: Path = Path("/proc/driver/nvidia/gpus"),
    env: Mapping[str, str] | None = None,
) -> bool:
    """Whether this process sees an NVIDIA GPU: a device node ``/dev/nvidiaN`` or
    an entry in the driver's GPU list, unless ``CUDA_VISIBLE_DEVICES`` hides them all.

    Files only, no driver library: a container started without ``--gpus`` has
    neither, one started with it has both.
    """
    visible = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in _HIDDEN:
        return False
    try:
        if any(_NVIDIA_DEVICE.fullmatch(p.name) for p in dev.iterdir()):
            return True
    except OSError:
        pass
    try:
        return any(driver.iterdir())
    except OSError:
        return False


def default_providers(*, gpu: bool | None = None) -> tuple[str, ...]:
    """The providers a model without ``providers`` asks for: CUDA first where
    there is a GPU (``gpu``, else :func:`gpu_present`), the CPU alone otherwise."""
    return CUDA_FIRST if (gpu_present() if gpu is None else gpu) else CPU_ONLY


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes: list[int] = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


def default_trt_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleet" / "trt"


def trt_cache_path(
    root: Path | None,
    *,
    model: str,
    version: str,
    file_sha256: str,
    ort_version: str,
    gpu_name: str | None,
) -> Path:
    """Where TensorRT engines for one model file, runtime and GPU are cached.

    An engine is only valid for the exact model bytes, the ONNX Runtime (and so
    TensorRT) version that built it and the GPU model it was built on; each of
    them is part of the path so that a change never reuses a stale engine.
    """
    gpu = _slug(gpu_name) if gpu_name else "no-gpu"
    key = f"{file_sha256[:16]}-ort{_slug(ort_version)}-{gpu}"
    return (root or default_trt_cache_root()) / model / version / key


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "unknown"


class ModelConfig(BaseModel):
    """Serving settings of one model version; see the module docstring for the file format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = Field(default="onnxruntime", min_length=1)
    max_batch_size: int = Field(default=32, ge=1, le=65536)
    # A batch is taken whenever a model slot is free: what arrived while the
    # model ran forms the next batch. A free model waits up to this long for a
    # full batch first; 0 runs it at once, the lowest latency at any load.
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    # A model runs in a thread so that the worker receives and replies while
    # it computes; a batch it is known (from the runs of its size) to finish
    # in less than this runs on the event loop instead, saving the hand-over
    # to the thread and back, which costs more than such a run. 0: always a thread.
    inline_below_ms: float = Field(default=1.0, ge=0.0, le=1_000.0)
    providers: tuple[str, ...] = Field(default=CPU_ONLY, min_length=1)
    allow_cpu_fallback: bool = False
    intra_op_threads: int = Field(default=0, ge=0, le=1024, validate_default=True)
    inter_op_threads: int = Field(default=1, ge=1, le=1024)
    # ONNX Runtime's pool threads busy-wait for work by default; on a worker
    # that shares its CPUs with the event loop (and often the broker) that
    # spinning steals the time decoding and replying need.
    allow_spinning: bool = False
    buckets: tuple[int, ...] = ()
    pad_to_bucket: bool = False
    trt_cache_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_dependent_defaults(cls, data: Any) -> Any:
        """Defaults that depend on the provider list and the batch size."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "providers" not in data and data.get("runtime", "onnxruntime") == "onnxruntime":
            data["providers"] = default_providers()
        providers = data.get("providers", CPU_ONLY)
        first = providers[0] if isinstance(providers, list | tuple) and providers else None
        on_gpu = isinstance(first, str) and first in GPU_PROVIDERS
        data.setdefault("allow_cpu_fallback", not on_gpu)
        data.setdefault("pad_to_bucket", on_gpu)
        max_batch = data.get("max_batch_size", 32)
        if "buckets" not in data and type(max_batch) is int and max_batch >= 1:
            data["buckets"] = default_buckets(max_batch)
        return data

    @field_validator("providers")
    @classmethod
    def _unique_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"providers are listed twice: {list(value)}")
        if any(not name for name in value):
            raise ValueError("provider names must not be empty")
        return value

    @field_validator("intra_op_threads")
    @classmethod
    def _resolve_threads(cls, value: int) -> int:
        """0: a thread per CPU the process may use but one, left to the event
        loop that receives and replies meanwhile (and often to the broker)."""
        return value or max(1, available_cpus() - 1)

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        max_batch = info.data.get("max_batch_size")
        if max_batch is None:  # max_batch_size itself is invalid and reported
            return value
        if not value:
            raise ValueError("at least one batch size is needed")
        bad = [b for b in value if b < 1 or b > max_batch]
        if bad:
            raise ValueError(
                f"batch sizes must be between 1 and max_batch_size ({max_batch}), got {bad}"
            )
        return tuple(sorted({*value, max_batch}))

    @property
    def on_gpu(self) -> bool:
        """Whether the first (preferred) provider runs on an accelerator."""
        return self.providers[0] in GPU_PROVIDERS

    @classmethod
    def from_toml(cls, path: Path) -> ModelConfig:
        """Read ``config.toml``; a missing file means every default."""
        if not path.exists():
            return cls()
        return cls.from_mapping(read_toml(path), source=str(path))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], *, source: str = "model config") -> ModelConfig:
        """Validate ``data``; a :class:`~fleet.errors.ConfigError` lists every bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise bad_fields(source, _explain(exc)) from None


def _explain(exc: ValidationError) -> list[str]:
    """``location: reason`` per bad field; an unknown field also lists the known ones."""
    known = ", ".join(ModelConfig.model_fields)
    return [
        f"{line} (known fields: {known})" if line.endswith(": unknown field") else line
        for line in error_lines(exc)
    ]


__all__ = [
    "CONFIG_FILE",
    "GPU_PROVIDERS",
    "ModelConfig",
    "available_cpus",
    "cgroup_cpu_limit",
    "default_buckets",
    "trt_cache_path",
]
