"""The service-time profile: how long one instance takes to run a batch.

``fleet recommend`` measures it against a real worker and writes it as JSON;
``fleet simulate`` reads it. The format (version 1)::

    {
      "version": 1,
      "model": "mlp",
      "max_batch": 16,
      "batch_ms": [[1, 36.0], [2, 42.0], [4, 54.0], [8, 78.0], [16, 126.0]],
      "sustainable_rps": 60.0,
      "latency_objective_ms": 100.0,
      "source": "default"
    }

``batch_ms`` lists (batch size, milliseconds of one model run) in increasing
batch size; between the listed sizes the time is interpolated linearly, below
the first it is the first. ``sustainable_rps`` is what one instance answers
per second with p99 latency within ``latency_objective_ms`` (the autoscaler's
per-instance target).

The default profile (:data:`DEFAULT_PROFILE`) is a large model on one GPU:
30 ms per run plus 6 ms per request, batches of up to 16, so at most
~127 requests/s per instance, and 33 requests/s sustainable within 100 ms at
p99: the most one instance serves, request by request, with at most 1% of
its requests over 100 ms (its stationary latency table says so; a test holds
it). Several instances sharing a queue do no better per instance: many grab
small batches.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.errors import ConfigError

PROFILE_VERSION = 1
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceProfile:
    """Service time of one instance as a function of batch size."""

    model: str = "default"
    max_batch: int
    batch_ms: tuple[tuple[int, float], ...]
    sustainable_rps: float
    latency_objective_ms: float = 100.0
    source: str = "default"
    _sizes: FloatArray = field(init=False, repr=False, compare=False)
    _times: FloatArray = field(init=False, repr=False, compare=False)
    _rate_grid: FloatArray = field(init=False, repr=False, compare=False)
    _batch_grid: FloatArray = field(init=False, repr=False, compare=False)
    _time_points: tuple[list[float], list[float]] = field(init=False, repr=False, compare=False)
    _batch_points: tuple[list[float], list[float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError("profile: max_batch must be at least 1")
        if not self.batch_ms:
            raise ConfigError("profile: batch_ms is empty")
        sizes = [b for b, _ in self.batch_ms]
        if sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ConfigError("profile: batch_ms sizes must be increasing and at least 1")
        if any(not (ms > 0 and math.isfinite(ms)) for _, ms in self.batch_ms):
            raise ConfigError("profile: every batch time must be a positive number of ms")
        if not self.sustainable_rps > 0:
            raise ConfigError("profile: sustainable_rps must be positive")
        object.__setattr__(self, "_sizes", np.array(sizes, dtype=np.float64))
        object.__setattr__(self, "_times", np.array([ms / 1e3 for _, ms in self.batch_ms]))
        # steady state of a continuously batching instance: the requests that
        # arrive during one run make the next batch, b = rate * t(b)
        rates = np.linspace(0.0, self.max_rps, 1025)
        lo = np.ones_like(rates)
        hi = np.full_like(rates, float(self.max_batch))
        for _ in range(50):
            mid = (lo + hi) / 2
            grow = rates * self.service_time(mid) > mid
            lo = np.where(grow, mid, lo)
            hi = np.where(grow, hi, mid)
        object.__setattr__(self, "_rate_grid", rates)
        object.__setattr__(self, "_batch_grid", (lo + hi) / 2)
        object.__setattr__(self, "_time_points", (self._sizes.tolist(), self._times.tolist()))
        object.__setattr__(self, "_batch_points", (rates.tolist(), self._batch_grid.tolist()))

    # ------------------------------------------------------------------ the model
    def service_time(self, batch: FloatArray | float) -> Any:
        """Seconds one model run takes for ``batch`` requests (array or scalar)."""
        return np.interp(batch, self._sizes, self._times)

    def service_time_of(self, batch: float) -> float:
        """:meth:`service_time` of one batch size, as a float (the same value,
        without numpy's cost per call)."""
        return _interp(batch, *self._time_points)

    def batch_of(self, rate: float) -> float:
        """:meth:`batch_at_rate` of one rate, as a float."""
        return _interp(rate, *self._batch_points)

    def lookups(self) -> tuple[Callable[[float], float], Callable[[float], float]]:
        """:meth:`batch_of` and :meth:`service_time_of` as plain functions
        (cheaper to call in a loop)."""
        return (
            functools.partial(_interp, xs=self._batch_points[0], ys=self._batch_points[1]),
            functools.partial(_interp, xs=self._time_points[0], ys=self._time_points[1]),
        )

    @property
    def max_rps(self) -> float:
        """Requests/s of one instance running full batches back to back."""
        return float(self.max_batch / self.service_time(float(self.max_batch)))

    def batch_at_rate(self, rate: FloatArray | float) -> Any:
        """Steady-state batch size of one instance offered ``rate`` requests/s
        (clamped to ``[1, max_batch]``)."""
        return np.interp(rate, self._rate_grid, self._batch_grid)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "model": self.model,
            "max_batch": self.max_batch,
            "batch_ms": [[b, round(ms, 4)] for b, ms in self.batch_ms],
            "sustainable_rps": round(self.sustainable_rps, 3),
            "latency_objective_ms": self.latency_objective_ms,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceProfile:
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise ConfigError(f"profile: version {version!r}; this build reads {PROFILE_VERSION}")
        try:
            return cls(
                model=str(data.get("model", "default")),
                max_batch=int(data["max_batch"]),
                batch_ms=tuple((int(b), float(ms)) for b, ms in data["batch_ms"]),
                sustainable_rps=float(data["sustainable_rps"]),
                latency_objective_ms=float(data.get("latency_objective_ms", 100.0)),
                source=str(data.get("source", "file")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"profile: missing or bad field: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ServiceProfile:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read a profile: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a profile is a JSON object")
        return cls.from_dict(data)


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """``numpy.interp`` of one value, by the same arithmetic."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x) - 1
    slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j])
    return slope * (x - xs[j]) + ys[j]


def linear_profile(
    *, base_ms: float, per_item_ms: float, max_batch: int, sustainable_rps: float
) -> ServiceProfile:
    """A profile with ``t(b) = base_ms + per_item_ms * b`` at powers of two."""
    sizes = sorted(
        {1, *(2**i for i in range(max_batch.bit_length()) if 2**i <= max_batch), max_batch}
    )
    return ServiceProfile(
        max_batch=max_batch,
        batch_ms=tuple((b, base_ms + per_item_ms * b) for b in sizes),
        sustainable_rps=sustainable_rps,
    )


DEFAULT_PROFILE = linear_profile(base_ms=30.0, per_item_ms=6.0, max_batch=16, sustainable_rps=33.0)

__all__ = ["DEFAULT_PROFILE", "PROFILE_VERSION", "ServiceProfile", "linear_profile"]
