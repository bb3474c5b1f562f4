"""Starting aiokafka clients without leaking sockets.

aiokafka's bootstrap opens a connection that nothing owns until the metadata
request on it returns: cancelling ``start()`` at that moment leaves the socket
open until the garbage collector finds it ("Unclosed AIOKafkaConnection"), and
``stop()`` cannot close it. So a start is never cancelled while it runs: it gets
its time, then a grace period to end on aiokafka's own request timeouts, and
only then is it cancelled. Whatever the outcome, a client whose start did not
succeed is stopped before the error (or the cancellation) goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.errors import KafkaError

START_GRACE = 10.0
"""Seconds a start may run past its timeout (or its caller's cancellation) to
end by itself before it is cancelled anyway."""

STOP_TIMEOUT = 10.0


async def start_client(
    client: Any, timeout: float | None, *, stop: str = "stop", grace: float = START_GRACE
) -> None:
    """``await client.start()`` within ``timeout`` seconds (None: no limit).

    On failure, timeout or cancellation the client is stopped with its ``stop``
    method and the exception is raised again."""
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
    by aiokafka and otherwise ignored here."""
    with contextlib.suppress(KafkaError, OSError, TimeoutError):
        await asyncio.wait_for(getattr(client, stop)(), STOP_TIMEOUT)


__all__ = ["START_GRACE", "start_client", "stop_client"]
