from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import worker.config
from fleet.errors import ConfigError
from worker.config import (
    ModelConfig,
    available_cpus,
    cgroup_cpu_limit,
    default_buckets,
    trt_cache_path,
)

pytestmark = pytest.mark.unit


def test_defaults_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host without a GPU, whatever this one has: the defaults follow gpu_present().
    monkeypatch.setattr(worker.config, "gpu_present", lambda **_kw: False)
    config = ModelConfig()
    assert config.max_batch_size == 32
    assert config.max_wait_ms == 0.0
    assert config.providers == ("CPUExecutionProvider",)
    assert config.inter_op_threads == 1
    assert config.intra_op_threads == max(1, available_cpus() - 1)
    assert config.buckets == (1, 2, 4, 8, 16, 32)
    assert config.pad_to_bucket is False
    assert config.allow_cpu_fallback is True
    assert config.trt_cache_dir is None
    assert not config.on_gpu


def test_defaults_with_a_gpu_provider_first() -> None:
    config = ModelConfig.from_mapping(
        {
            "providers": [
                "TensorrtExecutionProvider",
                "CUDAExecutionProvider",
                "CPUExecutionProvider",
            ]
        }
    )
    assert config.on_gpu
    assert config.allow_cpu_fallback is False
    assert config.pad_to_bucket is True


def test_explicit_values_win_over_provider_defaults() -> None:
    config = ModelConfig.from_mapping(
        {"providers": ["CUDAExecutionProvider"], "allow_cpu_fallback": True, "pad_to_bucket": False}
    )
    assert config.allow_cpu_fallback is True
    assert config.pad_to_bucket is False


@pytest.mark.parametrize(
    ("max_batch", "buckets"),
    [
        pytest.param(1, (1,), id="one"),
        pytest.param(8, (1, 2, 4, 8), id="power-of-two"),
        pytest.param(48, (1, 2, 4, 8, 16, 32, 48), id="not-a-power-of-two"),
    ],
)
def test_default_buckets(max_batch: int, buckets: tuple[int, ...]) -> None:
    assert default_buckets(max_batch) == buckets
    assert ModelConfig(max_batch_size=max_batch).buckets == buckets


def test_given_buckets_are_sorted_and_end_at_the_max_batch() -> None:
    config = ModelConfig.from_mapping({"max_batch_size": 20, "buckets": [8, 1, 8, 4]})
    assert config.buckets == (1, 4, 8, 20)


def test_explicit_thread_count_is_kept() -> None:
    assert ModelConfig(intra_op_threads=3).intra_op_threads == 3


def test_read_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('max_batch_size = 16\nmax_wait_ms = 5\nproviders = ["CPUExecutionProvider"]\n')
    config = ModelConfig.from_toml(path)
    assert (config.max_batch_size, config.max_wait_ms) == (16, 5.0)
    assert config.buckets == (1, 2, 4, 8, 16)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert ModelConfig.from_toml(tmp_path / "config.toml") == ModelConfig()


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_batch_size = = 3\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not valid TOML"):
        ModelConfig.from_toml(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "max_batch_size = 0",
            r"\n  max_batch_size: .*greater than or equal to 1",
            id="zero-batch",
        ),
        pytest.param(
            'max_batch_size = "many"', r"\n  max_batch_size: .*valid integer", id="not-an-int"
        ),
        pytest.param("max_wait_ms = -1", r"\n  max_wait_ms: ", id="negative-wait"),
        pytest.param("providers = []", r"\n  providers: ", id="no-providers"),
        pytest.param(
            'providers = ["A", "A"]', r"\n  providers: .*listed twice", id="duplicate-provider"
        ),
        pytest.param("inter_op_threads = 0", r"\n  inter_op_threads: ", id="no-inter-threads"),
        pytest.param("intra_op_threads = -2", r"\n  intra_op_threads: ", id="negative-threads"),
        pytest.param(
            "buckets = [1, 64]",
            r"\n  buckets: .*between 1 and max_batch_size \(32\)",
            id="bucket-over-max",
        ),
        pytest.param("buckets = []", r"\n  buckets: .*at least one", id="no-buckets"),
        pytest.param(
            "max_batch = 8",
            r"\n  max_batch: unknown field \(known fields: runtime, max_batch_size",
            id="unknown-field",
        ),
        pytest.param('runtime = ""', r"\n  runtime: ", id="empty-runtime"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        ModelConfig.from_toml(path)
    assert info.value.message.startswith(f"{path}: 1 bad field(s):")


def test_every_bad_field_is_listed(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("max_batch_size = 0\ninter_op_threads = 0\n")
    with pytest.raises(ConfigError, match=r"2 bad field\(s\)") as info:
        ModelConfig.from_toml(path)
    lines = info.value.message.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "max_batch_size",
        "inter_op_threads",
    ]


def test_runtime_defaults_to_onnxruntime(tmp_path: Path) -> None:
    assert ModelConfig().runtime == "onnxruntime"
    path = tmp_path / "config.toml"
    path.write_text('runtime = "other"\n')
    assert ModelConfig.from_toml(path).runtime == "other"  # checked when the model loads


@pytest.mark.parametrize(
    ("content", "limit"),
    [
        pytest.param("max 100000\n", None, id="unlimited"),
        pytest.param("150000 100000\n", 2, id="one-and-a-half-rounds-up"),
        pytest.param("50000 100000\n", 1, id="half"),
        pytest.param("400000 100000\n", 4, id="four"),
        pytest.param("garbage\n", None, id="unreadable"),
    ],
)
def test_cgroup_cpu_limit(tmp_path: Path, content: str, limit: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(content)
    assert cgroup_cpu_limit(path) == limit


def test_available_cpus_is_capped_by_the_quota(tmp_path: Path) -> None:
    path = tmp_path / "cpu.max"
    path.write_text("100000 100000\n")
    assert available_cpus(path) == 1
    assert available_cpus(tmp_path / "absent") >= 1


def test_trt_cache_path_is_keyed_on_everything(tmp_path: Path) -> None:
    base = {
        "model": "mlp",
        "version": "1",
        "file_sha256": "ab" * 32,
        "ort_version": "1.31.1",
        "gpu_name": "NVIDIA H100 80GB HBM3",
    }

    def path_for(**overrides: str) -> Path:
        parts = {**base, **overrides}
        return trt_cache_path(
            tmp_path,
            model=parts["model"],
            version=parts["version"],
            file_sha256=parts["file_sha256"],
            ort_version=parts["ort_version"],
            gpu_name=parts["gpu_name"],
        )

    path = path_for()
    assert path.is_relative_to(tmp_path)
    assert "NVIDIA-H100-80GB-HBM3" in str(path)
    others = {
        "model": "digits",
        "version": "2",
        "file_sha256": "cd" * 32,
        "ort_version": "1.32.0",
        "gpu_name": "NVIDIA L4",
    }
    for key, other in others.items():
        assert path_for(**{key: other}) != path, key


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (8, 7)])
def test_intra_op_threads_leave_a_cpu_to_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int
) -> None:
    monkeypatch.setattr(worker.config, "available_cpus", lambda: cpus)
    assert ModelConfig().intra_op_threads == threads
    assert ModelConfig(intra_op_threads=cpus).intra_op_threads == cpus  # as asked


def test_inline_bound_is_read_in_milliseconds() -> None:
    assert ModelConfig().inline_below_ms == 1.0
    assert ModelConfig(inline_below_ms=0).inline_below_ms == 0.0
    with pytest.raises(ValidationError):
        ModelConfig(inline_below_ms=-1)
