"""Consumers of the ``amqp://`` transport: each on a channel of its own, and
deliveries that remember the channel they came on.

Consumers run on the transport's protocol connection
(:mod:`fleet.transport._amqp_wire`), not aio-pika's: a delivery reaches the
subscription in the same turn of the event loop that read its frames, where
aio-pika and aiormq pass it through a task to read each frame, a queue, the
channel's task and a task of its own per message. Settlements go out on the
same channel (:class:`Settler`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, Protocol

from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from fleet.contract import Priority
from fleet.logging import get_logger
from fleet.transport._amqp_wire import Delivered, WireChannel, WireConnection
from fleet.transport.base import Consumer, Delivery, OnBytes, OnDelivery

log = get_logger("fleet.transport.amqp")

OnMessage = Callable[["Subscription", Delivered], None]
Declare = Callable[[WireChannel], Awaitable[str]]
"""Declare (and bind) the subscription's queue on its channel; its name."""


class Owner(Protocol):
    """What a subscription needs from its transport."""

    def _restart_soon(self, sub: Subscription) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def _forget(self, sub: Subscription) -> None: ...


def _attempt(message: Delivered) -> int:
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int) and not isinstance(count, bool):
        return count + 1
    return 2 if message.redelivered else 1


# One settlement decided for a delivery tag: ack, or nack with requeue or not.
Decision = tuple[bool, bool]


class Settler:
    """The settlements of one channel, sent together.

    A quorum queue's channel sends each settlement frame on as a command of
    its own, holds back those past a few dozen not yet applied, and drops
    what it holds when the channel closes: a worker that acked its last
    batch one message at a time and then closed saw much of it delivered
    again. So the decisions made in one turn of the event loop leave as few
    frames as they allow: each run of like decisions from the oldest
    outstanding delivery up is one frame with ``multiple`` set, and only
    decisions past a delivery still open go one by one. Fewer frames are
    less work for the client and the broker too.
    """

    def __init__(self, channel: WireChannel) -> None:
        self._channel = channel
        self._outstanding: dict[int, None] = {}  # delivered, not settled; oldest first
        self._decided: dict[int, Decision] = {}
        # set from a decision until the frames of its turn are written
        self._written: asyncio.Future[None] | None = None

    def delivered(self, tag: int) -> None:
        self._outstanding[tag] = None

    def settle(self, tag: int, *, ack: bool, requeue: bool) -> None:
        """Decide ``tag``; its frame is written, with every decision of this
        turn of the event loop, by a callback the first decision schedules
        (no task, and no wait for it: :meth:`idle` waits)."""
        if tag not in self._outstanding or tag in self._decided:
            return
        self._decided[tag] = (ack, not ack and requeue)
        if self._written is None:
            loop = asyncio.get_running_loop()
            self._written = loop.create_future()
            loop.call_soon(self._flush)

    async def idle(self) -> None:
        """Wait until every decision made so far is written."""
        while self._written is not None:
            await asyncio.shield(self._written)

    def frames(self) -> list[tuple[int, Decision, bool]]:
        """Take the decisions made so far as (tag, decision, multiple) frames."""
        runs: list[list[int]] = []  # like decisions, from the oldest open delivery up
        for tag in self._outstanding:  # oldest first: a run covers what is below it
            decision = self._decided.get(tag)
            if decision is None:
                break
            if runs and self._decided[runs[-1][-1]] == decision:
                runs[-1].append(tag)
            else:
                runs.append([tag])
        out = [(run[-1], self._decided[run[-1]], len(run) > 1) for run in runs]
        last = runs[-1][-1] if runs else -1  # past it: behind a delivery still open
        out += [(t, d, False) for t, d in sorted(self._decided.items()) if t > last]
        for tag in self._decided:
            del self._outstanding[tag]
        self._decided = {}
        return out

    def _flush(self) -> None:
        written, self._written = self._written, None
        try:
            for tag, (ack, requeue), multiple in self.frames():
                if ack:
                    self._channel.ack(tag, multiple=multiple)
                else:
                    self._channel.nack(tag, multiple=multiple, requeue=requeue)
        except CONNECTION_EXCEPTIONS as exc:
            log.info("could not settle deliveries; the broker redelivers them", error=repr(exc))
        finally:
            if written is not None:
                written.set_result(None)


class AmqpDelivery(Delivery):
    def __init__(
        self, sub: Subscription, message: Delivered, model: str, priority: Priority
    ) -> None:
        self.body = message.body
        self.model = model
        self.priority = priority
        self.attempt = _attempt(message)
        self._sub = sub
        self._tag = message.delivery_tag
        self._channel = sub.channel
        self._settler = sub.settler
        self._settled = False

    async def ack(self) -> None:
        await self._settle(ack=True)

    async def reject(self) -> None:
        await self._settle(ack=False)

    async def requeue(self) -> None:
        """Nack with requeue: the quorum queue counts the return toward its
        ``x-delivery-limit`` and dead-letters the message past it."""
        await self._settle(ack=False, requeue=True)

    async def _settle(self, *, ack: bool, requeue: bool = False) -> None:
        if self._settled:
            return
        self._settled = True
        channel, settler = self._channel, self._settler
        if (
            channel is None
            or settler is None
            or self._tag is None
            or channel is not self._sub.channel
            or channel.is_closed
        ):
            log.info("channel of this delivery is gone; the broker redelivers it", ack=ack)
            return
        settler.settle(self._tag, ack=ack, requeue=requeue)
        self._sub.settled(channel)


class Subscription(Consumer):
    """One consumer on a channel of its own, started again after a reconnect."""

    def __init__(
        self,
        transport: Owner,
        label: str,
        declare: Declare,
        on_message: OnMessage,
        *,
        prefetch: int | None,
    ) -> None:
        self.transport = transport
        self.label = label
        self.declare = declare
        self.on_message = on_message
        self.prefetch = prefetch  # None: no-ack
        self.channel: WireChannel | None = None
        self.settler: Settler | None = None
        self.queue: str | None = None
        self.tag: str | None = None
        self.unsettled = 0
        self.cancelled = False
        self.cancel_done = False  # the broker confirmed the cancel: nothing more comes
        self.paused = False
        self.restarting = False
        # consuming, pausing and resuming one at a time: each awaits the broker,
        # and one in between could leave a consumer nobody cancels
        self._switch = asyncio.Lock()

    async def start(self, conn: WireConnection) -> None:
        """Open a fresh channel, declare the queue, consume (unless cancelled
        meanwhile: a cancel while a reconnection restores this subscription)."""
        if self.cancelled:
            return
        self.channel, self.settler, self.unsettled = None, None, 0
        self.queue, self.tag = None, None  # the old channel's: a resume meanwhile waits for us
        channel = await conn.channel(prefetch=self.prefetch)
        if self.cancelled:
            await channel.close()
            return
        self.channel = channel
        channel.on_close.append(partial(self._channel_closed, channel))
        channel.on_cancel.append(self._broker_cancelled)
        self.settler = Settler(channel)
        await self.consume()

    async def consume(self) -> None:
        """Declare the queue and, unless paused or cancelled, consume on the
        current channel."""
        channel = self.channel
        if channel is None or self.cancelled:
            return
        queue = await self.declare(channel)
        async with self._switch:
            if channel is not self.channel or self.cancelled:
                return  # closed or replaced meanwhile
            self.queue = queue
            if not self.paused:
                await self._consume_on(queue)

    async def _consume_on(self, queue: str) -> None:
        channel = self.channel
        if channel is None:
            return
        self.tag = await channel.consume(queue, self._deliver, no_ack=self.prefetch is None)

    async def _cancel_consumer(self, tag: str) -> None:
        channel = self.channel
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.cancel(tag)

    async def pause(self) -> None:
        """Cancel the consumer but keep the channel: what it delivered can
        still be settled, and :meth:`resume` consumes on it again."""
        async with self._switch:
            if self.paused:
                return
            self.paused = True
            tag, self.tag = self.tag, None
            if tag:
                await self._cancel_consumer(tag)

    async def resume(self) -> None:
        async with self._switch:
            if not self.paused:
                return
            self.paused = False
            channel, queue = self.channel, self.queue
            if self.cancelled or channel is None or channel.is_closed or queue is None:
                return  # a restart or a reconnection consumes again
            try:
                await self._consume_on(queue)
            except CONNECTION_EXCEPTIONS as exc:
                log.warning(
                    "could not consume again; restarting", queue=self.label, error=repr(exc)
                )
                self.transport._restart_soon(self)

    def _deliver(self, message: Delivered) -> None:
        if self.prefetch is not None and self.settler is not None:
            self.unsettled += 1
            self.settler.delivered(message.delivery_tag)
        self.on_message(self, message)

    def _channel_closed(self, channel: WireChannel, exc: BaseException) -> None:
        if channel is self.channel and not self.cancelled:
            log.debug("consumer channel closed", queue=self.label, error=repr(exc))
            self.transport._restart_soon(self)

    def _broker_cancelled(self, tag: str) -> None:
        if tag == self.tag and not self.cancelled:
            log.warning("the broker cancelled a consumer; consuming again", queue=self.label)
            self.transport._restart_soon(self)

    def settled(self, channel: WireChannel) -> None:
        self.unsettled -= 1
        if self.cancel_done and self.unsettled <= 0 and channel is self.channel:
            self.transport._spawn(self.close())

    async def cancel(self) -> None:
        """Stop receiving; the channel stays open until what it delivered is settled."""
        self.cancelled = True
        self.transport._forget(self)
        async with self._switch:  # a consume under way gets its tag first
            if self.tag:
                await self._cancel_consumer(self.tag)
        # deliveries the broker sent before its CancelOk were read before it,
        # and reached _deliver in that same read: all are counted by now
        self.cancel_done = True
        if self.unsettled <= 0:
            await self.close()

    async def close(self) -> None:
        """Close the channel once every settlement decided on it is written."""
        if self.settler is not None:
            await self.settler.idle()
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()


def bytes_handler(callback: OnBytes) -> OnMessage:
    def on_message(sub: Subscription, message: Delivered) -> None:
        try:
            callback(message.body)
        except Exception:
            log.exception("message handler failed", queue=sub.label)

    return on_message


async def run_handler(on_delivery: OnDelivery, delivery: Delivery) -> None:
    try:
        await on_delivery(delivery)
    except Exception:
        log.exception("delivery handler failed", model=delivery.model)


__all__ = [
    "AmqpDelivery",
    "Declare",
    "OnMessage",
    "Settler",
    "Subscription",
    "bytes_handler",
    "run_handler",
]
