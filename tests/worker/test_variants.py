"""INT8 and FP16 variants of a model, written as new versions behind an accuracy gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fleet.errors import ConfigError, InvalidArgument, ModelNotFound
from fleet.tensor import Tensor
from worker import variants
from worker.config import CONFIG_FILE, ModelConfig
from worker.onnx_runtime import OnnxRuntime
from worker.repository import ModelRepository, file_sha256

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory, built_models: Path) -> Path:
    """A repository holding digits version 1 only (tests write to copies of it)."""
    root = tmp_path_factory.mktemp("digits")
    shutil.copytree(built_models / "digits" / "1", root / "digits" / "1")
    return root


@pytest.fixture(scope="module")
def digits() -> variants.HeldOut:
    return variants.held_out("digits")


@pytest.fixture
def repo(tmp_path: Path, digits_root: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(digits_root, root)
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _outputs(model: onnx.ModelProto | Path, x: np.ndarray) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name: x})]


# ----------------------------------------------------------------------------- the gate


@pytest.mark.parametrize(
    ("source_correct", "correct", "rows", "margin", "passes"),
    [
        pytest.param(436, 432, 450, 0.01, True, id="drop-4-of-450-within-4.5"),
        pytest.param(436, 431, 450, 0.01, False, id="drop-5-of-450-beyond-4.5"),
        pytest.param(100, 99, 100, 0.01, True, id="drop-exactly-the-margin"),
        pytest.param(100, 71, 100, 0.29, True, id="exact-in-decimal-not-in-binary"),
        pytest.param(100, 70, 100, 0.29, False, id="one-row-past-a-decimal-margin"),
        pytest.param(100, 99, 100, 0.0, False, id="no-margin-any-drop-fails"),
        pytest.param(90, 95, 100, 0.0, True, id="better-than-the-source"),
    ],
)
def test_the_gate_counts_whole_rows(
    source_correct: int, correct: int, rows: int, margin: float, passes: bool
) -> None:
    if passes:
        assert variants.check_gate(
            source_correct=source_correct, correct=correct, rows=rows, margin=margin, what="m"
        ) == (source_correct / rows, correct / rows)
        return
    with pytest.raises(variants.AccuracyGateFailed, match="nothing written") as exc:
        variants.check_gate(
            source_correct=source_correct, correct=correct, rows=rows, margin=margin, what="m"
        )
    assert (exc.value.source_accuracy, exc.value.accuracy) == (
        source_correct / rows,
        correct / rows,
    )
    assert exc.value.margin == margin and not exc.value.retriable


def test_a_margin_outside_0_1_is_refused() -> None:
    for margin in (-0.1, 1.5):
        with pytest.raises(InvalidArgument, match="margin must be between 0 and 1"):
            variants.check_gate(source_correct=1, correct=1, rows=1, margin=margin, what="m")


# ----------------------------------------------------------------------------- lowering


def test_lowered_digits_computes_the_same_outputs(
    digits_root: Path, digits: variants.HeldOut
) -> None:
    source = onnx.load(str(digits_root / "digits" / "1" / "model.onnx"))
    lowered = variants.lower(source)
    assert {n.op_type for n in source.graph.node} == {"Scaler", "LinearClassifier", "Normalizer"}
    assert all(n.domain in ("", "ai.onnx") for n in lowered.graph.node)
    assert [o.domain for o in lowered.opset_import] == [""]
    assert "MatMul" in {n.op_type for n in lowered.graph.node}
    # the Scaler is folded into the classifier: the product reads the raw pixels
    matmul = next(n for n in lowered.graph.node if n.op_type == "MatMul")
    assert matmul.input[0] == "input"
    label, probabilities = _outputs(source, digits.inputs)
    lowered_label, lowered_probabilities = _outputs(lowered, digits.inputs)
    np.testing.assert_array_equal(lowered_label, label)
    np.testing.assert_allclose(lowered_probabilities, probabilities, rtol=1e-4, atol=1e-5)


def test_gemm_with_a_transposed_weight_is_lowered_to_matmul_and_add() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 4)).astype(np.float32)  # [out, in]: transB
    bias = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    lowered = variants.lower(model)
    assert [n.op_type for n in lowered.graph.node] == ["MatMul", "Add"]
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(_outputs(lowered, x)[0], x @ weight.T + bias, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    ("method", "marker_op"),
    [("int8-dynamic", "MatMulInteger"), ("int8-static", "QuantizeLinear")],
)
def test_int8_digits_passes_the_gate_as_the_next_version(
    repo: Path, digits: variants.HeldOut, method: variants.Method, marker_op: str
) -> None:
    variant = variants.make_variant(repo, "digits", method)
    assert (variant.version, variant.source_version, variant.method) == ("2", "1", method)
    assert variant.path == repo / "digits" / "2" / "model.onnx"
    model = onnx.load(str(variant.path))
    assert marker_op in {n.op_type for n in model.graph.node}
    # the accuracy it reports is the accuracy the written file has on the held-out set
    predicted = variants.predict(variant.path, digits.inputs)
    assert digits.labels is not None
    assert variant.accuracy == float(np.mean(predicted == digits.labels))
    source = variants.predict(repo / "digits" / "1" / "model.onnx", digits.inputs)
    assert variant.source_accuracy == float(np.mean(source == digits.labels))
    assert variant.source_accuracy - variant.accuracy <= 0.01
    meta = json.loads((repo / "digits" / "2" / "metadata.json").read_text())
    provenance = meta["variant"]
    assert provenance["method"] == method
    assert provenance["source_version"] == "1"
    assert provenance["source_sha256"] == file_sha256(repo / "digits" / "1" / "model.onnx")
    assert provenance["accuracy"] == round(variant.accuracy, 6)
    assert provenance["held_out_rows"] == len(digits.inputs) == 450
    assert provenance["calibration_rows"] == (len(digits.calibration) if "static" in method else 0)
    assert meta["sha256"] == file_sha256(variant.path)
    assert meta["inputs"] == [{"name": "input", "type": "FLOAT", "shape": [None, 64]}]


def test_a_variant_is_served_like_any_version(repo: Path, digits: variants.HeldOut) -> None:
    variants.make_variant(repo, "digits", "int8-dynamic")
    specs = ModelRepository(repo).discover()
    assert [(s.name, s.version) for s in specs] == [("digits", "1"), ("digits", "2")]
    source_config = ModelConfig.from_toml(repo / "digits" / "1" / CONFIG_FILE)
    assert specs[1].config == source_config
    assert (
        (repo / "digits" / "2" / CONFIG_FILE)
        .read_text()
        .startswith("# int8-dynamic variant of digits version 1.")
    )
    runtime = OnnxRuntime.load(specs[1])
    try:
        out = runtime.infer([Tensor.from_numpy("input", digits.inputs[:8])])
    finally:
        runtime.close()
    expected = variants.predict(specs[1].path, digits.inputs[:8])
    np.testing.assert_array_equal(out["label"], expected)
    assert out["probabilities"].dtype == np.float32


def test_fp16_digits_keeps_fp32_inputs_and_outputs(repo: Path, digits: variants.HeldOut) -> None:
    variant = variants.make_variant(repo, "digits", "fp16")
    model = onnx.load(str(variant.path))
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT
    assert variant.source_accuracy - variant.accuracy <= 0.01
    meta = json.loads((repo / "digits" / "2" / "metadata.json").read_text())
    assert meta["variant"]["method"] == "fp16"
    assert "onnxconverter-common" in meta["variant"]["built_with"]


def test_a_badly_calibrated_variant_is_refused_and_nothing_written(
    repo: Path, digits: variants.HeldOut
) -> None:
    before = _files(repo)
    # a tenth of the real pixel range: most activations saturate
    with pytest.raises(variants.AccuracyGateFailed, match=r"more than the margin 0\.01") as exc:
        variants.make_variant(
            repo, "digits", "int8-static", calibration=digits.calibration[:16] * 0.1
        )
    assert exc.value.source_accuracy - exc.value.accuracy > 0.01
    assert _files(repo) == before


def test_corrupt_weights_are_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch, digits: variants.HeldOut
) -> None:
    quantize = variants.int8_dynamic

    def corrupted(model: onnx.ModelProto) -> onnx.ModelProto:
        out = quantize(model)
        for i, tensor in enumerate(out.graph.initializer):
            values = numpy_helper.to_array(tensor)
            if values.dtype == np.int8 and values.ndim == 2:  # the quantized weights, scrambled
                flipped = np.ascontiguousarray(values[::-1, ::-1])
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(flipped, tensor.name))
        return out

    monkeypatch.setattr(variants, "int8_dynamic", corrupted)
    before = _files(repo)
    with pytest.raises(variants.AccuracyGateFailed):
        variants.make_variant(repo, "digits", "int8-dynamic")
    assert _files(repo) == before


def test_a_version_that_cannot_be_written_leaves_nothing_behind(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def taken(src: str, dst: str) -> None:
        raise OSError(39, "Directory not empty", str(dst))

    monkeypatch.setattr(variants.os, "rename", taken)
    before = _files(repo)
    with pytest.raises(ConfigError, match="the new version could not be written"):
        variants.make_variant(repo, "digits", "int8-dynamic")
    assert _files(repo) == before


def test_variants_are_byte_identical_from_run_to_run(tmp_path: Path, digits_root: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        shutil.copytree(digits_root, root)
        variants.make_variant(root, "digits", "int8-static")
    for name in ("model.onnx", CONFIG_FILE, "metadata.json"):
        first, second = (root / "digits" / "2" / name for root in roots)
        assert first.read_bytes() == second.read_bytes(), name


def test_the_default_source_is_the_newest_original(repo: Path) -> None:
    assert variants.make_variant(repo, "digits", "int8-dynamic").version == "2"
    fp16 = variants.make_variant(repo, "digits", "fp16")
    assert (fp16.version, fp16.source_version) == ("3", "1")
    with pytest.raises(ModelNotFound, match="no version '7'"):
        variants.make_variant(repo, "digits", "fp16", source_version="7")


def test_a_variant_of_a_variant_has_nothing_to_quantize(repo: Path) -> None:
    variants.make_variant(repo, "digits", "int8-dynamic")
    with pytest.raises(InvalidArgument, match="no operator that INT8 quantization applies to"):
        variants.make_variant(repo, "digits", "int8-dynamic", source_version="2")


def test_refusals_name_what_is_wrong(repo: Path) -> None:
    with pytest.raises(ConfigError, match="no held-out data is known for model 'other'"):
        variants.held_out("other")
    with pytest.raises(ConfigError, match="local repository"):
        variants.make_variant("s3://bucket/models", "digits", "fp16")
    with pytest.raises(InvalidArgument, match="unknown variant method"):
        variants.make_variant(repo, "digits", "int4")  # type: ignore[arg-type]
