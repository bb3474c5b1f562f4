"""GPU utilization and name through NVML, for heartbeats and the TensorRT cache key.

``pynvml`` (the ``nvidia-ml-py`` package, the ``gpu`` extra) is imported on first
use when it is installed; without it (reported once in the log), or without an
NVIDIA GPU, every function returns None. The GPU is the first one
this process sees: the first entry of ``CUDA_VISIBLE_DEVICES`` (an index or a
UUID), else index 0.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

from fleet.logging import get_logger

log = get_logger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "nvml": module or None, "handle": device handle or None


def _first_visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()


def _handle() -> tuple[Any, Any] | None:
    """``(pynvml, handle)`` for the GPU, initialised once; None without one."""
    with _lock:
        if "handle" not in _state:
            _state["nvml"], _state["handle"] = _init()
        if _state["handle"] is None:
            return None
        return _state["nvml"], _state["handle"]


def _init() -> tuple[Any, Any]:
    if importlib.util.find_spec("pynvml") is None:
        log.info("no GPU metrics: pynvml is not installed (the gpu extra)")
        return None, None
    import pynvml

    try:
        pynvml.nvmlInit()
        first = _first_visible()
        if first.startswith(("GPU-", "MIG-")):
            handle = pynvml.nvmlDeviceGetHandleByUUID(first)
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)
    except Exception as exc:  # NVMLError: no driver, no device
        log.info("no GPU visible to NVML", reason=str(exc))
        return None, None
    return pynvml, handle


def gpu_utilization() -> float | None:
    """The GPU's busy fraction (0..1) over NVML's last sample period; None without a GPU."""
    found = _handle()
    if found is None:
        return None
    nvml, handle = found
    try:
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    except Exception as exc:  # NVMLError: the GPU fell off the bus, driver reloaded
        log.warning("NVML utilization query failed", error=str(exc))
        return None
    return float(rates.gpu) / 100.0


def device_name() -> str | None:
    """The GPU's product name, e.g. ``NVIDIA H100 80GB HBM3``; None without a GPU."""
    found = _handle()
    if found is None:
        return None
    nvml, handle = found
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except Exception as exc:  # NVMLError
        log.warning("NVML name query failed", error=str(exc))
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def reset() -> None:
    """Forget the cached handle (tests; after a driver reload)."""
    with _lock:
        _state.clear()


__all__ = ["device_name", "gpu_utilization", "reset"]
