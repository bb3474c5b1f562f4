"""The ONNX Runtime model runtime: provider checks, input validation, bucketed runs, warm-up.

The execution provider actually in use is read back from the session, never
assumed: ONNX Runtime falls back to CPU with only a log line when a GPU
provider cannot start. Thread counts are always set explicitly (ONNX Runtime's
default is the host's core count, whatever the container allows).
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fleet.errors import ConfigError, FleetError, Internal, InvalidArgument
from fleet.logging import get_logger
from fleet.tensor import DataType, Tensor
from worker import gpu
from worker.config import ModelConfig, trt_cache_path
from worker.repository import ModelSpec
from worker.runtime import Array, Feeds, RuntimeSpec

log = get_logger(__name__)


_OrtInvalidArgument: type[Exception] = ort.capi.onnxruntime_pybind11_state.InvalidArgument

GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
_gpu_libraries: list[bool] = []  # [loaded?] once tried


def preload_gpu_libraries(providers: Sequence[str]) -> bool:
    """Load CUDA and cuDNN from their pip wheels (``onnxruntime-gpu[cuda,cudnn]``,
    the ``nvidia`` packages) before a GPU session opens: ONNX Runtime's CUDA
    provider finds them only once loaded. Tried once per process, only for GPU
    providers and only where those wheels are installed; a CUDA installed on the
    host is found by the usual library path. Whether the wheels' libraries are
    loaded."""
    if not GPU_PROVIDERS & set(providers):
        return False
    if not _gpu_libraries:
        preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
        if preload is None or importlib.util.find_spec("nvidia") is None:
            _gpu_libraries.append(False)
        else:
            said = StringIO()  # it prints what it cannot load
            try:
                with contextlib.redirect_stdout(said):
                    preload()
                _gpu_libraries.append(True)
            except (OSError, RuntimeError) as exc:
                _gpu_libraries.append(False)
                said.write(str(exc))
            for line in filter(None, said.getvalue().splitlines()):
                log.warning("GPU library preload", detail=line)
    return _gpu_libraries[0]


@dataclass(frozen=True, kw_only=True, slots=True)
class IOSpec:
    """A model input or output: name, datatype and shape (None for a symbolic dim)."""

    name: str
    datatype: DataType
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """The shape as a user reads it: ``[n, 64]`` (``n``: rows, ``?``: any)."""
        dims = ["n" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(self.shape)]
        return f"[{', '.join(dims)}]"


def resolve_providers(
    requested: Sequence[str], *, available: Sequence[str], known: Sequence[str]
) -> list[str]:
    """The requested providers this build can run, in the requested order.

    A name ONNX Runtime does not know (a typo) is an error; a known provider
    this build lacks (CUDA on a CPU-only build) is dropped here and caught by
    :func:`check_provider` once the session exists.
    """
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown execution provider {', '.join(unknown)};"
            f" this ONNX Runtime build has {', '.join(available)}"
        )
    usable = [name for name in requested if name in available]
    if not usable:
        raise ConfigError(
            f"none of the requested providers ({', '.join(requested)}) is available;"
            f" this ONNX Runtime build has {', '.join(available)}"
        )
    return usable


def check_provider(requested: str, in_use: str, *, allow_cpu_fallback: bool) -> None:
    """Fail unless the session runs on the first requested provider (or fallback is allowed)."""
    if in_use == requested:
        return
    message = f"requested {requested}, ONNX Runtime is using {in_use}"
    if not allow_cpu_fallback:
        raise ConfigError(f"{message} (set allow_cpu_fallback = true to accept this)")
    log.warning("execution provider fallback", requested=requested, in_use=in_use)


class OnnxRuntime:
    """A loaded model version. ``run`` is thread-safe and called off the event loop."""

    accepts_parameters: frozenset[str] = frozenset()  # an ONNX model takes no request parameters

    def __init__(
        self,
        *,
        spec: ModelSpec,
        session: Any,
        provider: str,
        inputs: list[IOSpec],
        outputs: list[IOSpec],
        max_batch_size: int,
        buckets: tuple[int, ...],
        pad_to_bucket: bool,
        trt_cache_path: Path,
    ) -> None:
        self.spec = spec
        self.provider = provider
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self.buckets = buckets
        self.pad_to_bucket = pad_to_bucket
        self.trt_cache_path = trt_cache_path
        self._session: Any = session
        self._input_by_name = {io.name: io for io in inputs}
        self._output_names = [o.name for o in outputs]

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: ModelSpec) -> OnnxRuntime:
        """Open an inference session for ``spec`` on the providers its configuration asks for."""
        config = spec.config
        providers = resolve_providers(
            config.providers,
            available=ort.get_available_providers(),
            known=ort.get_all_providers(),
        )
        preload_gpu_libraries(providers)
        cache_path = _trt_cache_path(spec)
        options = _session_options(config)
        session = _open_session(spec, options, _with_options(providers, cache_path))
        in_use = session.get_providers()[0]
        check_provider(config.providers[0], in_use, allow_cpu_fallback=config.allow_cpu_fallback)
        inputs = [_io_spec(node, spec.path, "input") for node in session.get_inputs()]
        outputs = [_io_spec(node, spec.path, "output") for node in session.get_outputs()]
        max_batch, buckets, pad = _batching(spec, inputs)
        log.info(
            "model loaded",
            model=f"{spec.name}:{spec.version}",
            provider=in_use,
            intra_op_threads=config.intra_op_threads,
            inter_op_threads=config.inter_op_threads,
            max_batch_size=max_batch,
            buckets=list(buckets),
            pad_to_bucket=pad,
        )
        return cls(
            spec=spec,
            session=session,
            provider=in_use,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=max_batch,
            buckets=buckets,
            pad_to_bucket=pad,
            trt_cache_path=cache_path,
        )

    # -- requests ----------------------------------------------------------------------------

    def validate(self, inputs: Sequence[Tensor]) -> tuple[Feeds, int]:
        """Check a request's tensors against the signature; the arrays and the row count."""
        names = [t.name for t in inputs]
        if len(names) > 1 and len(set(names)) != len(names):
            duplicated = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgument(f"input {duplicated[0]!r} is given more than once")
        unknown = [n for n in names if n not in self._input_by_name]
        if unknown:
            raise InvalidArgument(
                f"unknown input {unknown[0]!r}; the model's inputs are {self._input_names()}"
            )
        missing = [n for n in self._input_by_name if n not in names]
        if missing:
            raise InvalidArgument(
                f"missing input {missing[0]!r}; the model's inputs are {self._input_names()}"
            )
        arrays: Feeds = {}
        rows: int | None = None
        for tensor in inputs:
            expected = self._input_by_name[tensor.name]
            if tensor.datatype is not expected.datatype:
                raise InvalidArgument(
                    f"input {tensor.name!r}: expected {expected.datatype.name},"
                    f" got {tensor.datatype.name}"
                )
            shape = tuple(tensor.shape)
            if not _fits(expected.shape, shape):
                raise InvalidArgument(
                    f"input {tensor.name!r}: expected shape {expected.describe()},"
                    f" got {list(shape)}"
                )
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidArgument(
                    f"inputs must have the same number of rows (dim 0): {names[0]!r} has"
                    f" {rows}, {tensor.name!r} has {shape[0]}"
                )
            arrays[tensor.name] = tensor.to_numpy()
        assert rows is not None  # a model has at least one input
        if rows < 1:
            raise InvalidArgument("inputs have no rows (dim 0 is 0)")
        if rows > self.max_batch_size:
            raise InvalidArgument(
                f"{rows} rows is more than this model's max batch size of {self.max_batch_size}"
            )
        return arrays, rows

    def run(self, feeds: Mapping[str, Array]) -> Feeds:
        """Run one batch; outputs have as many rows as the inputs."""
        session = self._session
        if session is None:
            raise Internal(f"model {self.spec.name}:{self.spec.version} is closed")
        rows = _rows(feeds)
        target = self.bucket_for(rows) if self.pad_to_bucket else rows
        if target != rows:
            feeds = {name: _pad_rows(arr, target) for name, arr in feeds.items()}
        try:
            results = session.run(self._output_names, dict(feeds))
        except _OrtInvalidArgument as exc:
            raise InvalidArgument(f"the model rejected the input: {exc}") from exc
        except Exception as exc:  # onnxruntime's other exception types
            raise Internal(f"model {self.spec.name}:{self.spec.version} failed: {exc}") from exc
        outputs: Feeds = {}
        for name, value in zip(self._output_names, results, strict=True):
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != target:
                got = list(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
                raise Internal(
                    f"model {self.spec.name}:{self.spec.version}: output {name!r} has shape {got},"
                    f" expected {target} rows"
                )
            outputs[name] = value[:rows] if target != rows else value
        return outputs

    def infer(self, inputs: Sequence[Tensor]) -> Feeds:
        """:meth:`validate` then :meth:`run`."""
        feeds, _ = self.validate(inputs)
        return self.run(feeds)

    def bucket_for(self, rows: int) -> int:
        """The smallest bucket that holds ``rows``."""
        for size in self.buckets:
            if size >= rows:
                return size
        raise InvalidArgument(
            f"{rows} rows is more than this model's max batch size of {self.max_batch_size}"
        )

    def warm_up(self) -> dict[int, float]:
        """Run every bucket size once with dummy input; seconds taken per bucket."""
        timings: dict[int, float] = {}
        for size in self.buckets:
            feeds = {spec.name: _dummy(spec, size) for spec in self.inputs}
            start = time.perf_counter()
            try:
                self.run(feeds)
            except FleetError as exc:
                raise Internal(f"warm-up with {size} rows failed: {exc.message}") from exc
            timings[size] = time.perf_counter() - start
        log.info(
            "model warmed up",
            model=f"{self.spec.name}:{self.spec.version}",
            ms={size: round(t * 1000, 3) for size, t in timings.items()},
        )
        return timings

    def close(self) -> None:
        """Release the session; runs already under way finish."""
        self._session = None

    @property
    def closed(self) -> bool:
        return self._session is None

    def _input_names(self) -> list[str]:
        return list(self._input_by_name)


def _trt_cache_path(spec: ModelSpec) -> Path:
    """Where TensorRT engines of this model file, runtime version and GPU are cached."""
    return trt_cache_path(
        spec.config.trt_cache_dir,
        model=spec.name,
        version=spec.version,
        file_sha256=spec.sha256(),
        ort_version=ort.__version__,
        gpu_name=gpu.device_name(),
    )


def _session_options(config: ModelConfig) -> ort.SessionOptions:
    """Thread counts, spinning and execution mode, always set explicitly."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    spin = "1" if config.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if config.inter_op_threads > 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _with_options(providers: Sequence[str], cache_path: Path) -> list[Any]:
    """The providers as ``InferenceSession`` takes them; TensorRT with its engine cache."""
    with_options: list[Any] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            cache_path.mkdir(parents=True, exist_ok=True)
            trt = {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(cache_path),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(cache_path),
            }
            with_options.append((name, trt))
        else:
            with_options.append(name)
    return with_options


def _open_session(spec: ModelSpec, options: ort.SessionOptions, providers: list[Any]) -> Any:
    try:
        return ort.InferenceSession(str(spec.path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own exception types
        raise ConfigError(f"{spec.path}: ONNX Runtime cannot load the model: {exc}") from exc


def _io_spec(node: Any, path: Path, kind: str) -> IOSpec:
    try:
        datatype = DataType.from_onnx(node.type)
    except InvalidArgument as exc:
        raise ConfigError(
            f"{path}: {kind} {node.name!r} has type {node.type}, which cannot be served"
            " (only tensors; convert classifiers with ZipMap disabled)"
        ) from exc
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node.shape)
    return IOSpec(name=node.name, datatype=datatype, shape=shape)


def _batching(spec: ModelSpec, inputs: list[IOSpec]) -> tuple[int, tuple[int, ...], bool]:
    """Max batch size, buckets and padding, given the model's batch axis."""
    config = spec.config
    for io in inputs:
        if not io.shape:
            raise ConfigError(
                f"{spec.path}: input {io.name!r} is a scalar; inputs need a batch axis (dim 0)"
            )
    fixed = [io.shape[0] for io in inputs if io.shape[0] is not None]
    if not fixed:
        return config.max_batch_size, config.buckets, config.pad_to_bucket
    size = min(fixed)
    if size != max(fixed):
        raise ConfigError(f"{spec.path}: inputs have different fixed batch sizes {fixed}")
    # A fixed batch axis accepts exactly that many rows: cap the batch there and pad to it.
    log.warning(
        "model has a fixed batch axis",
        model=f"{spec.name}:{spec.version}",
        batch_size=size,
        configured_max_batch_size=config.max_batch_size,
    )
    return min(size, config.max_batch_size), (size,), True


def _fits(want: Sequence[int | None], got: tuple[int, ...]) -> bool:
    """Whether a shape ``got`` is one the signature ``want`` takes: the same
    rank, and every dimension past the first as declared (``None``: any).
    A plain loop: this runs for every request."""
    if len(want) != len(got):
        return False
    for i in range(1, len(got)):
        dim = want[i]
        if dim is not None and dim != got[i]:
            return False
    return True


def _rows(feeds: Mapping[str, Array]) -> int:
    rows = {arr.shape[0] if arr.ndim else -1 for arr in feeds.values()}
    if len(rows) != 1 or min(rows) < 1:
        raise InvalidArgument(f"inputs must share a non-empty dim 0, got {sorted(rows)}")
    return rows.pop()


def _pad_rows(arr: Array, rows: int) -> Array:
    """Repeat the last row up to ``rows`` (a real row is always a valid input)."""
    extra = np.broadcast_to(arr[-1:], (rows - arr.shape[0], *arr.shape[1:]))
    return np.concatenate([arr, extra], axis=0)


def _dummy(spec: IOSpec, rows: int) -> Array:
    shape = (rows, *(1 if d is None else d for d in spec.shape[1:]))
    if spec.datatype is DataType.BYTES:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.datatype.numpy)


SPEC = RuntimeSpec(
    name="onnxruntime",
    load=OnnxRuntime.load,
    description="ONNX Runtime, on the execution providers the model's configuration lists",
)

__all__ = [
    "SPEC",
    "IOSpec",
    "OnnxRuntime",
    "check_provider",
    "preload_gpu_libraries",
    "resolve_providers",
]
