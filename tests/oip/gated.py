"""A model runtime that runs only when a test lets it, to hold work in the batcher."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np

from fleet.errors import InvalidArgument
from fleet.tensor import DataType, Tensor
from worker.repository import ModelSpec
from worker.runtime import Array, Feeds, ModelRuntime, RuntimeSpec


class GatedRuntime:
    """``y = 2 * x`` for ``x`` FP32 ``[n, 2]``; :meth:`run` waits for :attr:`gate`
    and records the inputs of every batch it ran."""

    provider = "GatedProvider"
    max_batch_size = 4

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.gate = threading.Event()
        self.started = threading.Event()  # a run is waiting at the gate or past it
        self.batches: list[Array] = []

    def validate(self, inputs: Sequence[Tensor]) -> tuple[Feeds, int]:
        if [(t.name, t.datatype, len(t.shape)) for t in inputs] != [("x", DataType.FP32, 2)]:
            raise InvalidArgument("the gated model takes one FP32 input 'x' of shape [n, 2]")
        x = inputs[0].to_numpy()
        if x.shape[1] != 2 or not 1 <= x.shape[0] <= self.max_batch_size:
            raise InvalidArgument(f"input 'x': shape {list(x.shape)} does not fit")
        return {"x": x}, x.shape[0]

    def run(self, feeds: Mapping[str, Array]) -> Feeds:
        self.started.set()
        if not self.gate.wait(60):
            raise RuntimeError("the gate was never opened")
        self.batches.append(np.array(feeds["x"]))
        return {"y": feeds["x"] * 2}

    def warm_up(self) -> dict[int, float]:
        return {}

    def close(self) -> None:
        self.gate.set()


#: Every GatedRuntime loaded, in order.
loaded: list[GatedRuntime] = []


def _load(spec: ModelSpec) -> ModelRuntime:
    runtime = GatedRuntime(spec)
    loaded.append(runtime)
    return runtime


GATED = RuntimeSpec(name="gated", load=_load, description="runs when a test opens its gate")
