"""The demo models, built deterministically from code (no downloads).

- ``digits``: a scikit-learn classifier (standard scaling, then logistic
  regression) trained on the bundled 8x8 handwritten digits, converted with
  skl2onnx. Input ``input`` FP32 ``[n, 64]`` (pixel values 0..16); outputs
  ``label`` INT64 ``[n]`` and ``probabilities`` FP32 ``[n, 10]``.
- ``mlp``: a compute-bound FP32 multilayer perceptron 256 -> 1024 -> 1024 ->
  1024 -> 10 with seeded random weights. Input ``input`` FP32 ``[n, 256]``;
  output ``logits`` FP32 ``[n, 10]``.

Each is written to ``<root>/<name>/1/`` as ``model.onnx``, ``config.toml`` and
``metadata.json``. The same code and library versions give byte-identical model
files; a model already built by this code is kept unless ``force`` is set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleet.errors import ConfigError, Internal
from fleet.logging import get_logger
from worker.repository import MODEL_FILE, file_sha256

log = get_logger(__name__)

#: Bumped whenever a builder changes what it writes; older builds are rebuilt.
ZOO_VERSION = 1
#: ONNX IR version written. onnx >= 1.23 defaults to IR 14, which onnxruntime 1.31 refuses.
IR_VERSION = 10
#: Default-domain opset of the models (and the most the digits converter may use).
OPSET = 17
ML_OPSET = 3
VERSION = "1"

DIGITS_SEED = 0
DIGITS_TEST_SIZE = 0.25
DIGITS_MIN_ACCURACY = 0.95
MLP_SEED = 20240601
MLP_LAYERS = (256, 1024, 1024, 1024, 10)

Array = npt.NDArray[Any]

#: How to install the libraries that build the demo models (the ``tools`` extra).
TOOLS_INSTALL = "pip install 'inference-fleet[tools]'"


class ToolsMissing(ConfigError):
    """A library that builds the demo models is not installed (the ``tools`` extra)."""


def require_tools() -> None:
    """Raise :class:`ToolsMissing` unless scikit-learn and skl2onnx import."""
    try:
        import skl2onnx  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        top = (exc.name or "").partition(".")[0]
        missing = {"sklearn": "scikit-learn"}.get(top, top or str(exc))
        raise ToolsMissing(
            f"building the demo models needs {missing}, "
            f"which the 'tools' extra installs: {TOOLS_INSTALL}"
        ) from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class DigitsData:
    """The fitted digits pipeline and its held-out split."""

    pipeline: Any  # sklearn.pipeline.Pipeline
    x_test: Array  # float32 [n, 64]
    y_test: Array  # int64 [n]
    accuracy: float
    train_rows: int


def train_digits() -> DigitsData:
    """Fit the digits classifier on a fixed, stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SEED, stratify=y
    )
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=1.0, max_iter=2000, random_state=DIGITS_SEED)),
        ]
    )
    pipeline.fit(x_train, y_train)
    accuracy = float(pipeline.score(x_test, y_test))
    return DigitsData(
        pipeline=pipeline,
        x_test=x_test,
        y_test=y_test,
        accuracy=accuracy,
        train_rows=len(x_train),
    )


def digits_model(data: DigitsData) -> onnx.ModelProto:
    """Convert the fitted pipeline; probabilities as a plain tensor (no ZipMap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = data.pipeline.steps[-1][1]
    model: onnx.ModelProto = convert_sklearn(
        data.pipeline,
        name="digits",
        initial_types=[("input", FloatTensorType([None, 64]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(classifier): {"zipmap": False}},
    )
    model.ir_version = IR_VERSION
    model.producer_name = "fleet.zoo"
    model.producer_version = str(ZOO_VERSION)
    model.doc_string = "Handwritten digit classifier (8x8 pixels, values 0..16)."
    return model


def build_digits(root: Path) -> Path:
    """Train, convert and write ``<root>/digits/1/``; returns the model file."""
    data = train_digits()
    if data.accuracy < DIGITS_MIN_ACCURACY:
        raise Internal(
            f"digits: held-out accuracy {data.accuracy:.4f} is below {DIGITS_MIN_ACCURACY}"
        )
    model = digits_model(data)
    config = "# Serving settings: see worker/config.py.\nmax_batch_size = 64\nmax_wait_ms = 0.0\n"
    extra = {
        "dataset": "sklearn.datasets.load_digits",
        "estimator": "StandardScaler + LogisticRegression(C=1.0)",
        "seed": DIGITS_SEED,
        "test_size": DIGITS_TEST_SIZE,
        "train_rows": data.train_rows,
        "test_rows": len(data.y_test),
        "held_out_accuracy": round(data.accuracy, 6),
    }
    return _write(root / "digits" / VERSION, "digits", model, config, extra)


def mlp_model(seed: int = MLP_SEED) -> onnx.ModelProto:
    """The MLP graph with He-scaled normal weights from ``seed`` (activations stay O(1))."""
    rng = np.random.default_rng(seed)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    current = "input"
    layers = list(itertools.pairwise(MLP_LAYERS))
    for i, (fan_in, fan_out) in enumerate(layers, start=1):
        scale = np.float32(math.sqrt(2.0 / fan_in))
        weight = (rng.standard_normal((fan_in, fan_out), dtype=np.float32) * scale).astype(
            np.float32
        )
        bias = (rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)).astype(
            np.float32
        )
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(bias, f"b{i}"),
        ]
        last = i == len(layers)
        gemm_out = "logits" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"], f"relu{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", MLP_LAYERS[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", MLP_LAYERS[-1]])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fleet.zoo",
        producer_version=str(ZOO_VERSION),
        doc_string="FP32 MLP 256-1024-1024-1024-10 with seeded random weights (a load model).",
    )
    model.ir_version = IR_VERSION
    return model


def build_mlp(root: Path) -> Path:
    """Write ``<root>/mlp/1/``; returns the model file."""
    model = mlp_model()
    config = "# Serving settings: see worker/config.py.\nmax_batch_size = 64\nmax_wait_ms = 0.0\n"
    extra = {"layers": list(MLP_LAYERS), "seed": MLP_SEED, "init": "He normal, bias N(0, 0.01)"}
    return _write(root / "mlp" / VERSION, "mlp", model, config, extra)


BUILDERS: dict[str, Callable[[Path], Path]] = {"digits": build_digits, "mlp": build_mlp}


def build_all(root: Path, *, force: bool = False) -> list[Path]:
    """Build every demo model under ``root``; returns their model files.

    A model whose files were written by this builder version and are intact is
    kept as it is unless ``force``. Building needs the ``tools`` extra
    (:class:`ToolsMissing` without it).
    """
    root = Path(root)
    paths: list[Path] = []
    for name, build in BUILDERS.items():
        version_dir = root / name / VERSION
        if not force and is_built(version_dir):
            log.info("model already built", model=name, path=str(version_dir))
            paths.append(version_dir / MODEL_FILE)
            continue
        require_tools()
        path = build(root)
        log.info("model built", model=name, path=str(path))
        paths.append(path)
    return paths


def is_built(version_dir: Path) -> bool:
    """Whether ``version_dir`` holds an intact build by this builder version."""
    model_file = version_dir / MODEL_FILE
    try:
        meta = json.loads((version_dir / "metadata.json").read_text())
        if not (version_dir / "config.toml").is_file():
            return False
        if meta.get("zoo_version") != ZOO_VERSION or meta.get("sha256") != file_sha256(model_file):
            return False
        onnx.checker.check_model(str(model_file))
    except (OSError, ValueError, onnx.checker.ValidationError):
        return False
    return True


def _write(
    version_dir: Path, name: str, model: onnx.ModelProto, config: str, extra: dict[str, Any]
) -> Path:
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    version_dir.mkdir(parents=True, exist_ok=True)
    model_file = version_dir / MODEL_FILE
    _atomic_write(model_file, data)
    _atomic_write(version_dir / "config.toml", config.encode())
    meta = {
        "name": name,
        "version": version_dir.name,
        "zoo_version": ZOO_VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "ir_version": model.ir_version,
        "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "inputs": _signature(model.graph.input),
        "outputs": _signature(model.graph.output),
        "built_with": _library_versions(),
        **extra,
    }
    _atomic_write(version_dir / "metadata.json", (json.dumps(meta, indent=2) + "\n").encode())
    return model_file


def _signature(values: Any) -> list[dict[str, Any]]:
    out = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        out.append(
            {
                "name": value.name,
                "type": TensorProto.DataType.Name(tensor.elem_type),
                "shape": dims,
            }
        )
    return out


def _library_versions() -> dict[str, str]:
    import skl2onnx
    import sklearn

    return {
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; models are read by other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "IR_VERSION",
    "OPSET",
    "TOOLS_INSTALL",
    "ZOO_VERSION",
    "DigitsData",
    "ToolsMissing",
    "build_all",
    "build_digits",
    "build_mlp",
    "digits_model",
    "is_built",
    "mlp_model",
    "require_tools",
    "train_digits",
]
