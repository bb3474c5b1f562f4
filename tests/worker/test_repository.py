from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import ConfigError, ModelNotFound
from worker.repository import ModelRepository, parse_s3_uri, sync_s3, version_key

pytestmark = pytest.mark.unit


def _version(root: Path, model: str, version: str, config: str | None = None) -> Path:
    d = root / model / version
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"onnx")
    if config is not None:
        (d / "config.toml").write_text(config)
    return d


def test_a_scan_reports_what_it_cannot_read_and_reads_the_rest(tmp_path: Path) -> None:
    """A watcher's scan never raises for one bad directory: a version being
    written, a bad config, a bad model name and an empty repository are
    reported (a start-up discovery raises for each)."""
    repo = ModelRepository(tmp_path)
    assert repo.scan().specs == []  # empty: nothing yet, no error
    _version(tmp_path, "digits", "1")
    (tmp_path / "digits" / "2").mkdir()  # being written
    _version(tmp_path, "digits", "3", config="max_batch_size = -1\n")
    _version(tmp_path, "Bad Name", "1")

    scan = repo.scan()

    assert [(s.name, s.version) for s in scan.specs] == [("digits", "1")]
    problems = {p.relative_to(tmp_path).as_posix(): why for p, why in scan.problems}
    assert set(problems) == {"Bad Name", "digits/2", "digits/3"}
    assert "no model.onnx" in problems["digits/2"]
    assert "max_batch_size" in problems["digits/3"]
    assert set(scan.signatures) == {("digits", "1"), ("digits", "2"), ("digits", "3")}
    assert scan.signatures[("digits", "2")] == ()
    (tmp_path / "digits" / "2" / "model.onnx").write_bytes(b"onnx")
    assert repo.scan().signatures[("digits", "2")] != ()  # what a watcher sees change
    with pytest.raises(ConfigError):
        repo.discover()


def test_discover_every_version_in_order(tmp_path: Path) -> None:
    for version in ("10", "2", "beta", "1"):
        _version(tmp_path, "digits", version)
    _version(tmp_path, "mlp", "1", config="max_batch_size = 64\n")
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / ".cache").mkdir()

    specs = ModelRepository(tmp_path).discover()

    assert [(s.name, s.version) for s in specs] == [
        ("digits", "1"),
        ("digits", "2"),
        ("digits", "10"),
        ("digits", "beta"),
        ("mlp", "1"),
    ]
    mlp = specs[-1]
    assert mlp.path == tmp_path / "mlp" / "1" / "model.onnx"
    assert mlp.config.max_batch_size == 64
    assert specs[0].config.max_batch_size == 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        mlp.version = "2"  # type: ignore[misc]


def test_version_key_orders_numbers_numerically() -> None:
    assert sorted(["10", "9", "a", "100", "B"], key=version_key) == ["9", "10", "100", "B", "a"]


def test_get_newest_or_named_version(tmp_path: Path) -> None:
    for version in ("1", "2", "10"):
        _version(tmp_path, "digits", version)
    repo = ModelRepository(str(tmp_path))
    assert repo.get("digits").version == "10"
    assert repo.get("digits", "2").version == "2"
    with pytest.raises(ModelNotFound, match=r"no version '3' \(versions: \['1', '2', '10'\]\)"):
        repo.get("digits", "3")
    with pytest.raises(ModelNotFound, match=r"model 'mlp' is not in .* \(models: \['digits'\]\)"):
        repo.get("mlp")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ModelRepository(tmp_path / "nowhere").discover()


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        ModelRepository(tmp_path / "file").discover()


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is empty \(expected <model>/<version>/model.onnx\)"):
        ModelRepository(tmp_path).discover()


def test_version_without_model_file(tmp_path: Path) -> None:
    _version(tmp_path, "digits", "1")
    (tmp_path / "digits" / "2").mkdir()
    with pytest.raises(ConfigError, match=r"digits/2: no model.onnx"):
        ModelRepository(tmp_path).discover()


def test_model_without_versions(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    with pytest.raises(ConfigError, match="has no version directories"):
        ModelRepository(tmp_path).discover()


def test_bad_model_name(tmp_path: Path) -> None:
    _version(tmp_path, "bad name!", "1")
    with pytest.raises(ConfigError, match="model name 'bad name!' must be"):
        ModelRepository(tmp_path).discover()


def test_bad_config_names_file_and_field(tmp_path: Path) -> None:
    _version(tmp_path, "digits", "1", config="max_batch_size = -1\n")
    with pytest.raises(
        ConfigError, match=r"digits/1/config.toml: 1 bad field\(s\):\n  max_batch_size: "
    ):
        ModelRepository(tmp_path).discover()


def test_symlinked_model_directories_are_followed(tmp_path: Path) -> None:
    _version(tmp_path / "store", "digits", "1")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "alias").symlink_to(tmp_path / "store" / "digits")
    assert [s.name for s in ModelRepository(tmp_path / "repo").discover()] == ["alias"]


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/models", ("bucket", "models/")),
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
    ],
)
def test_parse_s3_uri(uri: str, parsed: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == parsed


@pytest.fixture
def s3() -> Iterator[Any]:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    with moto.mock_aws():
        client = boto3.client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="models")
        yield client


def test_s3_root_copies_only_model_files(s3: Any, tmp_path: Path) -> None:
    for key, body in [
        ("prod/digits/1/model.onnx", b"digits"),
        ("prod/digits/1/config.toml", b"max_batch_size = 8\n"),
        ("prod/digits/1/notes.txt", b"not copied"),
        ("prod/mlp/2/model.onnx", b"mlp"),
        ("prod/README.md", b"not copied"),
        ("other/x/1/model.onnx", b"another prefix"),
    ]:
        s3.put_object(Bucket="models", Key=key, Body=body)
    cache = tmp_path / "cache"

    copied = sync_s3("s3://models/prod", cache, client=s3)
    assert sorted(p.relative_to(cache).as_posix() for p in copied) == [
        "digits/1/config.toml",
        "digits/1/model.onnx",
        "mlp/2/model.onnx",
    ]
    assert sync_s3("s3://models/prod", cache, client=s3) == []  # unchanged: nothing copied

    s3.delete_object(Bucket="models", Key="prod/mlp/2/model.onnx")
    sync_s3("s3://models/prod", cache, client=s3)
    assert not (cache / "mlp").exists()


def test_s3_repository_discovers_from_the_cache(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3.put_object(Bucket="models", Key="digits/3/model.onnx", Body=b"x")
    specs = ModelRepository("s3://models", cache_dir=tmp_path / "cache").discover()
    assert [(s.name, s.version) for s in specs] == [("digits", "3")]
    assert specs[0].path == tmp_path / "cache" / "digits" / "3" / "model.onnx"


def test_s3_missing_bucket_is_a_config_error(s3: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s3://absent: .*NoSuchBucket"):
        sync_s3("s3://absent", tmp_path, client=s3)
