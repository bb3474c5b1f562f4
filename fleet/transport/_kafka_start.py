"""Starting aiokafka clients without leaking sockets, and without asking for
the metadata of every topic in the cluster.

aiokafka's bootstrap opens a connection that nothing owns until the metadata
request on it returns: cancelling ``start()`` at that moment leaves the socket
open until the garbage collector finds it ("Unclosed AIOKafkaConnection"), and
``stop()`` cannot close it. So a start is never cancelled while it runs: it gets
its time, then a grace period to end on aiokafka's own request timeouts, and
only then is it cancelled. Whatever the outcome, a client whose start did not
succeed is stopped before the error (or the cancellation) goes on.

While an aiokafka client tracks no topic, each metadata refresh (every
``metadata_max_age_ms``, and after every error such as a lost connection)
asks for every topic in the cluster: on a cluster of thousands of topics a
large response, parsed in one step of the caller's event loop (a quarter of a
second of CPU for 1,700 topics). A started client therefore tracks the
heartbeat topic until it tracks topics of its own (a producer adds those it
sends to, a consumer those it reads), from before it starts.

A broker that restarts within a few seconds may never fail a call of ours:
aiokafka reconnects by itself. So a started client can tell its owner each
time one of its connections breaks (not when aiokafka closes one itself),
and the owner decides, by asking the broker, whether the broker is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiokafka.conn import CloseReason
from aiokafka.errors import KafkaError

from fleet.transport.base import HEARTBEATS

START_GRACE = 10.0
"""Seconds a start may run past its timeout (or its caller's cancellation) to
end by itself before it is cancelled anyway."""

STOP_TIMEOUT = 10.0


_BROKEN = (CloseReason.CONNECTION_BROKEN, CloseReason.CONNECTION_TIMEOUT)


def _notice_breaks(inner: Any, on_break: Callable[[], None]) -> None:
    """Call ``on_break`` after aiokafka's own handling each time one of the
    client's connections breaks or times out. aiokafka's client hands its
    ``_on_connection_closed`` to each connection it opens, so it is replaced
    before the first one is opened."""
    closed = inner._on_connection_closed

    def on_closed(conn: Any, reason: Any) -> None:
        closed(conn, reason)
        if reason in _BROKEN:
            on_break()

    inner._on_connection_closed = on_closed


async def start_client(
    client: Any,
    timeout: float | None,
    *,
    stop: str = "stop",
    grace: float = START_GRACE,
    on_break: Callable[[], None] | None = None,
) -> None:
    """``await client.start()`` within ``timeout`` seconds (None: no limit).

    On failure, timeout or cancellation the client is stopped with its ``stop``
    method and the exception is raised again. ``on_break``: called each time
    one of the client's connections breaks."""
    # consumers and the admin client keep theirs as ``_client``, producers as ``client``
    inner = getattr(client, "_client", None) or getattr(client, "client", None)
    if inner is not None and not inner._topics:  # before start: it refreshes too
        inner.set_topics([HEARTBEATS])
    if inner is not None and on_break is not None:
        _notice_breaks(inner, on_break)
    task = asyncio.ensure_future(client.start())
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except BaseException:
        if not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task}, timeout=grace)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop_client(client, stop)
        raise


async def stop_client(client: Any, stop: str = "stop") -> None:
    """Stop an aiokafka client, bounded; a broker that does not answer is logged
    by aiokafka and otherwise ignored here.

    A consumer's ``stop()`` cancels its fetches still running and awaits each
    without catching its cancellation. A fetch that failed sleeps out a
    backoff (every fetch does, while the broker is away) and does not catch
    it either, so ``stop()`` raises ``CancelledError`` before it closes the
    consumer's connections. That cancellation is not the caller's: the
    fetches left are cancelled and awaited, and the connections closed, here."""
    try:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(getattr(client, stop)(), STOP_TIMEOUT)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the caller's own
        await _finish_stop(client)


async def _finish_stop(client: Any) -> None:
    """What a consumer's ``stop()`` left undone after a fetch's cancellation
    got out of it: the other fetches, and the connections."""
    fetcher = getattr(client, "_fetcher", None)
    if fetcher is not None:
        left = [t for t in fetcher._pending_tasks if not t.done()]
        for t in left:
            t.cancel()
        await asyncio.gather(*left, return_exceptions=True)
    inner = getattr(client, "_client", None)
    if inner is not None:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await asyncio.wait_for(inner.close(), STOP_TIMEOUT)


__all__ = ["START_GRACE", "start_client", "stop_client"]
