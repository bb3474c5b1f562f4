"""``dry-run``: decides and logs, changes nothing.

The capacity it reports follows what it was asked for at once (everything it
is asked for counts as in service), so a policy sees its own decisions take
effect, as it would with instant instances.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autoscaler.actuators.base import Actuator, ActuatorConfigBase, Capacity, clamp
from autoscaler.registry import ActuatorContext, ActuatorSpec
from fleet.errors import ConfigError
from fleet.logging import get_logger

log = get_logger("autoscaler.actuators.dry_run")


class DryRunActuatorConfig(ActuatorConfigBase):
    """``[actuator] kind = "dry-run"``: decides and logs; changes nothing."""

    kind: Literal["dry-run"]
    initial_capacity: int = Field(default=0, ge=0)
    """The capacity it pretends is in service at start."""
    max_capacity: int | None = Field(default=None, ge=0)
    """Optional clamp, to rehearse a group's MaxSize."""


class DryRunActuator(Actuator):
    kind = "dry-run"

    def __init__(self, *, initial_capacity: int = 0, max_capacity: int | None = None) -> None:
        if initial_capacity < 0:
            raise ConfigError("initial_capacity must be at least 0")
        self._desired = initial_capacity
        self._max = max_capacity
        self.calls: list[tuple[int, int, tuple[str, ...]]] = []  # (asked, applied, reasons)

    async def capacity(self) -> Capacity:
        return Capacity(in_service=self._desired, pending=0, desired=self._desired)

    async def set_desired(self, n: int, reasons: tuple[str, ...] = ()) -> int:
        applied = clamp(n, 0, self._max)
        log.info(
            "dry-run: would set desired capacity", asked=n, applied=applied, reasons=list(reasons)
        )
        self.calls.append((n, applied, reasons))
        self._desired = applied
        return applied


def _build(cfg: DryRunActuatorConfig, _context: ActuatorContext) -> DryRunActuator:
    return DryRunActuator(initial_capacity=cfg.initial_capacity, max_capacity=cfg.max_capacity)


SPEC = ActuatorSpec(name="dry-run", config=DryRunActuatorConfig, build=_build)

__all__ = ["SPEC", "DryRunActuator", "DryRunActuatorConfig"]
