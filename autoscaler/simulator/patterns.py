"""Traffic patterns: offered load (requests/s) as a function of time.

Built in:

- ``spiky``: a live-stream quiz. Near-zero traffic (2 req/s) and, every
  10 minutes from minute 5, a burst as a question goes out: up to 400 req/s
  within 5 s, held 40 s, then tailing off over 30 s. 2 hours.
- ``diurnal``: an e-commerce day between 70 and 500 req/s: a trough at 04:00,
  a morning climb, a lunchtime bump and the evening peak at 20:30. 24 hours.
- ``triple``: 100 req/s that suddenly triples to 300 req/s at 01:00 for
  30 minutes, then falls back (a flash sale). 3 hours.
- ``ramp``: from 20 req/s up to 500 req/s over 90 minutes, held 30 minutes. 2 hours.
- ``bursty``: traffic of a production inference service: 2 req/s, and on/off
  bursts with heavy-tailed sizes and idle gaps (seeded, :func:`bursty`):
  gaps of 1 to 15 minutes (Pareto, shape 1.2), bursts of 10 to 60 s whose
  peaks (150 to 350 req/s, Pareto, shape 3) reach about 5 to 10 times the
  mean rate (32 req/s), each rising and falling over 3 s. 2 hours.
- ``csv:FILE``: a user's own traffic, in one of two formats (``#`` lines and a
  header line are skipped):

  - **rates**: rows of ``seconds,rate``, the rate (requests/s) held from each
    row's time to the next; the horizon is the last row's time plus the
    median step. Arrivals are drawn around the rate, as for the built-ins.
  - **timestamps**: one column, the time of each request in seconds (epoch
    or relative; in increasing order). The requests are replayed as they
    came (the seed plays no part); the rate policies read is their count per
    second. The horizon ends one second after the last request.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fleet.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, slots=True)
class Pattern:
    name: str
    horizon_s: float
    rate: Callable[[FloatArray], FloatArray]  # vectorized: times (s) -> requests/s
    description: str
    timestamps: FloatArray | None = None
    """The requests' own times (from 0), replayed as they are; ``None``:
    arrivals are drawn around ``rate``."""

    def arrivals(self, dt: float, steps: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Requests arriving in each of ``steps`` steps of ``dt`` seconds."""
        if self.timestamps is not None:
            idx = np.floor(self.timestamps / dt).astype(np.int64)
            idx = idx[(idx >= 0) & (idx < steps)]
            return np.bincount(idx, minlength=steps).astype(np.int64)
        return rng.poisson(self.rates(dt, steps * dt) * dt).astype(np.int64)

    def rates(self, dt: float, horizon_s: float | None = None) -> FloatArray:
        """The rate at the middle of each step of ``dt`` seconds."""
        horizon = self.horizon_s if horizon_s is None else horizon_s
        steps = math.ceil(horizon / dt - 1e-9)
        t = (np.arange(steps, dtype=np.float64) + 0.5) * dt
        return np.maximum(self.rate(t), 0.0)

    def peak(self, dt: float = 1.0, horizon_s: float | None = None) -> float:
        return float(self.rates(dt, horizon_s).max())


def _spiky(t: FloatArray) -> FloatArray:
    base, peak, period, first = 2.0, 400.0, 600.0, 300.0
    rise, hold, fall = 5.0, 40.0, 30.0
    x = np.mod(t - first, period)
    x = np.where(t < first, period, x)  # nothing before the first burst
    ramp_up = np.clip(x / rise, 0.0, 1.0)
    decay = np.clip(1.0 - (x - rise - hold) / fall, 0.0, 1.0)
    shape = np.where(x < rise + hold, ramp_up, decay)
    return base + (peak - base) * shape


_DIURNAL_BUMPS = ((11.0, 2.2, 0.42), (13.0, 1.0, 0.30), (16.0, 2.0, 0.18), (20.5, 1.8, 1.0))


def _day_shape(h: FloatArray) -> FloatArray:
    """Sum of daily bumps (hour of day, width in hours, weight)."""
    out = np.zeros_like(h)
    for center, width, weight in _DIURNAL_BUMPS:
        d = np.minimum(np.abs(h - center), 24.0 - np.abs(h - center))
        out = out + weight * np.exp(-0.5 * (d / width) ** 2)
    return out


_DAY_GRID = _day_shape(np.linspace(0.0, 24.0, 24 * 60, endpoint=False))


def _diurnal(t: FloatArray) -> FloatArray:
    low, high = 70.0, 500.0
    shape = _day_shape(np.mod(t / 3600.0, 24.0))
    lo, hi = float(_DAY_GRID.min()), float(_DAY_GRID.max())
    return np.asarray(low + (high - low) * (shape - lo) / (hi - lo))


def _triple(t: FloatArray) -> FloatArray:
    return np.where((t >= 3600.0) & (t < 5400.0), 300.0, 100.0)


def _ramp(t: FloatArray) -> FloatArray:
    return np.asarray(20.0 + (500.0 - 20.0) * np.clip(t / 5400.0, 0.0, 1.0))


@dataclass(frozen=True, kw_only=True, slots=True)
class BurstShape:
    """The generator of ``bursty``: idle gaps of ``gap_min_s`` times a Pareto
    (Lomax + 1, shape ``gap_shape``) draw, at most ``gap_max_s``; bursts of a
    uniform duration in ``duration_s``, whose peak is ``peak_min`` times a
    Pareto (shape ``peak_shape``) draw, at most ``peak_max``; each rising and
    falling over ``edge_s`` above the ``base`` rate."""

    base: float = 2.0
    edge_s: float = 3.0
    gap_min_s: float = 60.0
    gap_shape: float = 1.2
    gap_max_s: float = 900.0
    duration_s: tuple[float, float] = (10.0, 60.0)
    peak_min: float = 150.0
    peak_shape: float = 3.0
    peak_max: float = 350.0

    def gap(self, rng: np.random.Generator) -> float:
        return min(self.gap_min_s * (1.0 + rng.pareto(self.gap_shape)), self.gap_max_s)

    def burst(self, rng: np.random.Generator) -> tuple[float, float]:
        """(duration s, peak req/s) of one burst."""
        duration = float(rng.uniform(*self.duration_s))
        return duration, min(self.peak_min * (1.0 + rng.pareto(self.peak_shape)), self.peak_max)

    def mean_gap_s(self) -> float:
        """The mean of :meth:`gap`."""
        return _capped_pareto_mean(self.gap_min_s, self.gap_shape, self.gap_max_s)

    def mean_duration_s(self) -> float:
        """The mean duration of a burst."""
        return sum(self.duration_s) / 2.0

    def peak_quantile(self, u: FloatArray) -> FloatArray:
        """The peaks below which a share ``u`` of :meth:`burst`'s peaks lie."""
        return np.minimum(self.peak_min * (1.0 - u) ** (-1.0 / self.peak_shape), self.peak_max)

    def mean_requests(self) -> float:
        """The mean count of requests in one burst, base traffic included."""
        duration = self.mean_duration_s()
        peak = _capped_pareto_mean(self.peak_min, self.peak_shape, self.peak_max)
        return self.base * duration + (peak - self.base) * (duration - self.edge_s)

    def profile(
        self,
        t: FloatArray,
        start: float | FloatArray,
        duration: float | FloatArray,
        peak: float | FloatArray,
    ) -> FloatArray:
        """The rate above ``base`` at times ``t`` of a burst from ``start``."""
        up = np.clip((t - start) / self.edge_s, 0.0, 1.0)
        down = np.clip((start + duration - t) / self.edge_s, 0.0, 1.0)
        return np.asarray((peak - self.base) * np.minimum(up, down))


BURSTS = BurstShape()


def _capped_pareto_mean(low: float, shape: float, cap: float) -> float:
    """The mean of ``min(low * Y, cap)``, Y a Pareto draw of ``shape`` (at least 1)."""
    return float(low + low**shape * (cap ** (1.0 - shape) - low ** (1.0 - shape)) / (1.0 - shape))


def _burst_schedule(seed: int, horizon_s: float) -> FloatArray:
    """Rows of (start s, duration s, peak req/s): heavy-tailed gaps and peaks."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, float, float]] = []
    t = 0.0
    while True:
        t += BURSTS.gap(rng)
        duration, peak = BURSTS.burst(rng)
        if t + duration > horizon_s:
            break
        rows.append((t, duration, peak))
        t += duration
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def bursty(seed: int = 0, horizon_s: float = 2 * 3600.0) -> Pattern:
    """On/off bursts (see the module's description); ``seed`` draws the
    schedule of bursts, not the arrivals."""
    starts, durations, peaks = _burst_schedule(seed, horizon_s).T

    def rate(t: FloatArray) -> FloatArray:
        # bursts never overlap: only the last one started by ``t`` adds to it
        which = np.searchsorted(starts, t, side="right") - 1
        out = np.full_like(t, BURSTS.base)
        inside = np.flatnonzero(which >= 0)
        at = which[inside]
        out[inside] += BURSTS.profile(t[inside], starts[at], durations[at], peaks[at])
        return out

    name = "bursty" if seed == 0 else f"bursty-{seed}"
    return Pattern(
        name=name,
        horizon_s=horizon_s,
        rate=rate,
        description="2 req/s with on/off bursts of heavy-tailed size and idle gaps "
        f"(a production inference service; schedule seed {seed})",
    )


BUILTIN: dict[str, Pattern] = {
    "spiky": Pattern(
        name="spiky",
        horizon_s=2 * 3600.0,
        rate=_spiky,
        description="2 req/s with a 400 req/s burst every 10 minutes (a live-stream quiz)",
    ),
    "diurnal": Pattern(
        name="diurnal",
        horizon_s=24 * 3600.0,
        rate=_diurnal,
        description="an e-commerce day between 70 and 500 req/s",
    ),
    "triple": Pattern(
        name="triple",
        horizon_s=3 * 3600.0,
        rate=_triple,
        description="100 req/s tripling to 300 req/s for 30 minutes at 01:00",
    ),
    "ramp": Pattern(
        name="ramp",
        horizon_s=2 * 3600.0,
        rate=_ramp,
        description="20 to 500 req/s over 90 minutes, then held",
    ),
    "bursty": bursty(0),
}


def _read_rows(p: Path) -> list[tuple[int, list[str]]]:
    """The file's data rows with their line numbers (blank, ``#`` and a
    header line skipped)."""
    rows: list[tuple[int, list[str]]] = []
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip() or row[0].strip().startswith("#"):
                    continue
                if not rows and lineno == 1:
                    try:
                        float(row[0])
                    except ValueError:
                        continue  # a header
                rows.append((lineno, row))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if not rows:
        raise ConfigError(f"{p}: no rows")
    return rows


def from_csv(path: str | Path) -> Pattern:
    """A pattern replaying a CSV file: ``seconds,rate`` rows, or one column
    of request timestamps (see the module's description)."""
    p = Path(path)
    rows = _read_rows(p)
    if all(len([c for c in row if c.strip()]) == 1 for _, row in rows):
        return _from_timestamps(p, rows)
    times: list[float] = []
    values: list[float] = []
    for lineno, row in rows:
        try:
            t, r = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise ConfigError(f"{p}:{lineno}: expected 'seconds,rate'") from None
        if r < 0 or (times and t <= times[-1]):
            raise ConfigError(f"{p}:{lineno}: times must increase and rates be >= 0")
        times.append(t)
        values.append(r)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 60.0
    ts = np.array(times)
    vs = np.array(values)

    def rate(t: FloatArray) -> FloatArray:
        idx = np.clip(np.searchsorted(ts, t, side="right") - 1, 0, len(ts) - 1)
        return np.asarray(vs[idx])

    return Pattern(
        name=p.stem,
        horizon_s=times[-1] + step,
        rate=rate,
        description=f"rates replayed from {p.name}",
    )


def _from_timestamps(p: Path, rows: list[tuple[int, list[str]]]) -> Pattern:
    """Requests replayed at their own times; the rate is their count per second."""
    stamps: list[float] = []
    for lineno, row in rows:
        try:
            t = float(row[0])
        except ValueError:
            raise ConfigError(f"{p}:{lineno}: expected a request timestamp in seconds") from None
        if stamps and t < stamps[-1]:
            raise ConfigError(f"{p}:{lineno}: timestamps must not decrease")
        stamps.append(t)
    times = np.array(stamps) - stamps[0]
    horizon = math.floor(float(times[-1])) + 1.0
    per_second = np.bincount(np.floor(times).astype(np.int64), minlength=int(horizon))
    counts = per_second.astype(np.float64)

    def rate(t: FloatArray) -> FloatArray:
        idx = np.clip(np.floor(t).astype(np.int64), 0, len(counts) - 1)
        return np.asarray(counts[idx])

    return Pattern(
        name=p.stem,
        horizon_s=horizon,
        rate=rate,
        description=f"{len(stamps)} requests replayed from {p.name}",
        timestamps=times,
    )


def get_pattern(spec: str) -> Pattern:
    """A built-in pattern by name, or ``csv:FILE``."""
    if spec.startswith("csv:"):
        return from_csv(spec[4:])
    try:
        return BUILTIN[spec]
    except KeyError:
        names = ", ".join([*BUILTIN, "csv:FILE"])
        raise ConfigError(f"unknown traffic pattern {spec!r}; choose from {names}") from None


__all__ = ["BUILTIN", "Pattern", "bursty", "from_csv", "get_pattern"]
