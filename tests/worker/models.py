"""Tiny ONNX models built with onnx.helper for the runtime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from worker.config import ModelConfig
from worker.repository import ModelSpec

WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def linear_model(*, batch: int | str = "n", second_input: bool = True) -> onnx.ModelProto:
    """``x`` FP32 [batch, 4] -> ``y`` = x @ W FP32 [batch, 3]; optional ``ids`` INT64 [batch, 2]
    passed through as ``ids_out``."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 2]))
        outputs.append(helper.make_tensor_value_info("ids_out", TensorProto.INT64, [batch, 2]))
        nodes.append(helper.make_node("Identity", ["ids"], ["ids_out"]))
    graph = helper.make_graph(
        nodes, "linear", inputs, outputs, [numpy_helper.from_array(WEIGHTS, "w")]
    )
    return _finish(graph)


def row_collapsing_model() -> onnx.ModelProto:
    """An output whose dim 0 is not the batch: ReduceSum over the rows."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "collapse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "axes")],
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def spec_for(
    model: onnx.ModelProto, root: Path, *, name: str = "tiny", **config: object
) -> ModelSpec:
    """Write ``model`` to ``root/name/1/model.onnx`` and describe it."""
    version_dir = root / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    onnx.save(model, str(path))
    return ModelSpec(
        name=name, version="1", path=path, config=ModelConfig.from_mapping(dict(config))
    )
