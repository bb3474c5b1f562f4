from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fleet.tensor import Tensor
from worker import zoo
from worker.onnx_runtime import OnnxRuntime
from worker.repository import ModelRepository

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    zoo.build_all(root)
    return root


@pytest.fixture(scope="module")
def digits_data() -> zoo.DigitsData:
    return zoo.train_digits()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_layout_and_metadata(root: Path) -> None:
    for name in ("digits", "mlp"):
        version_dir = root / name / "1"
        assert sorted(p.name for p in version_dir.iterdir()) == [
            "config.toml",
            "metadata.json",
            "model.onnx",
        ]
        meta = json.loads((version_dir / "metadata.json").read_text())
        assert meta["name"] == name
        assert meta["ir_version"] == zoo.IR_VERSION
        assert meta["opsets"]["ai.onnx"] <= zoo.OPSET
        model = onnx.load(str(version_dir / "model.onnx"))
        assert model.ir_version == zoo.IR_VERSION
        onnx.checker.check_model(model)
    specs = ModelRepository(root).discover()
    assert [(s.name, s.version, s.config.max_batch_size) for s in specs] == [
        ("digits", "1", 64),
        ("mlp", "1", 64),
    ]


def test_digits_accuracy(root: Path, digits_data: zoo.DigitsData) -> None:
    meta = json.loads((root / "digits" / "1" / "metadata.json").read_text())
    assert meta["held_out_accuracy"] >= zoo.DIGITS_MIN_ACCURACY
    assert meta["held_out_accuracy"] == round(digits_data.accuracy, 6)
    assert meta["test_rows"] == len(digits_data.y_test)


def test_digits_onnx_matches_sklearn(root: Path, digits_data: zoo.DigitsData) -> None:
    session = _session(root / "digits" / "1" / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].type == "tensor(float)"
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    label, probabilities = session.run(None, {"input": digits_data.x_test})
    assert label.dtype == np.int64 and label.shape == digits_data.y_test.shape
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(label), 10)
    np.testing.assert_array_equal(label, digits_data.pipeline.predict(digits_data.x_test))
    np.testing.assert_allclose(
        probabilities, digits_data.pipeline.predict_proba(digits_data.x_test), atol=1e-4
    )
    assert float(np.mean(label == digits_data.y_test)) >= zoo.DIGITS_MIN_ACCURACY


def test_digits_through_the_runtime(root: Path, digits_data: zoo.DigitsData) -> None:
    runtime = OnnxRuntime.load(ModelRepository(root).get("digits"))
    out = runtime.infer([Tensor.from_numpy("input", digits_data.x_test[:5])])
    np.testing.assert_array_equal(
        out["label"], digits_data.pipeline.predict(digits_data.x_test[:5])
    )


def test_mlp_output(root: Path) -> None:
    session = _session(root / "mlp" / "1" / "model.onnx")
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("input", "tensor(float)", ["batch", 256])
    (out,) = session.get_outputs()
    assert (out.name, out.shape) == ("logits", ["batch", 10])
    x = np.random.default_rng(1).standard_normal((32, 256), dtype=np.float32)
    (logits,) = session.run(None, {"input": x})
    assert logits.shape == (32, 10) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert 0.1 < float(np.abs(logits).mean()) < 100  # activations neither vanish nor explode
    (again,) = session.run(None, {"input": x})
    np.testing.assert_array_equal(logits, again)


def test_rebuild_is_byte_identical(root: Path, tmp_path: Path) -> None:
    zoo.build_all(tmp_path, force=True)
    for name in ("digits", "mlp"):
        first = (root / name / "1" / "model.onnx").read_bytes()
        second = (tmp_path / name / "1" / "model.onnx").read_bytes()
        assert first == second, name


def test_mlp_model_is_deterministic() -> None:
    assert zoo.mlp_model().SerializeToString() == zoo.mlp_model().SerializeToString()
    assert zoo.mlp_model(1).SerializeToString() != zoo.mlp_model(2).SerializeToString()


def test_present_models_are_kept_unless_forced(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "repo"
    zoo.build_mlp(target)
    model_file = target / "mlp" / "1" / "model.onnx"
    assert zoo.is_built(model_file.parent)
    before = model_file.stat().st_mtime_ns
    paths = zoo.build_all(target)
    assert model_file in paths
    assert model_file.stat().st_mtime_ns == before  # kept
    model_file.write_bytes(model_file.read_bytes()[:-10])  # damaged
    assert not zoo.is_built(model_file.parent)
    zoo.build_all(target)
    assert model_file.read_bytes() == (root / "mlp" / "1" / "model.onnx").read_bytes()
