"""The cyclic garbage collector's pauses, kept short in a serving process.

CPython's cyclic collector stops the whole interpreter while it runs, and a
full (oldest generation) collection walks every container object alive: the
modules a worker or client imports (numpy, ONNX Runtime's bindings, the
broker clients, pydantic) hold 80,000 or more, and one full collection of
them takes 30-90 ms on a small machine. At a few thousand requests a second
the objects that live through a request's round trip fill the oldest
generation fast enough for one every second or two: each is a pause of the
event loop that every request in flight waits out, the p99 of the whole call.

:func:`freeze_heap` collects once and then moves every object alive into the
collector's permanent generation (:func:`gc.freeze`): later collections walk
only what was made since, and a full one costs what a request's objects cost.
Objects frozen are never freed by the cyclic collector (reference counting
still frees them), so call it once a program's long-lived state exists (its
imports, models, connections), not per request.

Nothing in the packages calls it on its own: ``fleet worker`` calls it once
its models are loaded and it consumes; a client program calls it once after
it connects.
"""

from __future__ import annotations

import gc


def freeze_heap() -> int:
    """Collect garbage, then exempt every object alive now from later
    collections; returns how many objects the collector no longer walks."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


__all__ = ["freeze_heap"]
