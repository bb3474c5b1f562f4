"""Actuators: turn a desired capacity into running workers.

Each actuator is a module with its configuration model and its spec
(``SPEC``), registered in the ``fleet.actuators`` entry-point group; see
:mod:`autoscaler.registry`.
"""

from __future__ import annotations

from autoscaler.actuators.base import Actuator, ActuatorConfigBase, Capacity, clamp

__all__ = ["Actuator", "ActuatorConfigBase", "Capacity", "clamp"]
