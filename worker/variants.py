"""Precision variants of a model: INT8 (quantized) and FP16, behind an accuracy gate.

A variant is made from one version of a model in a local repository and written
as the next version of the same model (``<root>/<model>/<n+1>/``), with its
provenance in ``metadata.json`` (under ``variant``; ``config.toml`` holds serving
settings only, so a comment at its top points there) and the source's serving
settings in ``config.toml``::

    INT8, dynamic  onnxruntime.quantization.quantize_dynamic: weights INT8 at build
                   time, activations quantized per batch at run time
    INT8, static   onnxruntime.quantization.quantize_static (QDQ, MinMax): activation
                   ranges calibrated on rows of the model's own data
    FP16           onnxconverter_common.float16: weights and arithmetic in FP16,
                   inputs and outputs kept FP32 (clients send the same tensors)

The quantizers only see standard ONNX operators, so the linear ``ai.onnx.ml``
operators scikit-learn models are converted to (``Scaler``, ``LinearClassifier``,
``Normalizer``) and ``Gemm`` are first rewritten with their standard equivalents
(:func:`lower`), which compute the same outputs.

The gate: the source and the variant each classify a held-out set that neither
was calibrated on; a variant whose accuracy is lower than the source's by more
than ``margin`` is refused with :class:`AccuracyGateFailed` and nothing is
written. The held-out sets (:func:`held_out`):

- ``digits``: the test split of scikit-learn's digits that :mod:`worker.zoo`
  holds out when it trains the model (450 rows, true labels); static
  calibration uses rows of its training split.
- ``mlp``: seeded standard-normal rows (the inputs the benchmarks send); its
  weights are random, so the labels are the source version's own top-1
  predictions and the accuracy is the variant's agreement with its source.

Everything written depends only on the source model, the method, the library
versions and (static calibration runs the model in FP32) the CPU's arithmetic:
no timestamps, the same bytes on each run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleet.errors import ConfigError, InvalidArgument
from fleet.logging import get_logger
from worker.config import CONFIG_FILE
from worker.repository import MODEL_FILE, ModelRepository, file_sha256

log = get_logger(__name__)

Array = npt.NDArray[Any]
Method = Literal["int8-dynamic", "int8-static", "fp16"]
METHODS: tuple[Method, ...] = ("int8-dynamic", "int8-static", "fp16")
METADATA_FILE = "metadata.json"
DEFAULT_MARGIN = 0.01

MLP_HELD_OUT_ROWS = 2048
MLP_CALIBRATION_ROWS = 512
MLP_HELD_OUT_SEED = 1
MLP_CALIBRATION_SEED = 2
DIGITS_CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 64


class AccuracyGateFailed(InvalidArgument):
    """A variant whose held-out accuracy is below its source's by more than the margin."""

    def __init__(
        self, message: str, *, source_accuracy: float, accuracy: float, margin: float
    ) -> None:
        super().__init__(message)
        self.source_accuracy = source_accuracy
        self.accuracy = accuracy
        self.margin = margin


@dataclass(frozen=True, kw_only=True, slots=True)
class HeldOut:
    """What a model's variants are calibrated and judged on."""

    description: str
    inputs: Array  # float32 [rows, features]: the held-out rows
    labels: Array | None  # int64 [rows]; None: the source version's own predictions
    calibration: Array  # float32 [rows, features]: rows for static calibration
    calibration_description: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Variant:
    """A variant written to the repository."""

    model: str
    version: str
    source_version: str
    method: Method
    path: Path  # its model.onnx
    source_accuracy: float
    accuracy: float
    margin: float
    calibration_rows: int


# ----------------------------------------------------------------------------- held-out data


def held_out(model: str) -> HeldOut:
    """The held-out set (and calibration rows) of one of the demo models."""
    if model == "digits":
        return _digits_held_out()
    if model == "mlp":
        return _mlp_held_out()
    raise ConfigError(
        f"no held-out data is known for model {model!r} (known: digits, mlp):"
        " its variants cannot be checked for accuracy"
    )


def _digits_held_out() -> HeldOut:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from worker.zoo import DIGITS_SEED, DIGITS_TEST_SIZE

    x, y = load_digits(return_X_y=True)
    x_train, x_test, _, y_test = train_test_split(
        x.astype(np.float32),
        y.astype(np.int64),
        test_size=DIGITS_TEST_SIZE,
        random_state=DIGITS_SEED,
        stratify=y,
    )
    return HeldOut(
        description=f"sklearn digits, test split ({len(y_test)} rows, seed {DIGITS_SEED})",
        inputs=x_test,
        labels=y_test,
        calibration=x_train[:DIGITS_CALIBRATION_ROWS],
        calibration_description="sklearn digits, first rows of the training split",
    )


def _mlp_held_out() -> HeldOut:
    from worker.zoo import MLP_LAYERS

    width = MLP_LAYERS[0]

    def rows(seed: int, n: int) -> Array:
        return np.random.default_rng(seed).standard_normal((n, width), dtype=np.float32)

    return HeldOut(
        description=(
            f"standard normal rows ({MLP_HELD_OUT_ROWS}, seed {MLP_HELD_OUT_SEED}),"
            " labelled by the source version's top-1 prediction"
        ),
        inputs=rows(MLP_HELD_OUT_SEED, MLP_HELD_OUT_ROWS),
        labels=None,
        calibration=rows(MLP_CALIBRATION_SEED, MLP_CALIBRATION_ROWS),
        calibration_description=f"standard normal rows (seed {MLP_CALIBRATION_SEED})",
    )


# ----------------------------------------------------------------------------- accuracy


def predict(model: onnx.ModelProto | bytes | Path, inputs: Array) -> Array:
    """Top-1 class of each row: an integer output of shape [rows] if the model has
    one (a label), else the argmax of its first [rows, classes] output."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        session = ort.InferenceSession(
            str(source) if isinstance(source, Path) else source,
            options,
            providers=["CPUExecutionProvider"],
        )
        name = session.get_inputs()[0].name
        outputs = session.run(None, {name: inputs})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InvalidArgument(f"the model cannot be evaluated on the CPU: {exc}") from exc
    for out in outputs:
        arr = np.asarray(out)
        if arr.shape == (len(inputs),) and np.issubdtype(arr.dtype, np.integer):
            return arr.astype(np.int64)
    for out in outputs:
        arr = np.asarray(out)
        if arr.ndim == 2 and arr.shape[0] == len(inputs):
            best: Array = np.argmax(arr, axis=1).astype(np.int64)
            return best
    raise InvalidArgument("the model has no label or [rows, classes] output to score")


def check_gate(
    *, source_correct: int, correct: int, rows: int, margin: float, what: str
) -> tuple[float, float]:
    """The two accuracies; :class:`AccuracyGateFailed` when the drop exceeds ``margin``.

    Compared in whole rows against the margin as written in decimal
    (``source_correct - correct > Fraction(str(margin)) * rows``), so the verdict
    does not hang on how a float difference rounds: 0.29 of 100 rows allows 29.
    """
    if not 0.0 <= margin <= 1.0:
        raise InvalidArgument(f"margin must be between 0 and 1, got {margin}")
    if rows <= 0:
        raise InvalidArgument("the held-out set is empty")
    source_accuracy, accuracy = source_correct / rows, correct / rows
    if source_correct - correct > Fraction(str(margin)) * rows:
        raise AccuracyGateFailed(
            f"{what}: held-out accuracy {accuracy:.4f} ({correct}/{rows}) is"
            f" {source_accuracy - accuracy:.4f} below the source's {source_accuracy:.4f}"
            f" ({source_correct}/{rows}), more than the margin {margin}; nothing written",
            source_accuracy=source_accuracy,
            accuracy=accuracy,
            margin=margin,
        )
    return source_accuracy, accuracy


# ----------------------------------------------------------------------------- lowering

_Lowered = tuple[list[onnx.NodeProto], list[onnx.TensorProto]]


def lower(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with ``Scaler``, ``LinearClassifier`` (integer labels; no
    binary special case), ``Normalizer`` (L1, L2) and plain ``Gemm`` nodes rewritten
    as standard operators (``Sub``, ``Mul``, ``MatMul``, ``Add``, ``Softmax``,
    ``ArgMax``, ``Gather``, ...) that compute the same outputs. Other nodes are kept.

    A ``Scaler`` whose only reader is a ``LinearClassifier`` is folded into the
    classifier's weights, so the matrix product reads the raw input: its range
    (pixel values, say) is what INT8 activations are fitted to, not the scaled
    features, whose outliers would stretch the quantization step.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return out
    initializers = {t.name: t for t in out.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for index, node in enumerate(_fold_scalers(out.graph)):
        lowered = _lower_node(node, f"lowered{index}", initializers)
        if lowered is None:
            nodes.append(node)
        else:
            nodes += lowered[0]
            added += lowered[1]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(added)
    _tidy_opsets(out)
    onnx.checker.check_model(out, full_check=True)
    return out


def _tidy_opsets(model: onnx.ModelProto) -> None:
    """One import per domain (skl2onnx may repeat the default one), and only the used ones."""
    used = {n.domain or "ai.onnx" for n in model.graph.node} | {"ai.onnx"}
    versions: dict[str, int] = {}
    for o in model.opset_import:
        domain = o.domain or "ai.onnx"
        versions[domain] = max(versions.get(domain, 0), o.version)
    del model.opset_import[:]
    for domain, version in versions.items():
        if domain in used:
            name = "" if domain == "ai.onnx" else domain
            model.opset_import.append(helper.make_opsetid(name, version))


def _fold_scalers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes, with each ``Scaler`` read only by a ``LinearClassifier``
    folded into that classifier's coefficients and intercepts."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded: dict[int, onnx.NodeProto] = {}  # id(classifier) -> folded classifier
    dropped: set[int] = set()
    for node in graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type != "Scaler" or node.output[0] in outputs:
            continue
        consumers = readers.get(node.output[0], [])
        if len(consumers) == 1 and consumers[0].op_type == "LinearClassifier":
            merged = _fold_scaler(node, consumers[0])
            if merged is not None:
                folded[id(consumers[0])] = merged
                dropped.add(id(node))
    return [folded.get(id(n), n) for n in graph.node if id(n) not in dropped]


def _fold_scaler(scaler: onnx.NodeProto, classifier: onnx.NodeProto) -> onnx.NodeProto | None:
    """``W ((x - offset) * scale) + b`` as ``(W * scale) x + (b - W (offset * scale))``."""
    s_attrs = {a.name: helper.get_attribute_value(a) for a in scaler.attribute}
    c_attrs = {a.name: helper.get_attribute_value(a) for a in classifier.attribute}
    intercepts = np.asarray(c_attrs.get("intercepts", []), dtype=np.float64)
    coefficients = np.asarray(c_attrs.get("coefficients", []), dtype=np.float64)
    if not len(intercepts) or coefficients.size % len(intercepts):
        return None
    weight = coefficients.reshape(len(intercepts), -1)  # [classes, features]
    features = weight.shape[1]
    offset = np.asarray(s_attrs.get("offset", [0.0]), dtype=np.float64)
    scale = np.asarray(s_attrs.get("scale", [1.0]), dtype=np.float64)
    if offset.size not in (1, features) or scale.size not in (1, features):
        return None
    scale = np.broadcast_to(scale, (features,))
    offset = np.broadcast_to(offset, (features,))
    c_attrs["coefficients"] = (weight * scale).astype(np.float32).ravel().tolist()
    c_attrs["intercepts"] = (intercepts - weight @ (offset * scale)).astype(np.float32).tolist()
    return helper.make_node(
        "LinearClassifier",
        [scaler.input[0]],
        list(classifier.output),
        classifier.name,
        domain="ai.onnx.ml",
        **c_attrs,
    )


def _lower_node(
    node: onnx.NodeProto, prefix: str, initializers: dict[str, onnx.TensorProto]
) -> _Lowered | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.domain == "ai.onnx.ml" and node.op_type == "Scaler":
        return _lower_scaler(node, prefix, attrs)
    if node.domain == "ai.onnx.ml" and node.op_type == "LinearClassifier":
        return _lower_linear_classifier(node, prefix, attrs)
    if node.domain == "ai.onnx.ml" and node.op_type == "Normalizer":
        return _lower_normalizer(node, prefix, attrs)
    if node.domain in ("", "ai.onnx") and node.op_type == "Gemm":
        return _lower_gemm(node, prefix, attrs, initializers)
    return None


def _floats(name: str, values: Any, shape: tuple[int, ...] | None = None) -> onnx.TensorProto:
    array = np.asarray(values, dtype=np.float32)
    return numpy_helper.from_array(array if shape is None else array.reshape(shape), name)


def _lower_scaler(node: onnx.NodeProto, prefix: str, attrs: dict[str, Any]) -> _Lowered:
    offset = _floats(f"{prefix}_offset", attrs.get("offset", [0.0]))
    scale = _floats(f"{prefix}_scale", attrs.get("scale", [1.0]))
    centred = f"{prefix}_centred"
    return (
        [
            helper.make_node("Sub", [node.input[0], offset.name], [centred]),
            helper.make_node("Mul", [centred, scale.name], [node.output[0]]),
        ],
        [offset, scale],
    )


_POST = {b"NONE": None, b"SOFTMAX": "Softmax", b"LOGISTIC": "Sigmoid"}


def _lower_linear_classifier(
    node: onnx.NodeProto, prefix: str, attrs: dict[str, Any]
) -> _Lowered | None:
    labels = attrs.get("classlabels_ints")
    post = attrs.get("post_transform", b"NONE")
    coefficients = np.asarray(attrs.get("coefficients", []), dtype=np.float32)
    intercepts = attrs.get("intercepts")
    classes = len(labels) if labels else 0
    if (
        classes < 2
        or post not in _POST
        or intercepts is None
        or len(intercepts) != classes
        or coefficients.size % classes
    ):
        return None  # string labels, the binary special case, other transforms: kept
    weight = _floats(f"{prefix}_weight", coefficients.reshape(classes, -1).T)
    bias = _floats(f"{prefix}_bias", intercepts)
    classlabels = numpy_helper.from_array(np.asarray(labels, dtype=np.int64), f"{prefix}_labels")
    product, scores, best = f"{prefix}_product", f"{prefix}_scores", f"{prefix}_best"
    transform = _POST[post]
    raw = scores if transform else node.output[1]
    nodes = [
        helper.make_node("MatMul", [node.input[0], weight.name], [product]),
        helper.make_node("Add", [product, bias.name], [raw]),
        helper.make_node("ArgMax", [raw], [best], axis=1, keepdims=0),
        helper.make_node("Gather", [classlabels.name, best], [node.output[0]], axis=0),
    ]
    if transform == "Softmax":
        nodes.insert(2, helper.make_node("Softmax", [scores], [node.output[1]], axis=-1))
    elif transform == "Sigmoid":
        nodes.insert(2, helper.make_node("Sigmoid", [scores], [node.output[1]]))
    return nodes, [weight, bias, classlabels]


def _lower_normalizer(node: onnx.NodeProto, prefix: str, attrs: dict[str, Any]) -> _Lowered | None:
    norm = attrs.get("norm", b"MAX")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}_axes")
    total = f"{prefix}_total"
    if norm == b"L1":
        magnitude = f"{prefix}_abs"
        nodes = [
            helper.make_node("Abs", [node.input[0]], [magnitude]),
            helper.make_node("ReduceSum", [magnitude, axes.name], [total], keepdims=1),
        ]
    elif norm == b"L2":
        squares = f"{prefix}_squares"
        nodes = [
            helper.make_node("ReduceSumSquare", [node.input[0], axes.name], [squares], keepdims=1),
            helper.make_node("Sqrt", [squares], [total]),
        ]
    else:
        return None
    nodes.append(helper.make_node("Div", [node.input[0], total], [node.output[0]]))
    return nodes, [axes]


def _lower_gemm(
    node: onnx.NodeProto,
    prefix: str,
    attrs: dict[str, Any],
    initializers: dict[str, onnx.TensorProto],
) -> _Lowered | None:
    plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
    if not plain or attrs.get("transA", 0) or node.input[1] not in initializers:
        return None
    weight_name, added = node.input[1], []
    if attrs.get("transB", 0):
        weight = numpy_helper.to_array(initializers[weight_name]).T
        added.append(numpy_helper.from_array(np.ascontiguousarray(weight), f"{prefix}_weight"))
        weight_name = added[0].name
    has_bias = len(node.input) > 2 and node.input[2] != ""
    product = f"{prefix}_product" if has_bias else node.output[0]
    nodes = [helper.make_node("MatMul", [node.input[0], weight_name], [product], node.name)]
    if has_bias:
        nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
    return nodes, added


# ----------------------------------------------------------------------------- transforms


class _Rows:
    """Feeds calibration rows to the static quantizer in fixed batches, in order."""

    def __init__(self, input_name: str, rows: Array) -> None:
        self._batches: Iterator[Array] = iter(
            [rows[i : i + CALIBRATION_BATCH] for i in range(0, len(rows), CALIBRATION_BATCH)]
        )
        self._input_name = input_name

    def get_next(self) -> dict[str, Array] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def int8_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """INT8 weights, activations quantized per batch at run time (``MatMulInteger``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _quantize(
        model,
        lambda src, dst: quantize_dynamic(
            src, dst, op_types_to_quantize=list(_MATRIX_OPS), weight_type=QuantType.QInt8
        ),
    )


def int8_static(model: onnx.ModelProto, calibration: Array) -> onnx.ModelProto:
    """INT8 weights and activations (QDQ), ranges calibrated (MinMax) on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if len(calibration) == 0:
        raise InvalidArgument("static quantization needs at least one calibration row")
    rows = np.ascontiguousarray(calibration, dtype=np.float32)
    reader = _Rows(model.graph.input[0].name, rows)  # a CalibrationDataReader by its get_next

    def run(src: str, dst: str) -> None:
        quantize_static(
            src,
            dst,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(_MATRIX_OPS),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
        )

    return _quantize(model, run)


def _quantize(model: onnx.ModelProto, run: Callable[[str, str], None]) -> onnx.ModelProto:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    lowered = lower(model)
    with tempfile.TemporaryDirectory(prefix="fleet-quantize-") as tmp:
        src, dst = os.path.join(tmp, "source.onnx"), os.path.join(tmp, "quantized.onnx")
        onnx.save(lowered, src)
        # ONNX shape inference, as the quantizers expect. Left out: the graph optimizations,
        # which would fuse MatMul and Add back into Gemm, and the symbolic shape inference
        # meant for transformers
        quant_pre_process(src, src, skip_optimization=True, skip_symbolic_shape=True)
        run(src, dst)
        quantized = onnx.load(dst)
    if _count_ops(quantized, _INT8_OPS) <= _count_ops(lowered, _INT8_OPS):
        raise InvalidArgument("the model has no operator that INT8 quantization applies to")
    return _finish(quantized, model)


_MATRIX_OPS = ("MatMul", "Gemm", "Conv")
_INT8_OPS = frozenset({"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear"})


def _count_ops(model: onnx.ModelProto, kinds: frozenset[str]) -> int:
    return sum(n.op_type in kinds for n in model.graph.node)


def fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and arithmetic in FP16; inputs and outputs stay FP32."""
    from onnxconverter_common.float16 import convert_float_to_float16

    lowered = lower(model)
    if not any(t.data_type == TensorProto.FLOAT for t in lowered.graph.initializer):
        raise InvalidArgument("the model has no FP32 weights to convert to FP16")
    with warnings.catch_warnings():
        # it warns for each weight too small for FP16 (clamped); the gate judges the result
        warnings.filterwarnings("ignore", "the float32 number", UserWarning)
        converted: onnx.ModelProto = convert_float_to_float16(lowered, keep_io_types=True)
    return _finish(converted, model)


def _finish(variant: onnx.ModelProto, source: onnx.ModelProto) -> onnx.ModelProto:
    """The source's IR version and producer; a model the checker accepts."""
    variant.ir_version = source.ir_version
    variant.producer_name = source.producer_name
    variant.producer_version = source.producer_version
    onnx.checker.check_model(variant, full_check=True)
    return variant


# ----------------------------------------------------------------------------- the repository

_DESCRIPTIONS: dict[Method, str] = {
    "int8-dynamic": "onnxruntime.quantization.quantize_dynamic (INT8 weights, activations"
    " quantized per batch)",
    "int8-static": "onnxruntime.quantization.quantize_static (QDQ, MinMax calibration,"
    " UINT8 activations, INT8 weights)",
    "fp16": "onnxconverter_common.float16.convert_float_to_float16 (FP32 inputs and outputs)",
}


def make_variant(
    root: str | Path,
    model: str,
    method: Method,
    *,
    source_version: str | None = None,
    margin: float = DEFAULT_MARGIN,
    calibration: Array | None = None,
) -> Variant:
    """Make a variant of ``model`` and write it as the model's next version.

    ``source_version`` defaults to the newest version that is not itself a variant;
    ``calibration`` replaces the model's own calibration rows (``int8-static``).
    Raises :class:`AccuracyGateFailed` (nothing written) when the variant's
    held-out accuracy is more than ``margin`` below the source's.
    """
    if method not in METHODS:
        raise InvalidArgument(f"unknown variant method {method!r} (known: {list(METHODS)})")
    if not 0.0 <= margin <= 1.0:
        raise InvalidArgument(f"margin must be between 0 and 1, got {margin}")
    model_dir = _local_root(root) / model
    source = _source_version(root, model, source_version)
    data = held_out(model)
    rows = data.calibration if calibration is None else np.asarray(calibration, np.float32)
    source_model = onnx.load(str(model_dir / source / MODEL_FILE))
    variant = _transform(method, source_model, rows)
    _check_signature(source_model, variant)
    source_accuracy, accuracy = _gate(source_model, variant, data, margin, f"{model}:{source}")
    static = method == "int8-static"
    provenance = {
        "method": method,
        "tool": _DESCRIPTIONS[method],
        "source_version": source,
        "source_sha256": file_sha256(model_dir / source / MODEL_FILE),
        "calibration_rows": len(rows) if static else 0,
        "calibration": (
            data.calibration_description if calibration is None else "rows given by the caller"
        )
        if static
        else None,
        "held_out": data.description,
        "held_out_rows": len(data.inputs),
        "source_accuracy": round(source_accuracy, 6),
        "accuracy": round(accuracy, 6),
        "margin": margin,
        "built_with": _library_versions(method),
    }
    version, path = _write_version(model_dir, model, variant, provenance)
    log.info("model variant written", model=model, version=version, **provenance)
    return Variant(
        model=model,
        version=version,
        source_version=source,
        method=method,
        path=path,
        source_accuracy=source_accuracy,
        accuracy=accuracy,
        margin=margin,
        calibration_rows=len(rows) if static else 0,
    )


def _transform(method: Method, model: onnx.ModelProto, calibration: Array) -> onnx.ModelProto:
    if method == "int8-dynamic":
        return int8_dynamic(model)
    if method == "int8-static":
        return int8_static(model, calibration)
    return fp16(model)


def _gate(
    source: onnx.ModelProto, variant: onnx.ModelProto, data: HeldOut, margin: float, what: str
) -> tuple[float, float]:
    source_labels = predict(source, data.inputs)
    labels = source_labels if data.labels is None else data.labels
    return check_gate(
        source_correct=int(np.sum(source_labels == labels)),
        correct=int(np.sum(predict(variant, data.inputs) == labels)),
        rows=len(labels),
        margin=margin,
        what=what,
    )


def _check_signature(source: onnx.ModelProto, variant: onnx.ModelProto) -> None:
    """A variant takes and gives the same tensors as its source."""
    before, after = _signature(source), _signature(variant)
    if before != after:
        raise InvalidArgument(f"the variant's signature {after} differs from the source's {before}")


def _local_root(root: str | Path) -> Path:
    if str(root).startswith("s3://"):
        raise ConfigError(
            f"model repository {root}: variants are written to a local repository"
            " (make them there, then copy the new version to S3)"
        )
    return Path(root)


def _source_version(root: str | Path, model: str, version: str | None) -> str:
    """``version`` if the model has it, else its newest version that is not a variant."""
    repository = ModelRepository(_local_root(root))
    specs = [s for s in repository.discover() if s.name == model]
    if version is not None or not specs:
        return repository.get(model, version).version
    originals = [s.version for s in specs if "variant" not in _metadata(s.path.parent)]
    if not originals:
        raise ConfigError(f"model {model!r} has only variants; name the source with a version")
    return originals[-1]


def _metadata(version_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((version_dir / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _next_version(model_dir: Path) -> str:
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return str(max(numbers, default=0) + 1)


def _write_version(
    model_dir: Path, name: str, variant: onnx.ModelProto, provenance: dict[str, Any]
) -> tuple[str, Path]:
    """Write the files into a hidden directory, then rename it to the next version."""
    data = variant.SerializeToString()
    source_dir = model_dir / str(provenance["source_version"])
    source_config = source_dir / CONFIG_FILE
    header = (
        f"# {provenance['method']} variant of {name} version {provenance['source_version']}.\n"
        f'# Provenance (method, calibration, held-out accuracy): {METADATA_FILE}, "variant".\n'
        "# Serving settings: the source's, below.\n"
    )
    config = header + (source_config.read_text() if source_config.is_file() else "")
    try:
        tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=".variant-"))
    except OSError as exc:
        raise ConfigError(f"{model_dir}: cannot write a new version there: {exc}") from exc
    try:
        (tmp / MODEL_FILE).write_bytes(data)
        (tmp / CONFIG_FILE).write_text(config)
        version = _next_version(model_dir)
        meta = {
            "name": name,
            "version": version,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "ir_version": variant.ir_version,
            "opsets": {o.domain or "ai.onnx": o.version for o in variant.opset_import},
            "inputs": _signature(variant)[0],
            "outputs": _signature(variant)[1],
            "variant": provenance,
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; models are read by other users
        os.rename(tmp, model_dir / version)  # fails if that version appeared meanwhile
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{model_dir}: the new version could not be written: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version, model_dir / version / MODEL_FILE


def _signature(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            kind = TensorProto.DataType.Name(tensor.elem_type)
            out.append({"name": value.name, "type": kind, "shape": dims})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _library_versions(method: Method) -> dict[str, str]:
    import onnxruntime

    versions = {"numpy": np.__version__, "onnx": onnx.__version__}
    versions["onnxruntime"] = onnxruntime.__version__
    if method == "fp16":
        import onnxconverter_common

        versions["onnxconverter-common"] = onnxconverter_common.__version__
    return versions


__all__ = [
    "DEFAULT_MARGIN",
    "METHODS",
    "AccuracyGateFailed",
    "HeldOut",
    "Method",
    "Variant",
    "check_gate",
    "fp16",
    "held_out",
    "int8_dynamic",
    "int8_static",
    "lower",
    "make_variant",
    "predict",
]
