"""What the control loop hands a policy, and what a policy answers.

A policy is a pure function: ``decide(snapshot, state) -> (decision, state)``.
The same policy objects run in the live control loop and in the simulator.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Direction = Literal["out", "in", "hold"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """One reading of the signals. ``None`` means the signal could not be read
    (missing), which is never the same as zero."""

    now: float  # seconds on a monotonic clock (or simulated time)
    backlog: int | None  # requests waiting: RabbitMQ ready + unacked, or Kafka lag
    arrival_rate: float | None  # requests/s offered, smoothed
    per_instance_rps: float | None  # sustainable requests/s of one instance
    busy_fraction: float | None  # mean over in-service instances, 0..1
    gpu_utilization: float | None  # mean over in-service instances, 0..1 (NVML busy time)
    in_service: int  # instances serving now
    pending: int  # instances booting (count as coming capacity, not free capacity)
    desired: int  # the capacity last asked for
    warm: int | None = None
    """Instances ready in the group's warm pool: they serve a warm start after
    being asked for, not a cold boot (``None``: no warm pool, or unknown)."""
    saturation: float | None = None
    """Share of the in-service instances' capacity in use, mean over them (1:
    at capacity): busy fraction times batch fill (mean batch size / max batch
    size). Not busy time alone: that is near 1 for an instance that batches
    continuously, at any load."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    desired: int
    direction: Direction
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def hold(cls, desired: int, *reasons: str) -> Decision:
        """Keep ``desired`` as it is, saying why."""
        return cls(desired=desired, direction="hold", reasons=reasons)

    @classmethod
    def to(cls, current: int, desired: int, *reasons: str) -> Decision:
        """Ask for ``desired``; the direction follows from ``current``."""
        direction: Direction = "out" if desired > current else "in" if desired < current else "hold"
        return cls(desired=desired, direction=direction, reasons=reasons)


S = TypeVar("S")


class Policy(abc.ABC, Generic[S]):
    """A scaling policy. Implementations hold configuration only; everything
    that changes between calls lives in the state they return."""

    name: str

    @abc.abstractmethod
    def initial_state(self) -> S: ...

    def parameters(self) -> dict[str, object]:
        """The policy's configuration as plain values (for reports and logs)."""
        config = getattr(self, "config", None)
        if config is not None and dataclasses.is_dataclass(config):
            return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return {}

    @abc.abstractmethod
    def decide(self, snapshot: Snapshot, state: S) -> tuple[Decision, S]: ...

    def settle(
        self, snapshot: Snapshot, decision: Decision, applied: int, before: S, after: S
    ) -> S:
        """The state to keep once the actuator has answered: ``after`` (what
        :meth:`decide` returned) by default. ``applied`` is the capacity the
        actuator applied (``snapshot.desired`` when it refused the change), so
        a policy can start a cooldown only for a change that took effect."""
        return after

    def warm_pool(self, snapshot: Snapshot, state: S, desired: int) -> int | None:
        """How many instances to keep ready in the warm pool with ``desired``
        asked for: what the policy's next scale-out would take from it.
        ``None`` (the default): the policy has no opinion, the pool stays as
        the group has it."""
        return None


__all__ = ["Decision", "Direction", "Policy", "Snapshot"]
