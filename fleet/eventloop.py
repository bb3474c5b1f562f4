"""The event loop a fleet process runs on: asyncio's own, or uvloop.

``asyncio`` is the default. ``uvloop`` (``pip install 'inference-fleet[uvloop]'``)
is a drop-in loop on libuv; ``benchmarks/latency.py --event-loops asyncio,uvloop``
measures what it changes on a given machine, broker and model.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, Literal, TypeVar

from fleet.errors import ConfigError

T = TypeVar("T")
EventLoop = Literal["asyncio", "uvloop"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("asyncio", "uvloop")


async def cancel_and_wait(*tasks: asyncio.Task[Any], every: float = 1.0) -> None:
    """Cancel ``tasks`` and return once every one is done. A task that swallows
    a cancellation (``asyncio.wait_for`` in Python 3.11 can, when what it waits
    for finishes at the same moment) is cancelled again every ``every``
    seconds instead of being waited for forever. What a task raised is
    retrieved and dropped, as ``gather(..., return_exceptions=True)`` would."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=every)
    for task in tasks:
        if not task.cancelled():
            task.exception()


async def together(aws: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather(*aws)``, but a lone awaitable is awaited where it is,
    without the task ``gather`` wraps it in. The serving path's fan-outs (a
    batch's reply sinks, reply addresses, messages to settle) are most often
    of one, and a task costs a round of the loop and its bookkeeping."""
    items = list(aws)
    if len(items) == 1:
        return [await items[0]]
    return list(await asyncio.gather(*items))


def check(name: str) -> EventLoop:
    """``name`` if this process can run that loop; else :class:`ConfigError`."""
    if name == "asyncio":
        return "asyncio"
    if name == "uvloop":
        if importlib.util.find_spec("uvloop") is None:
            raise ConfigError(
                "event loop 'uvloop' needs the uvloop package:"
                " pip install 'inference-fleet[uvloop]'"
            )
        return "uvloop"
    raise ConfigError(f"event loop {name!r} is not one of {', '.join(EVENT_LOOPS)}")


def run(main: Coroutine[Any, Any, T], name: str = "asyncio") -> T:
    """Run ``main`` to completion on a new loop of kind ``name``."""
    try:
        loop = check(name)
    except ConfigError:
        main.close()  # never awaited: say nothing about it
        raise
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def running_loop_kind() -> str:
    """``asyncio`` or ``uvloop``: the kind of the loop running this call."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
