"""Building the configured policy and actuator, through the registries.

The ``[policy]`` kind names a :class:`~autoscaler.registry.PolicySpec` of
:data:`~autoscaler.registry.POLICIES`, the ``[actuator]`` kind an
:class:`~autoscaler.registry.ActuatorSpec` of
:data:`~autoscaler.registry.ACTUATORS`; nothing here knows a particular one.
"""

from __future__ import annotations

from typing import Any

from autoscaler.actuators.base import Actuator
from autoscaler.config import AutoscalerConfig, PolicySection
from autoscaler.registry import ACTUATORS, POLICIES, ActuatorContext
from autoscaler.types import Policy


def build_policy(section: PolicySection) -> Policy[Any]:
    """The policy ``[policy]`` asks for, its parameters validated.

    Raises :class:`~fleet.errors.ConfigError` for an unknown kind, a policy
    that cannot be loaded or bad parameters (each named ``policy.<field>``).
    """
    return POLICIES.get(section.kind).create(section.params)


def build_actuator(cfg: AutoscalerConfig) -> Actuator:
    """The actuator ``[actuator]`` asks for (not started)."""
    spec = ACTUATORS.get(cfg.actuator.kind)
    return spec.create(cfg.actuator, ActuatorContext(broker=cfg.broker))


__all__ = ["build_actuator", "build_policy"]
