"""A reference, not a policy anyone can run: it reads the pattern's future.

:class:`ClairvoyantPolicy` knows the offered rate ``lookahead_s`` ahead (the
boot delay plus a poll), so every instance it launches is in service when the
load it was launched for arrives, and it lets an instance go as soon as the
rest can carry what is coming. It plans each instance for the sustainable
rate exactly (no headroom) and drains a backlog within ``drain_time_s``.
The backlog a snapshot reports includes the requests in the batches the
instances are running (the broker's unacknowledged messages); those are not
waiting, so up to ``in_flight_per_instance`` per instance in service (the
profile's largest batch) is not counted as backlog to drain.

In a comparison it marks what foresight is worth: where even this reference
misses a goal, a policy that only reacts to the traffic would have to do better
than one that knows the future; where it meets the goal and a real policy does
not, what is missing is knowledge of the future (bursts shorter than the boot
delay, a step that nothing announced). It is a strong reference, not a proven
optimum: it plans whole instances for the sustainable rate and never runs
fewer to save cost at the price of late requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoscaler.simulator.patterns import Pattern
from autoscaler.types import Decision, Policy, Snapshot

_STEP_S = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ClairvoyantConfig:
    per_instance_rps: float
    """The sustainable rate of one instance: each is planned for exactly this."""
    lookahead_s: float
    """How far ahead the rate is read: the boot delay plus the poll interval."""
    drain_time_s: float = 30.0
    in_flight_per_instance: float = 0.0
    """Requests one instance in service holds in its running batch: that much
    of the backlog is being served, not waiting (the profile's ``max_batch``)."""
    min_capacity: int = 1
    max_capacity: int = 64

    def __post_init__(self) -> None:
        if not self.per_instance_rps > 0 or self.lookahead_s < 0 or not self.drain_time_s > 0:
            raise ValueError("need per_instance_rps > 0, lookahead_s >= 0, drain_time_s > 0")
        if self.in_flight_per_instance < 0:
            raise ValueError("in_flight_per_instance must not be negative")
        if self.min_capacity < 0 or self.max_capacity < max(self.min_capacity, 1):
            raise ValueError("need 0 <= min_capacity <= max_capacity and max_capacity >= 1")


class ClairvoyantPolicy(Policy[None]):
    """Capacity for the highest rate between now and ``lookahead_s`` from now."""

    name = "clairvoyant"

    def __init__(self, pattern: Pattern, config: ClairvoyantConfig) -> None:
        self.pattern = pattern
        self.config = config
        horizon = pattern.horizon_s + config.lookahead_s + _STEP_S
        self._rates = pattern.rates(_STEP_S, horizon)

    def initial_state(self) -> None:
        return None

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Decision, None]:
        cfg = self.config
        lo = max(0, math.floor(snapshot.now / _STEP_S))
        hi = max(lo + 1, math.ceil((snapshot.now + cfg.lookahead_s) / _STEP_S) + 1)
        ahead = float(np.max(self._rates[lo:hi])) if lo < len(self._rates) else 0.0
        running = snapshot.in_service * cfg.in_flight_per_instance
        backlog = max(0, round((snapshot.backlog or 0) - running))
        need = ahead / cfg.per_instance_rps + backlog / (cfg.per_instance_rps * cfg.drain_time_s)
        want = min(max(math.ceil(need - 1e-9), cfg.min_capacity, 1), cfg.max_capacity)
        why = f"{ahead:.1f} req/s due within {cfg.lookahead_s:.0f}s, {backlog} waiting"
        return Decision.to(snapshot.desired, want, why), None


__all__ = ["ClairvoyantConfig", "ClairvoyantPolicy"]
