"""What every actuator does: report capacity, set the desired capacity.

Implementations: :mod:`~autoscaler.actuators.ec2` (an EC2 Auto Scaling Group),
:mod:`~autoscaler.actuators.local` (``fleet worker`` processes on this machine)
and :mod:`~autoscaler.actuators.dry_run` (decides and logs only).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from fleet.heartbeat import Heartbeat


class Capacity(NamedTuple):
    """What an actuator reports: instances serving, booting, and asked for,
    and the instances ready in a warm pool (``None``: the group has none, or
    the actuator does not know)."""

    in_service: int
    pending: int
    desired: int
    warm: int | None = None


class Actuator(abc.ABC):
    """Turns a desired capacity into instances. Use ``async with`` or call
    :meth:`start` / :meth:`close`."""

    kind: str

    async def start(self) -> None:  # noqa: B027  # optional hook
        """Get ready (connect, read the current state). Idempotent."""

    @abc.abstractmethod
    async def capacity(self) -> Capacity:
        """Instances in service, pending (booting) and the desired capacity.

        Raises a :class:`fleet.errors.FleetError` when it cannot be read."""

    @abc.abstractmethod
    async def set_desired(self, n: int, reasons: tuple[str, ...] = ()) -> int:
        """Ask for ``n`` instances; returns the value actually applied after
        clamping to the actuator's own bounds."""

    async def close(self) -> None:  # noqa: B027  # optional hook
        """Release what :meth:`start` took."""

    @property
    def sizes_warm_pool(self) -> bool:
        """Whether this actuator keeps a warm pool sized by the policy
        (:meth:`size_warm_pool`)."""
        return False

    async def size_warm_pool(self, n: int | None) -> int | None:  # optional hook
        """Keep ``n`` instances ready in the warm pool (``None``: the policy
        has no opinion); returns the size applied (``None``: nothing changed)."""
        return None

    def observe_heartbeat(self, beat: Heartbeat, received_at: float) -> None:  # noqa: B027
        """A worker heartbeat arrived (``received_at`` on the monotonic clock).
        Actuators that track readiness or busyness per worker override this."""

    async def __aenter__(self) -> Actuator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class ActuatorConfigBase(BaseModel):
    """What every ``[actuator]`` table's model derives from: unknown keys are
    refused, and ``kind`` names the actuator (each model narrows it to its own
    ``Literal``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str

    def aws_region(self) -> str | None:
        """The AWS region this actuator works in, if any (the default region
        for the autoscaler's CloudWatch metrics)."""
        return None


def clamp(n: int, low: int, high: int | None) -> int:
    """``n`` within ``[low, high]`` (``high=None``: no upper bound)."""
    n = max(n, low)
    if high is not None:
        n = min(n, high)
    return n


__all__ = ["Actuator", "ActuatorConfigBase", "Capacity", "clamp"]
