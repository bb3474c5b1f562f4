"""The model repository: ``<root>/<model>/<version>/model.onnx`` (+ ``config.toml``).

The root is a local directory or ``s3://bucket/prefix``; an S3 root is copied
into a local cache directory first (only the models' files), then read the same
way. Versions are directory names, ordered numerically where numeric
(``1 < 2 < 10``), then by name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fleet.contract import check_model_name
from fleet.errors import ConfigError, FleetError, ModelNotFound
from fleet.logging import get_logger
from worker.config import CONFIG_FILE, ModelConfig

log = get_logger(__name__)

MODEL_FILE = "model.onnx"
#: The files of a version that an S3 root contributes to the local cache.
MODEL_FILES = frozenset({MODEL_FILE, CONFIG_FILE, "metadata.json"})


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """One model version found in the repository."""

    name: str
    version: str
    path: Path  # the model.onnx file
    config: ModelConfig

    def sha256(self) -> str:
        """The hex SHA-256 of the model file."""
        return file_sha256(self.path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions first, in numeric order; then the others by name."""
    return (0, int(version), version) if version.isdigit() else (1, 0, version)


class ModelRepository:
    """Finds the model versions under a local or S3 root."""

    def __init__(self, root: str | Path, *, cache_dir: Path | None = None) -> None:
        self.uri = str(root)
        self._s3 = isinstance(root, str) and root.startswith("s3://")
        if self._s3:
            self.root = cache_dir or _default_s3_cache(self.uri)
        else:
            self.root = Path(root)
        self._specs: list[ModelSpec] | None = None

    def discover(self) -> list[ModelSpec]:
        """Every version of every model, by model name then version."""
        if self._s3:
            sync_s3(self.uri, self.root)
        specs = _discover_local(self.root, label=self.uri)
        self._specs = specs
        return list(specs)

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """One version of a model (the newest when ``version`` is None)."""
        specs = self._specs if self._specs is not None else self.discover()
        found = [s for s in specs if s.name == name]
        if not found:
            known = sorted({s.name for s in specs})
            raise ModelNotFound(f"model {name!r} is not in {self.uri} (models: {known})")
        if version is None:
            return found[-1]
        for spec in found:
            if spec.version == version:
                return spec
        versions = [s.version for s in found]
        raise ModelNotFound(f"model {name!r} has no version {version!r} (versions: {versions})")


def _discover_local(root: Path, *, label: str) -> list[ModelSpec]:
    if not root.exists():
        raise ConfigError(f"model repository {label} does not exist")
    if not root.is_dir():
        raise ConfigError(f"model repository {label} is not a directory")
    specs: list[ModelSpec] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        try:
            name = check_model_name(model_dir.name)
        except FleetError as exc:
            raise ConfigError(f"{model_dir}: {exc.message}") from exc
        versions = sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and _visible(p)),
            key=lambda p: version_key(p.name),
        )
        if not versions:
            raise ConfigError(
                f"{model_dir}: model {name!r} has no version directories"
                f" (expected {model_dir}/<version>/{MODEL_FILE})"
            )
        for version_dir in versions:
            model_file = version_dir / MODEL_FILE
            if not model_file.is_file():
                raise ConfigError(f"{version_dir}: no {MODEL_FILE} in this version directory")
            config = ModelConfig.from_toml(version_dir / CONFIG_FILE)
            specs.append(
                ModelSpec(name=name, version=version_dir.name, path=model_file, config=config)
            )
    if not specs:
        raise ConfigError(
            f"model repository {label} is empty (expected <model>/<version>/{MODEL_FILE})"
        )
    log.info("models discovered", root=label, models=[f"{s.name}:{s.version}" for s in specs])
    return specs


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def _default_s3_cache(uri: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(base) / "fleet" / "models" / key


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"model repository {uri!r}: no bucket name")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def sync_s3(uri: str, dest: Path, *, client: Any = None) -> list[Path]:
    """Copy the models' files under an S3 prefix into ``dest``; returns the files copied.

    Only ``<model>/<version>/{model.onnx,config.toml,metadata.json}`` are copied;
    a file already in ``dest`` with the same size and ETag is kept.
    """
    bucket, prefix = parse_s3_uri(uri)
    if client is None:
        try:
            import boto3
        except ImportError as exc:
            raise ConfigError(
                f"model repository {uri}: boto3 is needed for s3:// roots"
                " (pip install 'inference-fleet[aws]')"
            ) from exc
        client = boto3.client("s3")
    from botocore.exceptions import BotoCoreError, ClientError

    copied: list[Path] = []
    seen: set[Path] = set()
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                if len(rel.parts) != 3 or rel.name not in MODEL_FILES or ".." in rel.parts:
                    continue
                target = dest.joinpath(*rel.parts)
                seen.add(target)
                etag = str(obj.get("ETag", "")).strip('"')
                marker = target.with_name(f".{target.name}.etag")
                if (
                    target.is_file()
                    and target.stat().st_size == obj["Size"]
                    and marker.is_file()
                    and marker.read_text() == etag
                ):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.part")
                client.download_file(bucket, obj["Key"], str(partial))
                partial.replace(target)
                marker.write_text(etag)
                copied.append(target)
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(f"model repository {uri}: {exc}") from exc
    _remove_stale(dest, seen)
    log.info("model repository synced", uri=uri, cache=str(dest), files=len(copied))
    return copied


def _remove_stale(dest: Path, keep: set[Path]) -> None:
    """Drop cached model files whose object is gone from the bucket."""
    if not dest.is_dir():
        return
    for path in dest.glob("*/*/*"):
        if path.name in MODEL_FILES and path not in keep:
            path.unlink()
            path.with_name(f".{path.name}.etag").unlink(missing_ok=True)
    for version_dir in dest.glob("*/*"):
        if version_dir.is_dir() and not any(version_dir.glob("[!.]*")):
            for leftover in version_dir.glob(".*.etag"):
                leftover.unlink()
            if not any(version_dir.iterdir()):
                version_dir.rmdir()
    for model_dir in dest.glob("*"):
        if model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()


__all__ = [
    "MODEL_FILE",
    "ModelRepository",
    "ModelSpec",
    "file_sha256",
    "parse_s3_uri",
    "sync_s3",
    "version_key",
]
