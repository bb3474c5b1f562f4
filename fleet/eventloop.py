"""The event loop a fleet process runs on: asyncio's own, or uvloop.

``asyncio`` is the default. ``uvloop`` (``pip install 'inference-fleet[uvloop]'``)
is a drop-in loop on libuv; ``benchmarks/latency.py --event-loops asyncio,uvloop``
measures what it changes on a given machine, broker and model.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import types
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from typing import Any, Literal, TypeVar, cast

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


Handler = Coroutine[Any, Any, None]


def start_eagerly(coro: Handler, tasks: set[asyncio.Task[None]]) -> None:
    """Run ``coro`` here, up to where it first waits; only if it waits does
    the rest go on in a task, kept in ``tasks`` until it is done."""
    try:
        waits_on = coro.send(None)
    except StopIteration:
        return
    task = asyncio.get_running_loop().create_task(
        cast(Handler, _rest(coro, waits_on))  # a generator-based coroutine
    )
    tasks.add(task)

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        coro.close()  # ended already: nothing; cancelled before the task's first step: ends it

    task.add_done_callback(done)


@types.coroutine
def _rest(coro: Handler, waits_on: Any) -> Generator[Any, None, None]:
    """The rest of ``coro``, which waits on ``waits_on``: what the task runs.
    A task resumes what it runs with ``send(None)`` once what it waits on is
    done, or throws the cancellation in; both go on to ``coro``."""
    while True:
        try:
            yield waits_on
        except BaseException as exc:  # thrown in by the task: a cancellation
            try:
                waits_on = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waits_on = coro.send(None)
        except StopIteration:
            return


class Handlers:
    """Runs the handlers of what a connection delivers, each up to where it
    first waits; only a handler that waits goes on in a task. Most wait for
    nothing (a request joins a batch, and the reply is published from the
    batch), and a task for each would cost its scheduling, a round of the
    loop and a callback when done. They run in the next turn of the loop, all
    in one callback, as a task each would (the turn they arrived in ends
    first: a Kafka fetch loop sends its next fetch), or sooner where the
    connection calls :meth:`run_due` once that turn's own work is done."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self._due: list[Handler] = []

    def start(self, coro: Handler) -> None:
        if not self._due:
            asyncio.get_running_loop().call_soon(self.run_due)
        self._due.append(coro)

    def run_due(self) -> None:
        """Run the handlers due now (none: nothing)."""
        due, self._due = self._due, []
        for coro in due:
            with contextlib.suppress(asyncio.CancelledError):  # a task would have kept it
                start_eagerly(coro, self.tasks)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Drop the handlers not started (they never run) and cancel those
        under way; the tasks to wait for."""
        due, self._due = self._due, []
        for coro in due:
            coro.close()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return tasks


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
