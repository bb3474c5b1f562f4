"""What the fleet serves of one model: ``<root>/<model>/model.toml``.

The file sits beside the model's version directories, so every worker reading
the repository (a shared directory, or ``s3://`` synced on each look) sees
the same one: labels and splits are the fleet's, not one worker's. Every
field is optional; without the file a worker serves every version and a
request without a version gets the newest::

    default = "stable"        # what a request without a version gets: a label or a version

    [versions]                # which versions are served (one of these; none: all)
    latest = 2                # the newest two
    # specific = ["3", "4"]   # exactly these

    [labels]                  # names for versions, asked for like a version
    stable = "3"
    canary = "4"
    live = { "3" = 90, "4" = 10 }   # a split: weights, not necessarily summing to 100

A label's versions are served whatever the version policy says. A request
for a split label gets one of its versions with the weights' odds, picked
from a hash of the request's id: the same request (a retry) gets the same
version. A label is not a version name, and a label's versions must be in
the repository: otherwise the file is refused (the worker keeps the last
one it accepted, or serves without one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleet.config_file import bad_fields, error_lines, read_toml
from worker.versions import version_key

POLICY_FILE = "model.toml"

LABEL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class VersionPolicy(BaseModel):
    """Which versions are served: the newest ``latest``, the ``specific``
    ones, or (neither) all of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: int | None = Field(None, ge=1)
    specific: tuple[str, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if self.latest is not None and self.specific is not None:
            raise ValueError("give latest or specific, not both")
        return self

    def select(self, available: Iterable[str]) -> list[str]:
        """The versions to serve of those ``available``, oldest first."""
        ordered = sorted(set(available), key=version_key)
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        if self.latest is not None:
            return ordered[-self.latest :]
        return ordered


class ModelPolicy(BaseModel):
    """A model's ``model.toml``: versions served, labels, the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    versions: VersionPolicy = Field(default_factory=VersionPolicy)
    labels: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out: dict[str, Any] = {}
        for name, target in raw.items():
            if not isinstance(name, str) or not LABEL_NAME.match(name):
                raise ValueError(
                    f"label {name!r}: a label starts with a letter, then letters, digits, _ . or -"
                )
            out[name] = {target: 1.0} if isinstance(target, str) else target
        return out

    @field_validator("labels")
    @classmethod
    def _weights(cls, labels: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, split in labels.items():
            if not split:
                raise ValueError(f"label {name!r} names no version")
            for version, weight in split.items():
                if not weight > 0:
                    raise ValueError(f"label {name!r}: version {version!r} needs a weight > 0")
        return labels

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, model_dir: Path, versions: Sequence[str]) -> ModelPolicy | None:
        """The policy in ``model_dir`` (None without a file), checked against
        the model's ``versions`` in the repository; :class:`ConfigError` naming
        every problem."""
        path = model_dir / POLICY_FILE
        if not path.is_file():
            return None
        try:
            policy = cls.model_validate(read_toml(path))
        except ValidationError as exc:
            raise bad_fields(str(path), error_lines(exc)) from None
        policy.check(versions, source=str(path))
        return policy

    def check(self, versions: Sequence[str], *, source: str) -> None:
        """:class:`ConfigError` when a label is a version's name or names a
        version not in ``versions``, or the default is neither."""
        problems: list[str] = []
        for name, split in self.labels.items():
            if name in versions:
                problems.append(f"labels.{name}: {name!r} is a version's name")
            missing = sorted(set(split) - set(versions), key=version_key)
            if missing:
                problems.append(f"labels.{name}: no version {', '.join(missing)} in the repository")
        if self.default is not None and not (
            self.default in self.labels or self.default in versions
        ):
            problems.append(f"default: {self.default!r} is neither a label nor a version")
        if problems:
            raise bad_fields(source, problems)

    # ------------------------------------------------------------------ serving
    def served(self, available: Iterable[str]) -> list[str]:
        """The versions to serve: the version policy's, and every label's."""
        chosen = set(self.versions.select(available))
        chosen.update(v for split in self.labels.values() for v in split)
        return sorted(chosen, key=version_key)

    def resolve(self, asked: str, request_id: str) -> str:
        """The version ``asked`` stands for: a label's (a split's pick for this
        request id), or ``asked`` itself."""
        split = self.labels.get(asked)
        if split is None:
            return asked
        if len(split) == 1:
            return next(iter(split))
        return pick(split, request_id)

    # ------------------------------------------------------------------ editing
    def with_label(self, name: str, split: dict[str, float] | None) -> ModelPolicy:
        """This policy with label ``name`` set to ``split`` (None: removed)."""
        labels = dict(self.labels)
        if split is None:
            labels.pop(name, None)
        else:
            labels[name] = split
        default = None if split is None and self.default == name else self.default
        return self._changed(labels=labels, default=default)

    def with_default(self, default: str | None) -> ModelPolicy:
        return self._changed(default=default)

    def _changed(self, **fields: Any) -> ModelPolicy:
        try:
            return self.model_validate({**self.model_dump(), **fields})
        except ValidationError as exc:
            raise bad_fields(POLICY_FILE, error_lines(exc)) from None

    def to_toml(self) -> str:
        """The file's text (only what differs from the defaults)."""
        lines = ["# what the fleet serves of this model: see `fleet models label --help`"]
        if self.default is not None:
            lines.append(f"default = {_quote(self.default)}")
        if self.versions.latest is not None or self.versions.specific is not None:
            lines += ["", "[versions]"]
            if self.versions.latest is not None:
                lines.append(f"latest = {self.versions.latest}")
            if self.versions.specific is not None:
                lines.append(f"specific = [{', '.join(map(_quote, self.versions.specific))}]")
        if self.labels:
            lines += ["", "[labels]"]
            for name, split in sorted(self.labels.items()):
                if len(split) == 1:
                    lines.append(f"{_quote(name)} = {_quote(next(iter(split)))}")
                else:
                    weights = ", ".join(f"{_quote(v)} = {_number(w)}" for v, w in split.items())
                    lines.append(f"{_quote(name)} = {{ {weights} }}")
        return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_split(specs: Sequence[str]) -> dict[str, float]:
    """``["3"]`` or ``["3=90", "4=10"]`` as a label's versions and weights;
    :class:`ValueError` naming a bad one."""
    split: dict[str, float] = {}
    for spec in specs:
        version, sep, weight = spec.partition("=")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"{spec!r}: the weight after '=' must be a number") from None
        if not version or not value > 0:
            raise ValueError(f"{spec!r}: VERSION or VERSION=WEIGHT with a weight > 0")
        if version in split:
            raise ValueError(f"version {version!r} given twice")
        split[version] = value
    if len(split) > 1 and not all("=" in s for s in specs):
        raise ValueError("a split gives every version a weight: VERSION=WEIGHT ...")
    return split


def pick(split: dict[str, float], request_id: str) -> str:
    """One version of a split, with the weights' odds, the same for the same id."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64 * sum(split.values())
    for version, weight in sorted(split.items(), key=lambda kv: version_key(kv[0])):
        point -= weight
        if point < 0:
            return version
    return max(split, key=version_key)  # float rounding at the very top


__all__ = [
    "LABEL_NAME",
    "POLICY_FILE",
    "ModelPolicy",
    "VersionPolicy",
    "parse_split",
    "pick",
]
