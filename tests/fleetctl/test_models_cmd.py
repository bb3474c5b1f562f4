"""``fleet models``: build without the tools extra, and push to S3."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from fleet import aws
from fleet.errors import ConfigError
from fleet.transport.memory import MemoryBroker
from fleetctl.cli import build_parser
from producer import Client
from tests.helpers import rows, running_worker
from worker.repository import ModelRepository, push_s3


def _run(*argv: str) -> int:
    """One ``fleet`` command's handler, in this process (no signal handlers installed)."""
    args = build_parser().parse_args(list(argv))
    return int(args.handler(args))


@pytest.mark.unit
@pytest.mark.parametrize("absent", ["sklearn", "skl2onnx"])
def test_build_without_the_tools_extra_says_what_to_install(
    absent: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, absent, None)  # `import <absent>` raises ImportError
    assert _run("models", "build", str(tmp_path / "models")) == 2
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "pip install 'inference-fleet[tools]'" in lines[0]
    assert ("scikit-learn" if absent == "sklearn" else "skl2onnx") in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.onnx"))


@pytest.mark.unit
def test_build_keeps_built_models_without_the_tools_extra(
    built_models: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing to build: the libraries that build are not needed.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert _run("models", "build", str(built_models)) == 0
    out, _err = capsys.readouterr()
    printed = [Path(line) for line in out.splitlines() if line.endswith("model.onnx")]
    assert sorted(p.parent.parent.name for p in printed) == ["digits", "mlp"]


# ---------------------------------------------------------------- push (moto's S3)


def _repository(tmp_path: Path, built_models: Path, unique_model: str) -> Path:
    """``<unique>-digits/1`` (the demo model) and ``<unique>-small/1`` (the same
    model file, its own config, no metadata)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / f"{unique_model}-digits").symlink_to(built_models / "digits", target_is_directory=True)
    small = root / f"{unique_model}-small" / "1"
    small.mkdir(parents=True)
    shutil.copyfile(built_models / "digits" / "1" / "model.onnx", small / "model.onnx")
    (small / "config.toml").write_text("max_batch_size = 8\nmax_wait_ms = 1.0\n")
    return root


def _keys(name: str) -> set[str]:
    return {o["Key"] for o in aws.s3_client().list_objects_v2(Bucket=name).get("Contents", [])}


@pytest.mark.aws
async def test_push_then_a_worker_serves_the_models_from_s3(
    bucket: str,
    tmp_path: Path,
    built_models: Path,
    unique_model: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _repository(tmp_path, built_models, unique_model)
    uri = f"s3://{bucket}/fleet/models"
    assert _run("models", "push", "--repository", str(root), "--to", uri) == 0
    out = capsys.readouterr().out
    assert "5 uploaded, 0 unchanged, 0 deleted" in out
    digits, small = (
        f"fleet/models/{unique_model}-digits/1/",
        f"fleet/models/{unique_model}-small/1/",
    )
    assert _keys(bucket) == {
        *(digits + f for f in ("model.onnx", "config.toml", "metadata.json")),
        *(small + f for f in ("model.onnx", "config.toml")),
    }

    # what the worker's loader reads back is what was pushed
    local = ModelRepository(root).discover()
    remote = ModelRepository(uri, cache_dir=tmp_path / "copy").discover()
    assert [(s.name, s.version, s.config) for s in remote] == [
        (s.name, s.version, s.config) for s in local
    ]
    assert [s.sha256() for s in remote] == [s.sha256() for s in local]
    assert remote[1].config.max_batch_size == 8

    # a worker started with the s3:// repository answers
    broker = f"memory://{unique_model}"
    try:
        async with running_worker(broker, uri) as worker, Client(broker) as client:  # type: ignore[arg-type]
            assert worker.models == [f"{unique_model}-digits", f"{unique_model}-small"]
            reply = await client.infer(f"{unique_model}-small", {"input": rows(64, 2)})
            assert reply["label"].shape == (2,)
    finally:
        MemoryBroker.reset(unique_model)

    # again: nothing changed, nothing uploaded
    assert _run("models", "push", "--repository", str(root), "--to", uri) == 0
    assert "0 uploaded, 5 unchanged, 0 deleted" in capsys.readouterr().out

    # a model gone from the repository goes from the bucket with --delete only
    shutil.rmtree(root / f"{unique_model}-small")
    assert _run("models", "push", "--repository", str(root), "--to", uri) == 0
    assert "0 deleted" in capsys.readouterr().out
    assert _run("models", "push", "--repository", str(root), "--to", uri, "--delete") == 0
    assert "0 uploaded, 3 unchanged, 2 deleted" in capsys.readouterr().out
    assert {k.rpartition("/")[0] + "/" for k in _keys(bucket)} == {digits}


@pytest.mark.aws
def test_push_of_a_broken_repository_uploads_nothing(bucket: str, tmp_path: Path) -> None:
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "1" / "config.toml").write_text("max_batch_size = 4\n")
    with pytest.raises(ConfigError, match=r"no model\.onnx"):
        push_s3(tmp_path / "repo", f"s3://{bucket}/models")
    assert _keys(bucket) == set()


@pytest.mark.aws
def test_push_to_a_missing_bucket_is_a_config_error(
    bucket: str, tmp_path: Path, built_models: Path
) -> None:
    with pytest.raises(ConfigError, match="NoSuchBucket"):
        push_s3(built_models, f"s3://{bucket}-absent/models")


@pytest.mark.unit
def test_push_refuses_a_destination_that_is_not_s3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("models", "push", "--repository", str(tmp_path), "--to", str(tmp_path)) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err


# ---------------------------------------------------------------------- list, label


def _two_versions(tmp_path: Path, built_models: Path) -> Path:
    root = tmp_path / "repo"
    for v in ("1", "2"):
        shutil.copytree(built_models / "digits" / "1", root / "digits" / v)
    (root / "digits" / "3").mkdir()  # unreadable: no model file
    return root


@pytest.mark.unit
def test_label_then_list(
    tmp_path: Path, built_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(_two_versions(tmp_path, built_models))
    assert _run("models", "label", "digits", "stable", "1", "--default", "--repository", root) == 0
    assert _run("models", "label", "digits", "live", "1=90", "2=10", "--repository", root) == 0
    out = capsys.readouterr().out
    assert "digits: stable -> 1 (default: stable)" in out
    assert "digits: live -> 1=90 2=10 (default: stable)" in out
    assert _run("models", "list", "--repository", root) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "digits: versions 1* 2*; default stable"
    assert "  label live: 1=90 2=10" in listed and "  label stable: 1" in listed
    assert any(line.startswith("  version 3 unreadable: no model.onnx") for line in listed)
    assert _run("models", "list", "--repository", root, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["digits"]["labels"]["live"] == {"1": 90.0, "2": 10.0}
    assert _run("models", "label", "digits", "live", "--remove", "--repository", root) == 0
    capsys.readouterr()
    assert _run("models", "list", "--repository", root) == 0
    assert "live" not in capsys.readouterr().out


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["digits", "stable"], 2, "VERSION[=WEIGHT] ... or --remove"),
        (["digits", "stable", "1", "--remove"], 2, "VERSION[=WEIGHT] ... or --remove"),
        (["digits", "stable", "1=x"], 2, "must be a number"),
        (["digits", "stable", "7"], 1, "no version 7 in the repository"),
        (["nope", "stable", "1"], 1, "model 'nope' has no readable version"),
        (["digits", "1", "2"], 1, "label '1': a label starts with a letter"),
    ],
)
def test_label_errors_are_clear_and_write_nothing(
    tmp_path: Path,
    built_models: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    words: str,
) -> None:
    root = _two_versions(tmp_path, built_models)
    assert _run("models", "label", *argv, "--repository", str(root)) == code
    err = capsys.readouterr().err
    assert err.startswith("fleet models label: ") and words in err
    assert not (root / "digits" / "model.toml").exists()
