"""The batcher: collects requests into batches for one model version.

A batch is flushed when it holds ``max_batch_size`` rows or when ``max_wait``
seconds have passed since its first item arrived, whichever comes first
(monotonic clock). Synchronous items (a caller holding a connection open) go
first, then queued ``online`` items, then ``batch`` items. An item
carries a row count (a request may hold several rows); a batch never holds
more than ``max_batch_size`` rows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fleet.contract import Priority

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    rows: int
    arrived: float


@dataclass(eq=False)
class Batcher(Generic[T]):
    max_batch_size: int
    max_wait: float  # seconds
    clock: Callable[[], float] = time.monotonic
    _lanes: dict[Priority, deque[_Entry[T]]] = field(
        default_factory=lambda: {p: deque() for p in Priority}
    )
    _sync: deque[_Entry[T]] = field(default_factory=deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    _order: tuple[deque[_Entry[T]], ...] = ()  # the lanes in the order they are served
    _rows: int = 0  # rows queued, kept as items come and go

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._order = (self._sync, *(self._lanes[p] for p in Priority))

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._order)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: ``put`` raises."""
        return self._closed

    @property
    def rows(self) -> int:
        return self._rows

    def put(
        self,
        item: T,
        *,
        rows: int = 1,
        priority: Priority = Priority.ONLINE,
        synchronous: bool = False,
    ) -> None:
        if self._closed:
            raise RuntimeError("batcher is closed")
        if not 1 <= rows <= self.max_batch_size:
            raise ValueError(f"an item of {rows} rows cannot fit a batch of {self.max_batch_size}")
        lane = self._sync if synchronous else self._lanes[priority]
        lane.append(_Entry(item, rows, self.clock()))
        self._rows += rows
        self._wakeup.set()

    def close(self) -> None:
        """No more items; ``next_batch`` returns what is left, then ``[]``."""
        self._closed = True
        self._wakeup.set()

    def drain(self) -> list[T]:
        """Take everything still queued (for shutdown)."""
        out = [e.item for lane in self._order for e in lane]
        for lane in self._order:
            lane.clear()
        self._rows = 0
        return out

    def _oldest(self) -> float | None:
        heads = [lane[0].arrived for lane in self._order if lane]
        return min(heads) if heads else None

    def take(self) -> list[T]:
        """The next batch now, as far as the rows queued fill it (``[]``: none)."""
        batch: list[T] = []
        rows = 0
        for lane in self._order:
            while lane and rows + lane[0].rows <= self.max_batch_size:
                entry = lane.popleft()
                rows += entry.rows
                batch.append(entry.item)
            if lane:
                break  # the next item does not fit: the batch is full
        self._rows -= rows
        return batch

    def full_batch(self) -> list[T]:
        """A batch now if a full one waits (``max_batch_size`` rows queued),
        else ``[]``; what ``next_batch`` would return first."""
        return self.take() if self._rows >= self.max_batch_size else []

    async def next_batch(self) -> list[T]:
        """Wait for the next batch. Returns ``[]`` only once closed and empty."""
        await self.ready()
        return self.take()

    async def ready(self) -> None:
        """Wait until the next batch is due: full, its oldest item has waited
        ``max_wait``, or closed (and so, once empty, no batch ever again)."""
        while True:
            oldest = self._oldest()
            if oldest is None:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._closed or self.rows >= self.max_batch_size:
                return
            remaining = oldest + self.max_wait - self.clock()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return


__all__ = ["Batcher"]
