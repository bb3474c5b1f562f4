"""One timer for the deadlines of every request in flight (a client's calls,
a producer's sends).

A timer per request (``loop.call_later``) is a handle object, a push onto the
event loop's heap and a cancel on every reply: about 3 us a request. Here a
request's deadline is a tuple on a heap of our own (about 0.55 us), and a
single timer is armed for the earliest one. Replies leave their entries
behind; an entry whose future is done is dropped when the timer reaches it,
or when the heap holds more than twice the live requests (so a done future,
and the reply it holds, is kept for a bounded time). Once nothing is in
flight the timer fires at most once more, drops what is left and is not
armed again until the next request: an idle client does not wake for
deadlines.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Any

_SLACK = 256  # entries kept beyond twice the live ones before a compaction


class Deadlines:
    """Fails each added future with :class:`TimeoutError` at its deadline
    (``time.monotonic()``), unless it is done by then."""

    __slots__ = ("_armed_at", "_heap", "_seq", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, deadline: float, future: asyncio.Future[Any], live: int) -> None:
        """Watch ``future`` until ``deadline``; ``live`` is how many requests
        are in flight, the bound on what the heap keeps."""
        heapq.heappush(self._heap, (deadline, next(self._seq), future))
        if len(self._heap) > 2 * live + _SLACK:
            self._heap = [e for e in self._heap if not e[2].done()]
            heapq.heapify(self._heap)
        if deadline < self._armed_at:
            self._arm(deadline)

    def close(self) -> None:
        """Disarm the timer and forget every entry (the futures are left as they are)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_at = None, math.inf
        self._heap.clear()

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, at - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._armed_at = at

    def _fire(self) -> None:
        self._timer, self._armed_at = None, math.inf
        heap, now = self._heap, time.monotonic()
        while heap and (heap[0][2].done() or heap[0][0] <= now):
            future = heapq.heappop(heap)[2]
            if not future.done():
                future.set_exception(TimeoutError())
        if heap:
            self._arm(heap[0][0])


__all__ = ["Deadlines"]
