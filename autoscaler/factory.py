"""Building the configured policy and actuator.

The policies live in :mod:`autoscaler.policy` (the default one) and
:mod:`autoscaler.baselines` (target tracking, KEDA-style queue length, static).
Each has a configuration class; the ``[policy]`` table's keys other than
``kind`` are validated by it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from fleet.errors import ConfigError

if TYPE_CHECKING:
    from autoscaler.actuators.base import Actuator
    from autoscaler.config import AutoscalerConfig, PolicySection
    from autoscaler.types import Policy

# kind -> (module, policy class, its configuration class)
POLICY_CLASSES: dict[str, tuple[str, str, str]] = {
    "default": ("autoscaler.policy", "DefaultPolicy", "PolicyConfig"),
    "target-tracking": ("autoscaler.baselines", "TargetTrackingPolicy", "TargetTrackingConfig"),
    "keda": ("autoscaler.baselines", "KedaPolicy", "KedaConfig"),
    "static": ("autoscaler.baselines", "StaticPolicy", "StaticConfig"),
}


class PolicyUnavailable(ConfigError):
    """The module or class that implements a policy kind is not installed."""


def _make_config(config_cls: Any, params: dict[str, Any]) -> Any:
    from autoscaler.config import format_errors

    if isinstance(config_cls, type) and issubclass(config_cls, BaseModel):
        try:
            return config_cls.model_validate(params)
        except ValidationError as exc:
            lines = format_errors(exc, prefix="policy")
            raise ConfigError(f"{len(lines)} bad field(s):\n  " + "\n  ".join(lines)) from None
    if dataclasses.is_dataclass(config_cls):
        names = {f.name for f in dataclasses.fields(config_cls)}
        lines = [f"policy.{name}: unknown field" for name in sorted(set(params) - names)]
        if not lines:
            try:
                return TypeAdapter(config_cls).validate_python(params)
            except ValidationError as exc:
                lines = format_errors(exc, prefix="policy")
        raise ConfigError(f"{len(lines)} bad field(s):\n  " + "\n  ".join(lines))
    raise PolicyUnavailable(f"{config_cls!r} is not a configuration class")


def build_policy(section: PolicySection) -> Policy[Any]:
    """The policy ``[policy]`` asks for, its parameters validated.

    Raises :class:`PolicyUnavailable` when the policy's module is not
    installed, :class:`ConfigError` for bad parameters.
    """
    module_name, policy_name, config_name = POLICY_CLASSES[section.kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise PolicyUnavailable(
            f"policy kind {section.kind!r} needs module {module_name}, which is not installed"
        ) from None
    policy_cls = getattr(module, policy_name, None)
    config_cls = getattr(module, config_name, None)
    if policy_cls is None or config_cls is None:
        raise PolicyUnavailable(
            f"policy kind {section.kind!r}: {module_name} has no {policy_name}/{config_name}"
        )
    config = _make_config(config_cls, section.params)
    policy: Policy[Any] = policy_cls(config)
    return policy


def build_actuator(cfg: AutoscalerConfig) -> Actuator:
    """The actuator ``[actuator]`` asks for (not started)."""
    from autoscaler.config import DryRunActuatorConfig, Ec2ActuatorConfig, LocalActuatorConfig

    act = cfg.actuator
    if isinstance(act, Ec2ActuatorConfig):
        from autoscaler.actuators.ec2 import Ec2Actuator

        return Ec2Actuator.from_config(act)
    if isinstance(act, LocalActuatorConfig):
        from autoscaler.actuators.local import LocalActuator

        return LocalActuator.from_config(act, broker=cfg.broker)
    if isinstance(act, DryRunActuatorConfig):
        from autoscaler.actuators.dry_run import DryRunActuator

        return DryRunActuator(initial_capacity=act.initial_capacity, max_capacity=act.max_capacity)
    raise ConfigError(f"unknown actuator kind {act!r}")  # pragma: no cover


__all__ = ["POLICY_CLASSES", "PolicyUnavailable", "build_actuator", "build_policy"]
