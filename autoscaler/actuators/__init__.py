"""Actuators: turn a desired capacity into running workers."""

from __future__ import annotations

from autoscaler.actuators.base import Actuator, Capacity, clamp
from autoscaler.actuators.dry_run import DryRunActuator

__all__ = ["Actuator", "Capacity", "DryRunActuator", "clamp"]
