"""``dry-run``: decides and logs, changes nothing.

The capacity it reports follows what it was asked for at once (everything it
is asked for counts as in service), so a policy sees its own decisions take
effect, as it would with instant instances.
"""

from __future__ import annotations

from autoscaler.actuators.base import Actuator, Capacity, clamp
from fleet.errors import ConfigError
from fleet.logging import get_logger

log = get_logger("autoscaler.actuators.dry_run")


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


__all__ = ["DryRunActuator"]
