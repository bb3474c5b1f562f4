"""Configuration files: one TOML reader and one way of reporting bad fields.

Every configuration the fleet reads (a model's ``config.toml``, the
autoscaler's file, a policy's or an actuator's table) is validated by a
pydantic model; a bad one raises :class:`~fleet.errors.ConfigError` whose
message lists every bad field as ``location: reason``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fleet.errors import ConfigError
from fleet.redact import redact_text

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's contents; :class:`ConfigError` naming the file otherwise."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def _location(loc: tuple[int | str, ...], hidden: Collection[str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in hidden:
            continue  # a union's tag adds nothing for a reader
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(file)"


def error_lines(
    exc: ValidationError, *, prefix: str = "", hidden: Collection[str] = ()
) -> list[str]:
    """One ``location: reason`` line per bad field, under ``prefix``; never the
    input itself, and any URL in a reason with its password masked."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _location(tuple(err["loc"]), hidden)
        if prefix:
            loc = prefix if loc == "(file)" else f"{prefix}.{loc}"
        msg = "unknown field" if err["type"] == "extra_forbidden" else redact_text(str(err["msg"]))
        lines.append(f"{loc}: {msg}")
    return lines


def bad_fields(source: str, lines: list[str]) -> ConfigError:
    """The error for a configuration with these bad fields."""
    head = f"{source}: " if source else ""
    return ConfigError(f"{head}{len(lines)} bad field(s):\n  " + "\n  ".join(lines))


def validate(model: type[M], data: Any, *, source: str = "", prefix: str = "") -> M:
    """``model`` validated from ``data``, or one :class:`ConfigError` listing
    every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_fields(source, error_lines(exc, prefix=prefix)) from None


__all__ = ["bad_fields", "error_lines", "read_toml", "validate"]
