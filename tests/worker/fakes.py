"""A model runtime that is not ONNX Runtime, for serving tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fleet.errors import InvalidArgument
from fleet.tensor import DataType, Tensor
from worker.repository import ModelSpec
from worker.runtime import Array, Feeds, ModelRuntime, RuntimeSpec


class DoublingRuntime:
    """``y = 2 * x`` for ``x`` FP32 ``[n, 2]``, with no model file read at all."""

    provider = "DoublingProvider"
    max_batch_size = 4

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.warmed = False
        self.closed = False
        self.batches: list[int] = []

    def validate(self, inputs: Sequence[Tensor]) -> tuple[Feeds, int]:
        if [(t.name, t.datatype, len(t.shape)) for t in inputs] != [("x", DataType.FP32, 2)]:
            raise InvalidArgument("the doubling model takes one FP32 input 'x' of shape [n, 2]")
        x = inputs[0].to_numpy()
        if x.shape[1] != 2 or not 1 <= x.shape[0] <= self.max_batch_size:
            raise InvalidArgument(f"input 'x': shape {list(x.shape)} does not fit")
        return {"x": x}, x.shape[0]

    def run(self, feeds: Mapping[str, Array]) -> Feeds:
        self.batches.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    def warm_up(self) -> dict[int, float]:
        self.warmed = True
        return {}

    def close(self) -> None:
        self.closed = True


#: Every DoublingRuntime loaded, in order (the ``doubling`` fixture clears it).
loaded: list[DoublingRuntime] = []


def _load_doubling(spec: ModelSpec) -> ModelRuntime:
    runtime = DoublingRuntime(spec)
    loaded.append(runtime)
    return runtime


DOUBLING = RuntimeSpec(name="doubling", load=_load_doubling, description="doubles its input")


def doubling_repo(root: Path, model: str, config: str) -> Path:
    """A repository at ``root`` with version 1 of ``model``, configured by ``config``."""
    version = root / model / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"read by the runtime, which ignores it")
    (version / "config.toml").write_text(config)
    return root


class WideDoublingRuntime(DoublingRuntime):
    """``y = 2 * x`` for ``x`` FP32 ``[n, w]`` of any width ``w``; takes the
    parameter ``scale`` (ignored), to show how a runtime declares parameters."""

    accepts_parameters = frozenset({"scale"})

    def validate(self, inputs: Sequence[Tensor]) -> tuple[Feeds, int]:
        if [(t.name, t.datatype, len(t.shape)) for t in inputs] != [("x", DataType.FP32, 2)]:
            raise InvalidArgument("the wide doubling model takes one FP32 input 'x' [n, w]")
        x = inputs[0].to_numpy()
        if not 1 <= x.shape[0] <= self.max_batch_size:
            raise InvalidArgument(f"input 'x': shape {list(x.shape)} does not fit")
        return {"x": x}, x.shape[0]


def _load_wide(spec: ModelSpec) -> ModelRuntime:
    runtime = WideDoublingRuntime(spec)
    loaded.append(runtime)
    return runtime


WIDE_DOUBLING = RuntimeSpec(name="wide-doubling", load=_load_wide, description="any width")
