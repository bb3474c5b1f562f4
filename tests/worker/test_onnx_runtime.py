from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from structlog.testing import capture_logs

import worker.onnx_runtime as onnx_runtime
from fleet.errors import ConfigError, Internal, InvalidArgument
from fleet.tensor import DataType, Tensor
from tests.worker.models import WEIGHTS, linear_model, row_collapsing_model, spec_for
from worker.onnx_runtime import IOSpec, OnnxRuntime, check_provider, resolve_providers

pytestmark = pytest.mark.unit

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _inputs(rows: int, *, seed: int = 0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [
        Tensor.from_numpy("x", rng.standard_normal((rows, 4), dtype=np.float32)),
        Tensor.from_numpy("ids", rng.integers(0, 100, (rows, 2), dtype=np.int64)),
    ]


def assert_linear(got: npt.NDArray[Any], x: npt.NDArray[Any]) -> None:
    """``got`` is ``x @ WEIGHTS`` computed in FP32, in whatever summation order.

    The exact product is taken in float64. A float32 dot product of ``k`` terms
    is off from it by at most about ``(k + 1) * eps * sum(|x_i * w_i|)`` in any
    order of summation (threads, SIMD lanes, kernels chosen per batch size), so
    that, doubled, is the tolerance of each element. A fixed relative tolerance
    is not sound: an element whose terms nearly cancel has a large relative
    error in every correct FP32 result.
    """
    x64, w64 = x.astype(np.float64), WEIGHTS.astype(np.float64)
    want = x64 @ w64
    bound = 2 * (WEIGHTS.shape[0] + 1) * np.finfo(np.float32).eps * (np.abs(x64) @ np.abs(w64))
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= bound).all(), f"error {err.max()} over the FP32 bound {bound.max()}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def runtime(models: Path) -> OnnxRuntime:
    return OnnxRuntime.load(spec_for(linear_model(), models, name="linear", max_batch_size=8))


# -- providers -------------------------------------------------------------------------------


def test_cpu_session(runtime: OnnxRuntime) -> None:
    assert runtime.provider == "CPUExecutionProvider"
    options = runtime._session.get_session_options()
    assert options.intra_op_num_threads == runtime.spec.config.intra_op_threads >= 1
    assert options.inter_op_num_threads == 1


def test_unknown_provider_lists_the_available_ones(models: Path) -> None:
    spec = spec_for(linear_model(), models, providers=["CudaProvider", "CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="unknown execution provider CudaProvider;") as info:
        OnnxRuntime.load(spec)
    assert "CPUExecutionProvider" in info.value.message


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_requested_gpu_without_fallback_fails(models: Path) -> None:
    spec = spec_for(
        linear_model(), models, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert spec.config.allow_cpu_fallback is False
    with pytest.raises(
        ConfigError,
        match="requested CUDAExecutionProvider, ONNX Runtime is using CPUExecutionProvider",
    ):
        OnnxRuntime.load(spec)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_requested_gpu_with_fallback_runs_on_cpu(models: Path) -> None:
    spec = spec_for(
        linear_model(),
        models,
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        allow_cpu_fallback=True,
    )
    runtime = OnnxRuntime.load(spec)
    assert runtime.provider == "CPUExecutionProvider"
    assert runtime.infer(_inputs(3))["y"].shape == (3, 3)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_only_unavailable_providers(models: Path) -> None:
    spec = spec_for(linear_model(), models, providers=["CUDAExecutionProvider"])
    with pytest.raises(ConfigError, match="none of the requested providers"):
        OnnxRuntime.load(spec)


def test_check_provider() -> None:
    check_provider("CPUExecutionProvider", "CPUExecutionProvider", allow_cpu_fallback=False)
    check_provider("CUDAExecutionProvider", "CPUExecutionProvider", allow_cpu_fallback=True)
    with pytest.raises(ConfigError, match="requested TensorrtExecutionProvider, ONNX Runtime is"):
        check_provider(
            "TensorrtExecutionProvider", "CUDAExecutionProvider", allow_cpu_fallback=False
        )


def test_resolve_providers_keeps_order_and_drops_missing() -> None:
    known = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        available=["CUDAExecutionProvider", "CPUExecutionProvider"],
        known=known,
    ) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_trt_cache_path_is_computed(runtime: OnnxRuntime) -> None:
    path = runtime.trt_cache_path
    assert path.parts[-3:-1] == ("linear", "1")
    assert runtime.spec.sha256()[:16] in path.name
    assert ort.__version__ in path.name


# -- signature and batch axis ------------------------------------------------------------------


def test_signature(runtime: OnnxRuntime) -> None:
    assert runtime.inputs == [
        IOSpec(name="x", datatype=DataType.FP32, shape=(None, 4)),
        IOSpec(name="ids", datatype=DataType.INT64, shape=(None, 2)),
    ]
    assert runtime.outputs == [
        IOSpec(name="y", datatype=DataType.FP32, shape=(None, 3)),
        IOSpec(name="ids_out", datatype=DataType.INT64, shape=(None, 2)),
    ]
    assert runtime.max_batch_size == 8
    assert runtime.buckets == (1, 2, 4, 8)


def test_fixed_batch_axis_caps_the_batch(models: Path) -> None:
    spec = spec_for(
        linear_model(batch=4, second_input=False), models, name="fixed", max_batch_size=32
    )
    runtime = OnnxRuntime.load(spec)
    assert runtime.max_batch_size == 4
    assert runtime.buckets == (4,)
    assert runtime.pad_to_bucket
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    feeds, rows = runtime.validate([Tensor.from_numpy("x", x)])
    assert rows == 3
    assert_linear(runtime.run(feeds)["y"], x)
    with pytest.raises(
        InvalidArgument, match="5 rows is more than this model's max batch size of 4"
    ):
        runtime.validate([Tensor.from_numpy("x", np.zeros((5, 4), np.float32))])
    assert list(runtime.warm_up()) == [4]


# -- validate ----------------------------------------------------------------------------------


def test_validate_returns_arrays_and_rows(runtime: OnnxRuntime) -> None:
    inputs = _inputs(3)
    feeds, rows = runtime.validate(inputs)
    assert rows == 3
    assert set(feeds) == {"x", "ids"}
    np.testing.assert_array_equal(feeds["x"], inputs[0].to_numpy())


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        pytest.param(
            [Tensor.from_numpy("x", np.zeros((1, 4), np.float32))],
            "missing input 'ids'; the model's inputs are ['x', 'ids']",
            id="missing",
        ),
        pytest.param(
            [*_inputs(1), Tensor.from_numpy("z", np.zeros((1, 4), np.float32))],
            "unknown input 'z'; the model's inputs are ['x', 'ids']",
            id="unknown",
        ),
        pytest.param(
            [*_inputs(1), _inputs(1)[0]],
            "input 'x' is given more than once",
            id="duplicate",
        ),
        pytest.param(
            [Tensor.from_numpy("x", np.zeros((1, 4), np.float64)), _inputs(1)[1]],
            "input 'x': expected FP32, got FP64",
            id="datatype",
        ),
        pytest.param(
            [_inputs(1)[0], Tensor.from_numpy("ids", np.zeros((1, 2), np.int32))],
            "input 'ids': expected INT64, got INT32",
            id="datatype-int",
        ),
        pytest.param(
            [Tensor.from_numpy("x", np.zeros(4, np.float32)), _inputs(1)[1]],
            "input 'x': expected shape [n, 4], got [4]",
            id="rank",
        ),
        pytest.param(
            [Tensor.from_numpy("x", np.zeros((1, 5), np.float32)), _inputs(1)[1]],
            "input 'x': expected shape [n, 4], got [1, 5]",
            id="dim",
        ),
        pytest.param(
            [_inputs(2)[0], _inputs(3)[1]],
            "inputs must have the same number of rows (dim 0): 'x' has 2, 'ids' has 3",
            id="rows-differ",
        ),
        pytest.param(
            [
                Tensor(name="x", datatype=DataType.FP32, shape=(0, 4), data=b""),
                Tensor(name="ids", datatype=DataType.INT64, shape=(0, 2), data=b""),
            ],
            "inputs have no rows (dim 0 is 0)",
            id="no-rows",
        ),
        pytest.param(
            _inputs(9), "9 rows is more than this model's max batch size of 8", id="too-many"
        ),
        pytest.param(
            [
                Tensor(name="x", datatype=DataType.FP32, shape=(1, 4), data=b"\0" * 12),
                _inputs(1)[1],
            ],
            "tensor 'x': 12 bytes of data",
            id="short-data",
        ),
    ],
)
def test_validate_errors(runtime: OnnxRuntime, tensors: list[Tensor], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        runtime.validate(tensors)
    assert message in info.value.message


# -- run ---------------------------------------------------------------------------------------


def test_run(runtime: OnnxRuntime) -> None:
    inputs = _inputs(5)
    out = runtime.infer(inputs)
    assert_linear(out["y"], inputs[0].to_numpy())
    np.testing.assert_array_equal(out["ids_out"], inputs[1].to_numpy())


@pytest.mark.parametrize("rows", [1, 3, 5, 7, 8])
def test_padding_to_a_bucket_changes_nothing(models: Path, runtime: OnnxRuntime, rows: int) -> None:
    padded = OnnxRuntime.load(
        spec_for(linear_model(), models, name="padded", max_batch_size=8, pad_to_bucket=True)
    )
    assert padded.pad_to_bucket and not runtime.pad_to_bucket
    feeds, _ = runtime.validate(_inputs(rows, seed=rows))
    want = runtime.run(feeds)
    got = padded.run(feeds)
    assert padded.bucket_for(rows) >= rows
    assert set(got) == set(want)
    # Padded or not, ONNX Runtime may pick a different kernel (summation order)
    # for another batch size: both are checked against the exact product.
    assert_linear(want["y"], feeds["x"])
    assert_linear(got["y"], feeds["x"])
    np.testing.assert_array_equal(got["ids_out"], want["ids_out"])


def test_runs_from_many_threads(runtime: OnnxRuntime) -> None:
    batches = [runtime.validate(_inputs(1 + i % 8, seed=i))[0] for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(runtime.run, batches))
    for feeds, out in zip(batches, results, strict=True):
        assert_linear(out["y"], feeds["x"])
        np.testing.assert_array_equal(out["ids_out"], feeds["ids"])


def test_output_rows_must_match_input_rows(models: Path) -> None:
    runtime = OnnxRuntime.load(spec_for(row_collapsing_model(), models, name="collapse"))
    with pytest.raises(Internal, match=r"output 'y' has shape \[1, 4\], expected 3 rows"):
        runtime.run({"x": np.ones((3, 4), np.float32)})


def test_onnxruntime_errors_are_translated(runtime: OnnxRuntime) -> None:
    with pytest.raises(InvalidArgument, match="the model rejected the input") as info:
        runtime.run({"x": np.ones((2, 4), np.float64), "ids": np.ones((2, 2), np.int64)})
    assert info.value.__cause__ is not None


def test_warm_up_covers_every_bucket(runtime: OnnxRuntime) -> None:
    timings = runtime.warm_up()
    assert list(timings) == [1, 2, 4, 8]
    assert all(t > 0 for t in timings.values())


def test_close(models: Path) -> None:
    runtime = OnnxRuntime.load(spec_for(linear_model(), models, name="closing"))
    feeds, _ = runtime.validate(_inputs(1))
    runtime.close()
    assert runtime.closed
    with pytest.raises(Internal, match="closed"):
        runtime.run(feeds)


def test_unloadable_model_is_a_config_error(tmp_path: Path) -> None:
    spec = spec_for(linear_model(), tmp_path)
    spec.path.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="ONNX Runtime cannot load the model"):
        OnnxRuntime.load(spec)


def test_scalar_input_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    with pytest.raises(ConfigError, match="is a scalar; inputs need a batch axis"):
        OnnxRuntime.load(spec_for(model, tmp_path))


def test_read_only_input_from_the_wire(runtime: OnnxRuntime) -> None:
    x = np.ones((2, 4), np.float32)
    ids = np.zeros((2, 2), np.int64)
    tensors = [
        Tensor(name="x", datatype=DataType.FP32, shape=(2, 4), data=x.tobytes()),
        Tensor(name="ids", datatype=DataType.INT64, shape=(2, 2), data=ids.tobytes()),
    ]
    feeds, rows = runtime.validate(tensors)
    assert rows == 2 and not feeds["x"].flags.writeable
    assert_linear(runtime.run(feeds)["y"], x)


class FakePreload:
    """``onnxruntime.preload_dlls`` as a GPU build has it: counts its calls and
    prints what it would fail to load."""

    def __init__(self, says: str = "") -> None:
        self.calls = 0
        self.says = says

    def __call__(self) -> None:
        self.calls += 1
        if self.says:
            print(self.says)


@pytest.fixture
def preload(monkeypatch: pytest.MonkeyPatch) -> FakePreload:
    fake = FakePreload()
    monkeypatch.setattr(onnx_runtime, "_gpu_libraries", [])
    monkeypatch.setattr(ort, "preload_dlls", fake, raising=False)
    real_find_spec = onnx_runtime.importlib.util.find_spec
    monkeypatch.setattr(
        onnx_runtime.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "nvidia" else real_find_spec(name, *a),
    )
    return fake


def test_gpu_libraries_from_their_wheels_are_loaded_once_for_gpu_providers(
    preload: FakePreload,
) -> None:
    assert onnx_runtime.preload_gpu_libraries(["CPUExecutionProvider"]) is False
    assert preload.calls == 0  # a CPU model never touches them
    for _ in range(3):
        gpu_first = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert onnx_runtime.preload_gpu_libraries(gpu_first) is True
    assert onnx_runtime.preload_gpu_libraries(["TensorrtExecutionProvider"]) is True
    assert preload.calls == 1


def test_gpu_library_preload_skipped_without_the_nvidia_wheels(
    preload: FakePreload, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_runtime.importlib.util, "find_spec", lambda name, *a: None)
    assert onnx_runtime.preload_gpu_libraries(["CUDAExecutionProvider"]) is False
    assert preload.calls == 0


def test_what_the_gpu_library_preload_prints_is_logged_not_printed(
    preload: FakePreload, capsys: pytest.CaptureFixture[str]
) -> None:
    preload.says = "Failed to load libcudnn.so.9: not found"
    with capture_logs() as logs:
        onnx_runtime.preload_gpu_libraries(["CUDAExecutionProvider"])
    assert capsys.readouterr().out == ""
    assert [(e["event"], e["detail"]) for e in logs] == [
        ("GPU library preload", "Failed to load libcudnn.so.9: not found")
    ]
