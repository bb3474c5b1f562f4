"""The one exponentially weighted moving average of the autoscaler.

The live signals smooth the arrival rate with it, and the simulator smooths
the arrival rate it hands policies with the same one, so a policy sees the
same kind of number in both.
"""

from __future__ import annotations

import math


class Ewma:
    """Exponentially weighted moving average over irregular samples, with a
    time constant (0: the latest sample)."""

    def __init__(self, time_constant_s: float) -> None:
        self.tau = time_constant_s
        self.value: float | None = None

    def update(self, sample: float, dt: float) -> float:
        """Fold in ``sample``, taken ``dt`` seconds after the previous one."""
        if self.value is None or self.tau <= 0:
            self.value = sample
        else:
            alpha = 1.0 - math.exp(-max(dt, 0.0) / self.tau)
            self.value += alpha * (sample - self.value)
        return self.value


__all__ = ["Ewma"]
