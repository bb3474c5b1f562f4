"""Stationary latency of batching instances: the table the fast model reads.

A fleet of ``c`` instances sharing one FIFO, offered Poisson arrivals at ``u``
of their combined peak throughput (``u * c * max_rps`` requests/s), settles
into a latency distribution that depends on ``u`` and ``c`` alone: each
instance that finishes a batch, or is idle when a request arrives, takes what
waits (up to ``max_batch``), so the size of each batch, and with it its run
time, follows the arrivals of the run before it. That distribution is what a
request meets whenever the load changes slowly against a batch's run time,
whatever step the simulation takes.

:func:`build` measures it request by request, exactly as
:func:`~autoscaler.simulator.events.event_level` serves a pattern, for every
cell of a grid of ``u`` (0 to 0.975) and ``c`` (1 to 32) at once, and keeps
each cell's latency at fixed quantile levels (:data:`LEVELS`, dense in the
tail). :meth:`LatencyTable.curves` interpolates between cells (linearly in
``u`` and in ``log c``; beyond the grid, its edge), and
:meth:`LatencyTable.over` gives the share of a cohort over a latency from the
interpolated distribution.

:func:`table_for` returns the table of a profile: the default profile's ships
with the package (``data/``); any other is built on first use (about ten
seconds) and kept under ``$XDG_CACHE_HOME/fleet/simulator`` (default
``~/.cache``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from autoscaler.simulator.profile import ServiceProfile

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

log = logging.getLogger(__name__)

TABLE_VERSION = 1
U_GRID = np.arange(40, dtype=np.float64) * 0.025  # 0, 0.025, ..., 0.975 of peak throughput
C_GRID = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32], dtype=np.float64)
LEVELS = np.concatenate([np.arange(99) * 0.01 + 0.005, [0.99, 0.9925, 0.995, 0.9975, 0.999]])
"""Quantile levels kept per cell: every 1%, then denser up to the 99.9th."""
_BOUNDS = np.concatenate([[0.0], (LEVELS[1:] + LEVELS[:-1]) / 2, [1.0]])
WEIGHTS = np.diff(_BOUNDS)
"""The share of a cohort each quantile stands for (they sum to 1)."""
_LOG_C = np.log(C_GRID)
_HIST_EDGES = np.geomspace(1e-4, 1e4, 8001)  # 0.23% wide, for the quantiles of a cell
SHIPPED_REQUESTS = 400_000
"""Requests per cell of the shipped table (a build on first use takes fewer)."""
ON_DEMAND_REQUESTS = 60_000


@dataclass(frozen=True, slots=True)
class LatencyTable:
    """Latency quantiles (seconds) at :data:`LEVELS`, per ``c`` of
    :data:`C_GRID` and ``u`` of :data:`U_GRID`: shape ``(c, u, level)``."""

    quantiles: FloatArray
    requests: int  # per cell, when built

    def curves(self, u: FloatArray, c: FloatArray) -> FloatArray:
        """The interpolated quantile curve of each (``u``, ``c``): ``(n, levels)``."""
        ui = np.clip(u, 0.0, float(U_GRID[-1])) / 0.025
        u0 = np.minimum(ui.astype(np.int64), len(U_GRID) - 2)
        fu = (ui - u0)[:, None]
        lc = np.log(np.clip(c, 1.0, float(C_GRID[-1])))
        c0 = np.clip(np.searchsorted(_LOG_C, lc, side="right") - 1, 0, len(C_GRID) - 2)
        fc = ((lc - _LOG_C[c0]) / (_LOG_C[c0 + 1] - _LOG_C[c0]))[:, None]
        q = self.quantiles
        lo = q[c0, u0] * (1.0 - fu) + q[c0, u0 + 1] * fu
        hi = q[c0 + 1, u0] * (1.0 - fu) + q[c0 + 1, u0 + 1] * fu
        return np.asarray(lo * (1.0 - fc) + hi * fc)

    @staticmethod
    def over(curves: FloatArray, limit: FloatArray) -> FloatArray:
        """The share of each distribution (a row of :meth:`curves`) above
        ``limit``: its CDF is linear between the quantiles, and reaches 0 and
        1 where its first and last segments, extended, do."""
        n, k = curves.shape
        first = curves[:, 0] - (curves[:, 1] - curves[:, 0]) * LEVELS[0] / (LEVELS[1] - LEVELS[0])
        tail = (1.0 - LEVELS[-1]) / (LEVELS[-1] - LEVELS[-2])
        last = curves[:, -1] + (curves[:, -1] - curves[:, -2]) * tail
        xs = np.concatenate([first[:, None], curves, last[:, None]], axis=1)
        ps = np.concatenate([[0.0], LEVELS, [1.0]])
        j = np.clip((xs <= limit[:, None]).sum(axis=1), 1, k + 1)
        rows = np.arange(n)
        x0, x1 = xs[rows, j - 1], xs[rows, j]
        frac = np.clip((limit - x0) / np.maximum(x1 - x0, 1e-15), 0.0, 1.0)
        cdf = ps[j - 1] + frac * (ps[j] - ps[j - 1])
        cdf = np.where(limit < xs[:, 0], 0.0, np.where(limit >= xs[:, -1], 1.0, cdf))
        return np.asarray(1.0 - cdf)


# ---------------------------------------------------------------------------- building


@dataclass(slots=True)
class _Cells:
    """Every cell's instances, served in lockstep: one batch per cell a turn."""

    times: FloatArray  # t(b) for b = 0..max_batch
    free: FloatArray  # (cells, max c): when each instance is next free (inf: none)
    last: FloatArray  # each cell's latest arrival so far
    rate: FloatArray  # each cell's arrivals per second
    hist: FloatArray  # (cells, bins)


def _cells(profile: ServiceProfile) -> _Cells:
    us, cs = np.meshgrid(U_GRID[1:], C_GRID, indexing="xy")
    c = cs.ravel().astype(np.int64)
    free = np.full((c.size, int(C_GRID[-1])), np.inf)
    free[np.arange(int(C_GRID[-1]))[None, :] < c[:, None]] = 0.0
    times = np.concatenate([[0.0], profile.service_time(np.arange(1.0, profile.max_batch + 1))])
    return _Cells(
        times=times,
        free=free,
        last=np.zeros(c.size),
        rate=us.ravel() * profile.max_rps * c,
        hist=np.zeros((c.size, len(_HIST_EDGES) - 1)),
    )


def _serve_chunk(cells: _Cells, arrivals: FloatArray, keep_from: int) -> None:
    """Serve one chunk of arrivals (``(cells, n)``, sorted per cell) and add
    the latency of requests from index ``keep_from`` on to the histograms."""
    m, n = arrivals.shape
    big = len(cells.times) - 1
    arr = np.concatenate([arrivals, np.full((m, big), np.inf)], axis=1)
    lat = np.empty((m, n))
    span = np.arange(big)
    i = np.zeros(m, dtype=np.int64)
    rows = np.arange(m)
    while rows.size:
        ii = i[rows]
        slot = cells.free[rows].argmin(axis=1)
        start = np.maximum(cells.free[rows, slot], arr[rows, ii])
        idx = ii[:, None] + span[None, :]
        window = arr[rows[:, None], idx]
        k = np.maximum((window <= start[:, None]).sum(axis=1), 1)
        end = start + cells.times[k]
        take = span[None, :] < k[:, None]
        lat[np.broadcast_to(rows[:, None], idx.shape)[take], idx[take]] = (end[:, None] - window)[
            take
        ]
        cells.free[rows, slot] = end
        i[rows] = ii + k
        rows = rows[i[rows] < n]
    kept = lat[:, keep_from:]
    b = np.clip(np.searchsorted(_HIST_EDGES, kept, side="right") - 1, 0, len(_HIST_EDGES) - 2)
    flat = (np.arange(m)[:, None] * (len(_HIST_EDGES) - 1) + b).ravel()
    cells.hist += np.bincount(flat, minlength=cells.hist.size).reshape(cells.hist.shape)


def _quantiles(hist: FloatArray) -> FloatArray:
    """Each row's latency at :data:`LEVELS`, log-interpolated within a bin."""
    cum = np.cumsum(hist, axis=1)
    total = cum[:, -1:]
    target = LEVELS[None, :] * total
    j = np.array([np.searchsorted(row, t) for row, t in zip(cum, target, strict=True)])
    j = np.minimum(j, hist.shape[1] - 1)
    before = np.where(j > 0, np.take_along_axis(cum, np.maximum(j - 1, 0), axis=1), 0.0)
    inside = np.take_along_axis(hist, j, axis=1)
    frac = np.clip((target - before) / np.maximum(inside, 1e-300), 0.0, 1.0)
    lo, hi = _HIST_EDGES[j], _HIST_EDGES[j + 1]
    return np.asarray(lo * (hi / lo) ** frac)


def build(
    profile: ServiceProfile,
    *,
    requests: int = ON_DEMAND_REQUESTS,
    seed: int = 0,
    chunk: int = 20_000,
) -> LatencyTable:
    """Measure the table of ``profile``: ``requests`` Poisson arrivals per
    cell (the first 5% of them warm the cell up and are not counted)."""
    if requests < 1000:
        raise ValueError("requests: at least 1000 per cell")
    cells = _cells(profile)
    rng = np.random.default_rng(seed)
    warm = requests // 20
    done = 0
    while done < requests:
        n = min(chunk, requests - done)
        gaps = rng.exponential(1.0, (cells.rate.size, n)) / cells.rate[:, None]
        arrivals = cells.last[:, None] + np.cumsum(gaps, axis=1)
        cells.last = arrivals[:, -1].copy()
        _serve_chunk(cells, arrivals, max(0, warm - done))
        done += n
    idle = np.broadcast_to(profile.service_time(1.0), (len(C_GRID), 1, len(LEVELS)))
    measured = _quantiles(cells.hist).reshape(len(C_GRID), len(U_GRID) - 1, len(LEVELS))
    return LatencyTable(quantiles=np.concatenate([idle, measured], axis=1), requests=requests)


# ---------------------------------------------------------------------------- files


def profile_key(profile: ServiceProfile) -> str:
    """What the table depends on: the batch times and the largest batch."""
    text = json.dumps([TABLE_VERSION, profile.max_batch, [list(p) for p in profile.batch_ms]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(table: LatencyTable, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(
            f, quantiles=table.quantiles.astype(np.float32), requests=np.int64(table.requests)
        )
    tmp.replace(path)


def load(path: Path) -> LatencyTable | None:
    """The table in ``path``; ``None`` when it is missing or unreadable, or
    not of this grid."""
    try:
        with np.load(path) as data:
            q = np.asarray(data["quantiles"], dtype=np.float64)
            requests = int(data["requests"])
    except (OSError, ValueError, KeyError, EOFError) as exc:
        if path.exists():
            log.warning("ignoring the latency table in %s: %s", path, exc)
        return None
    if q.shape != (len(C_GRID), len(U_GRID), len(LEVELS)) or not np.isfinite(q).all():
        log.warning("ignoring the latency table in %s: not of this grid", path)
        return None
    return LatencyTable(quantiles=q, requests=requests)


SHIPPED_DIR = Path(__file__).with_name("data")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleet" / "simulator"


@functools.lru_cache(maxsize=8)
def table_for(profile: ServiceProfile) -> LatencyTable:
    """The shipped table of ``profile``, else the cached one, else one built
    now (and cached)."""
    name = f"latency-{profile_key(profile)}.npz"
    for folder in (SHIPPED_DIR, cache_dir()):
        table = load(folder / name)
        if table is not None:
            return table
    print(
        f"fleet simulate: measuring the latency table of this profile once"
        f" ({ON_DEMAND_REQUESTS:,} requests per cell; kept in {cache_dir()})",
        file=sys.stderr,
        flush=True,
    )
    table = build(profile, requests=ON_DEMAND_REQUESTS)
    try:
        save(table, cache_dir() / name)
    except OSError as exc:
        log.warning("cannot keep the latency table in %s: %s", cache_dir(), exc)
    return table


def _main() -> int:
    """Write the default profile's table into the package (``data/``)."""
    from autoscaler.simulator.profile import DEFAULT_PROFILE

    table = build(DEFAULT_PROFILE, requests=SHIPPED_REQUESTS)
    path = SHIPPED_DIR / f"latency-{profile_key(DEFAULT_PROFILE)}.npz"
    save(table, path)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())


__all__ = ["C_GRID", "LEVELS", "U_GRID", "WEIGHTS", "LatencyTable", "build", "table_for"]
