"""Counters for heartbeats: totals, and rates over the window since the last roll."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.stages import Histogram


@dataclass(frozen=True, kw_only=True, slots=True)
class Window:
    seconds: float
    throughput_rps: float
    busy_fraction: float
    mean_batch: float
    queue_wait_p50: float  # seconds
    requests_per_message: float
    inference_p50: float = 0.0  # seconds, per batch
    reply_p50: float = 0.0  # seconds from a batch's end to its replies published


@dataclass(eq=False)
class WindowStats:
    clock: Callable[[], float] = time.monotonic
    answered_total: int = 0
    errors_total: int = 0
    expired_total: int = 0
    _rows: int = 0
    _batches: int = 0
    _busy: float = 0.0
    _waits: list[float] = field(default_factory=list)
    _since: float = -1.0
    _messages: int = 0
    _items: int = 0
    _per_message: float = 1.0
    _inference: Histogram = field(default_factory=Histogram)
    _reply: Histogram = field(default_factory=Histogram)

    def __post_init__(self) -> None:
        self._since = self.clock()

    def record_batch(self, rows: int, inference_s: float, queue_waits: list[float]) -> None:
        self._rows += rows
        self._batches += 1
        self._busy += inference_s
        self._inference.observe(inference_s)
        if len(self._waits) < 10_000:
            self._waits.extend(queue_waits)

    def record_reply(self, seconds: float) -> None:
        self._reply.observe(seconds)

    def record_message(self, items: int) -> None:
        self._messages += 1
        self._items += items

    def roll(self) -> Window:
        now = self.clock()
        span = max(now - self._since, 1e-9)
        if self._messages:  # an idle window keeps the last known ratio
            self._per_message = self._items / self._messages
        w = Window(
            seconds=span,
            throughput_rps=self._rows / span,
            busy_fraction=min(1.0, self._busy / span),
            mean_batch=self._rows / self._batches if self._batches else 0.0,
            queue_wait_p50=statistics.median(self._waits) if self._waits else 0.0,
            requests_per_message=self._per_message,
            inference_p50=self._inference.quantile(0.5),
            reply_p50=self._reply.quantile(0.5),
        )
        self._inference.reset()
        self._reply.reset()
        self._since = now
        self._rows = self._batches = self._messages = self._items = 0
        self._busy = 0.0
        self._waits = []
        return w


__all__ = ["Window", "WindowStats"]
