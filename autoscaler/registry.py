"""The autoscaler's extension points: scaling policies and actuators.

Each is a :class:`fleet.registry.Registry` filled from entry points
(``fleet.policies``, ``fleet.actuators`` in ``pyproject.toml``). An entry is a
spec that declares its name, its configuration class and how to build the
thing from a validated configuration:

- :class:`PolicySpec`: the ``[policy]`` table's keys other than ``kind`` are
  validated by ``config`` (a pydantic model or a dataclass), then ``build``
  makes the policy;
- :class:`ActuatorSpec`: the ``[actuator]`` table (``kind`` included) is
  validated by ``config`` (a pydantic model derived from
  :class:`~autoscaler.actuators.base.ActuatorConfigBase`), then ``build``
  makes the actuator, given what it needs from the rest of the file
  (:class:`ActuatorContext`).

Adding a policy or an actuator is its module (with its spec), one entry-point
line and its tests; a plug-in package declares the entry point in its own
metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from autoscaler.actuators.base import Actuator, ActuatorConfigBase
from autoscaler.types import Policy
from fleet.config_file import bad_fields, error_lines
from fleet.errors import ConfigError
from fleet.registry import Registry

C = TypeVar("C")
A = TypeVar("A", bound=ActuatorConfigBase)


def config_lines(config: type[Any], params: Mapping[str, Any], *, prefix: str) -> list[str]:
    """Every bad field of ``params`` for ``config`` (a pydantic model or a
    dataclass), one ``prefix.field: reason`` line each; none when it is good."""
    return _check(config, params, prefix=prefix)[1]


def _validated(config: type[C], params: Mapping[str, Any], *, prefix: str) -> C:
    value, lines = _check(config, params, prefix=prefix)
    if lines:
        raise bad_fields("", lines)
    return value  # type: ignore[return-value]


def _check(
    config: type[Any], params: Mapping[str, Any], *, prefix: str
) -> tuple[object, list[str]]:
    """``(value, [])``, or ``(None, lines)`` naming every bad field."""
    if isinstance(config, type) and issubclass(config, BaseModel):
        try:
            return config.model_validate(dict(params)), []
        except ValidationError as exc:
            return None, error_lines(exc, prefix=prefix)
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"{config!r} is not a configuration class")
    names = {f.name for f in dataclasses.fields(config) if f.init}
    unknown = [f"{prefix}.{name}: unknown field" for name in sorted(set(params) - names)]
    if unknown:
        return None, unknown
    try:
        return TypeAdapter(config).validate_python(dict(params)), []
    except ValidationError as exc:
        return None, error_lines(exc, prefix=prefix)


@dataclass(frozen=True, kw_only=True)
class PolicySpec(Generic[C]):
    """A scaling policy: its name, its configuration class and its factory."""

    name: str
    config: type[C]
    """Validates the ``[policy]`` table's parameters (every key but ``kind``)."""
    build: Callable[[C], Policy[Any]]
    """The policy, from a validated configuration."""

    def parse(self, params: Mapping[str, Any]) -> C:
        """``params`` validated; :class:`ConfigError` listing every bad
        ``policy.<field>`` otherwise."""
        return _validated(self.config, params, prefix="policy")

    def create(self, params: Mapping[str, Any]) -> Policy[Any]:
        """The policy configured by ``params``."""
        return self.build(self.parse(params))


@dataclass(frozen=True, kw_only=True)
class ActuatorContext:
    """What an actuator may need from the rest of the autoscaler's file."""

    broker: str
    """The broker URL the workers use."""


@dataclass(frozen=True, kw_only=True)
class ActuatorSpec(Generic[A]):
    """An actuator: its name (the ``kind``), its configuration model and its
    builder."""

    name: str
    config: type[A]
    """Validates the whole ``[actuator]`` table, ``kind`` included."""
    build: Callable[[A, ActuatorContext], Actuator]
    """The actuator (not started), from a validated configuration."""

    def parse(self, table: Mapping[str, Any]) -> A:
        """``table`` validated; :class:`ConfigError` listing every bad
        ``actuator.<field>`` otherwise."""
        return _validated(self.config, table, prefix="actuator")

    def create(self, config: ActuatorConfigBase, context: ActuatorContext) -> Actuator:
        """The actuator for ``config`` (which must be this spec's model)."""
        if not isinstance(config, self.config):
            raise ConfigError(
                f"actuator {self.name!r} takes a {self.config.__name__}, "
                f"not a {type(config).__name__}"
            )
        return self.build(config, context)


POLICIES: Registry[PolicySpec[Any]] = Registry("fleet.policies", "policy kind", PolicySpec)
"""Scaling policies by ``[policy] kind``."""

ACTUATORS: Registry[ActuatorSpec[Any]] = Registry("fleet.actuators", "actuator kind", ActuatorSpec)
"""Actuators by ``[actuator] kind``."""


def unknown_kind(registry: Registry[Any], kind: object) -> str:
    """The reason given for a ``kind`` no spec answers to."""
    known = ", ".join(repr(name) for name in registry.names())
    return f"unknown {registry.what} {kind!r}; must be one of {known}"


__all__ = [
    "ACTUATORS",
    "POLICIES",
    "ActuatorContext",
    "ActuatorSpec",
    "PolicySpec",
    "config_lines",
    "unknown_kind",
]
