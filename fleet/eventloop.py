"""The event loop a fleet process runs on: asyncio's own, or uvloop.

``asyncio`` is the default. ``uvloop`` (``pip install 'inference-fleet[uvloop]'``)
is a drop-in loop on libuv; ``benchmarks/latency.py --event-loops asyncio,uvloop``
measures what it changes on a given machine, broker and model.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from fleet.errors import ConfigError

T = TypeVar("T")
EventLoop = Literal["asyncio", "uvloop"]
EVENT_LOOPS: tuple[EventLoop, ...] = ("asyncio", "uvloop")


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
