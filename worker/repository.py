"""The model repository: ``<root>/<model>/<version>/model.onnx`` (+ ``config.toml``).

The root is a local directory or ``s3://bucket/prefix``; an S3 root is copied
into a local cache directory first (only the models' files, and each model's
``model.toml``), then read the same way. Versions are directory names, ordered
numerically where numeric (``1 < 2 < 10``), then by name.

:func:`push_s3` (``fleet models push``) uploads a local repository to an S3
root in the layout :func:`sync_s3` reads:
``<prefix>/<model>/<version>/{model.onnx,config.toml,metadata.json}`` and
``<prefix>/<model>/model.toml``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fleet import aws
from fleet.contract import check_model_name
from fleet.errors import ConfigError, FleetError, ModelNotFound, Unavailable
from fleet.logging import get_logger
from worker.config import CONFIG_FILE, ModelConfig
from worker.serving_policy import POLICY_FILE, ModelPolicy
from worker.versions import version_key

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

    def scan(self) -> Scan:
        """What the repository holds now, for a watcher: every readable
        version, and each version directory that cannot be read with why
        (one being written, a bad config) in place of an error. An S3 root
        is synced first (its errors raise ``ConfigError``)."""
        if self._s3:
            sync_s3(self.uri, self.root, quiet=True)
        found = Scan()
        found.specs.extend(_discover_local(self.root, label=self.uri, problems=found.problems))
        for spec in found.specs:
            found.signatures[(spec.name, spec.version)] = signature(spec.path.parent)
        for where, _ in found.problems:
            if where.parent.parent == self.root:  # a version directory
                found.signatures[(where.parent.name, where.name)] = signature(where)
        return found

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


@dataclass(slots=True)
class Scan:
    """One look at a repository (:meth:`ModelRepository.scan`)."""

    specs: list[ModelSpec] = field(default_factory=list)
    #: directories that could not be read, and why
    problems: list[tuple[Path, str]] = field(default_factory=list)
    #: (model, version) -> what its files look like now (see :func:`signature`)
    signatures: dict[tuple[str, str], tuple[tuple[str, int, int], ...]] = field(
        default_factory=dict
    )


def signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of each file in ``directory``: what
    changes while a version is being written."""
    out: list[tuple[str, int, int]] = []
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        with contextlib.suppress(OSError):  # gone meanwhile
            st = path.stat()
            out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _discover_local(
    root: Path, *, label: str, problems: list[tuple[Path, str]] | None = None
) -> list[ModelSpec]:
    """Every version under ``root``. With ``problems`` (a watcher's scan), a
    directory that cannot be read is added to it and skipped; without, it
    raises ``ConfigError``, as does an empty repository."""

    def problem(where: Path, message: str) -> None:
        if problems is None:
            raise ConfigError(f"{where}: {message}")
        problems.append((where, message))

    if not root.exists():
        raise ConfigError(f"model repository {label} does not exist")
    if not root.is_dir():
        raise ConfigError(f"model repository {label} is not a directory")
    specs: list[ModelSpec] = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        try:
            name = check_model_name(model_dir.name)
        except FleetError as exc:
            problem(model_dir, exc.message)
            continue
        versions = sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and _visible(p)),
            key=lambda p: version_key(p.name),
        )
        if not versions:
            problem(
                model_dir,
                f"model {name!r} has no version directories"
                f" (expected {model_dir}/<version>/{MODEL_FILE})",
            )
        for version_dir in versions:
            model_file = version_dir / MODEL_FILE
            if not model_file.is_file():
                problem(version_dir, f"no {MODEL_FILE} in this version directory")
                continue
            try:
                config = ModelConfig.from_toml(version_dir / CONFIG_FILE)
            except ConfigError as exc:
                if problems is None:
                    raise
                problems.append((version_dir, exc.message))
                continue
            specs.append(
                ModelSpec(name=name, version=version_dir.name, path=model_file, config=config)
            )
    if problems is not None:
        return specs
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


def sync_s3(uri: str, dest: Path, *, client: Any = None, quiet: bool = False) -> list[Path]:
    """Copy the models' files under an S3 prefix into ``dest``; returns the files copied.

    Only ``<model>/<version>/{model.onnx,config.toml,metadata.json}`` are copied;
    a file already in ``dest`` with the same size and ETag is kept.
    """
    bucket, prefix = parse_s3_uri(uri)
    client = client if client is not None else _s3(uri)
    from botocore.exceptions import BotoCoreError, ClientError

    copied: list[Path] = []
    seen: set[Path] = set()
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = PurePosixPath(obj["Key"][len(prefix) :])
                if not _is_model_file(rel):
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
    if copied or not quiet:  # a watcher polls: say only what changed
        log.info("model repository synced", uri=uri, cache=str(dest), files=len(copied))
    return copied


@dataclass(frozen=True, kw_only=True, slots=True)
class Pushed:
    """What :func:`push_s3` did: the keys it uploaded, left as they were (same
    SHA-256) and deleted (``delete=True``)."""

    uploaded: list[str]
    unchanged: list[str]
    deleted: list[str]


def push_s3(root: Path, uri: str, *, client: Any = None, delete: bool = False) -> Pushed:
    """Upload the model repository at ``root`` to ``uri`` (``s3://bucket/prefix``).

    The repository is read first as a worker reads it (every version has its
    ``model.onnx``, every ``config.toml`` is valid), so a broken one uploads
    nothing. Each version's ``config.toml`` and ``metadata.json`` go before its
    ``model.onnx``. An object whose ``sha256`` metadata matches the file is
    left alone. ``delete``: also delete the model files under the prefix that
    ``root`` does not have (versions removed since the last push).
    """
    specs = _discover_local(Path(root), label=str(root))
    policies = sorted({s.path.parent.parent / POLICY_FILE for s in specs})
    policies = [p for p in policies if p.is_file()]
    for path in policies:  # checked as a worker reads it: a bad one uploads nothing
        ModelPolicy.read(path.parent, [s.version for s in specs if s.name == path.parent.name])
    bucket, prefix = parse_s3_uri(uri)
    client = client if client is not None else _s3(uri)
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    done = Pushed(uploaded=[], unchanged=[], deleted=[])
    try:
        for spec in specs:
            for name in (CONFIG_FILE, "metadata.json", MODEL_FILE):
                path = spec.path.with_name(name)
                if path.is_file():
                    key = f"{prefix}{spec.name}/{spec.version}/{name}"
                    pushed = _upload(client, bucket, key, path)
                    (done.uploaded if pushed else done.unchanged).append(key)
        for path in policies:  # after the versions its labels name
            key = f"{prefix}{path.parent.name}/{POLICY_FILE}"
            pushed = _upload(client, bucket, key, path)
            (done.uploaded if pushed else done.unchanged).append(key)
        if delete:
            keep = {*done.uploaded, *done.unchanged}
            for key in _model_keys(client, bucket, prefix):
                if key not in keep:
                    client.delete_object(Bucket=bucket, Key=key)
                    done.deleted.append(key)
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        raise _s3_error(f"push to {uri}", exc) from exc
    log.info(
        "model repository pushed",
        uri=uri,
        uploaded=len(done.uploaded),
        unchanged=len(done.unchanged),
        deleted=len(done.deleted),
    )
    return done


def upload_policy(uri: str, model: str, path: Path) -> str:
    """Upload a model's ``model.toml`` to the S3 root ``uri``; its key."""
    bucket, prefix = parse_s3_uri(uri)
    key = f"{prefix}{model}/{POLICY_FILE}"
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _upload(_s3(uri), bucket, key, path)
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        raise _s3_error(f"upload to {uri}", exc) from exc
    return f"s3://{bucket}/{key}"


def update_policy(
    root: str | Path, model: str, change: Callable[[ModelPolicy], ModelPolicy]
) -> tuple[ModelPolicy, str]:
    """Change ``model``'s ``model.toml`` in the repository at ``root`` (a
    directory or ``s3://``): read it (none: every default), apply ``change``,
    check the result against the model's versions there, and write it whole
    (a watcher never reads half a file). The new policy and where it went;
    :class:`~fleet.errors.ConfigError` or ``ModelNotFound`` and nothing
    written otherwise."""
    repo = ModelRepository(root)
    versions = [s.version for s in repo.scan().specs if s.name == model]
    if not versions:
        raise ModelNotFound(f"model {model!r} has no readable version in {repo.uri}")
    model_dir = repo.root / model
    policy = ModelPolicy.read(model_dir, versions) or ModelPolicy()
    new = change(policy)
    new.check(versions, source=f"{repo.uri}/{model}/{POLICY_FILE}")
    path = model_dir / POLICY_FILE
    partial = model_dir / f".{POLICY_FILE}.part"
    partial.write_text(new.to_toml(), encoding="utf-8")
    os.replace(partial, path)
    if str(root).startswith("s3://"):
        return new, upload_policy(str(root), model, path)
    return new, str(path)


def _s3(uri: str) -> Any:
    try:
        return aws.s3_client()
    except ImportError as exc:
        raise ConfigError(
            f"model repository {uri}: boto3 is needed for s3:// roots"
            " (pip install 'inference-fleet[aws]')"
        ) from exc


def _upload(client: Any, bucket: str, key: str, path: Path) -> bool:
    """Upload ``path`` unless the object has its SHA-256; whether it uploaded."""
    from botocore.exceptions import ClientError

    digest = file_sha256(path)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if aws.error_code(exc)[0] not in ("404", "NoSuchKey", "NotFound"):
            raise
    else:
        if head.get("Metadata", {}).get("sha256") == digest:
            return False
    client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}})
    return True


def _model_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """The keys under ``prefix`` that :func:`sync_s3` would copy."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if _is_model_file(PurePosixPath(obj["Key"][len(prefix) :])):
                keys.append(obj["Key"])
    return keys


def _is_model_file(rel: PurePosixPath) -> bool:
    """Whether a key (relative to the root) is one :func:`sync_s3` copies."""
    if ".." in rel.parts:
        return False
    if len(rel.parts) == 3:
        return rel.name in MODEL_FILES
    return len(rel.parts) == 2 and rel.name == POLICY_FILE


def _s3_error(what: str, exc: Exception) -> FleetError:
    """A configuration problem (``ConfigError``: no bucket, no permission, no
    credentials) or an unreachable S3 (``Unavailable``)."""
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        exc = exc.__context__  # the upload's own client error
    code, message = aws.error_code(exc)
    if aws.is_transient(exc):
        return Unavailable(f"{what}: S3 unreachable: {message}")
    return ConfigError(f"{what}: {code}: {message}" if code else f"{what}: {exc}")


def _remove_stale(dest: Path, keep: set[Path]) -> None:
    """Drop cached model files whose object is gone from the bucket."""
    if not dest.is_dir():
        return
    for path in [*dest.glob("*/*/*"), *dest.glob(f"*/{POLICY_FILE}")]:
        if (path.name in MODEL_FILES or path.name == POLICY_FILE) and path not in keep:
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
    "POLICY_FILE",
    "ModelRepository",
    "ModelSpec",
    "Pushed",
    "Scan",
    "file_sha256",
    "parse_s3_uri",
    "push_s3",
    "signature",
    "sync_s3",
    "update_policy",
    "upload_policy",
    "version_key",
]
