"""``memory://NAME``: an in-process broker with the semantics of the real ones.

Everything in one process that connects to the same ``memory://NAME`` shares
one broker. It keeps what a real broker keeps and fails the way one fails:
bounded queues refuse with :class:`Overloaded`, unknown models raise
:class:`ModelNotFound`, unacked deliveries of a consumer that goes away are
delivered again with a higher ``attempt``, and a message past the delivery
limit, or rejected, lands in the dead-letter queue. :meth:`MemoryBroker.restart`
drops every connection the way a broker restart does; transports reconnect on
their own.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleet.contract import Priority
from fleet.errors import ModelNotFound, Overloaded, Unavailable
from fleet.logging import get_logger
from fleet.transport.base import (
    DEAD_LETTER_TAP,
    HEARTBEATS,
    Capability,
    Consumer,
    DeadLetterTap,
    Delivery,
    Depth,
    OnBytes,
    OnDelivery,
    Transport,
    TransportOptions,
    check_destination,
    check_reply_address,
    check_size,
    new_reply_address,
    queue_name,
)
from fleet.transport.spec import TransportSpec

log = get_logger("fleet.transport.memory")

_DEAD_LETTER_LIMIT = 10_000
_tags = itertools.count(1)


@dataclass(slots=True)
class _Message:
    body: bytes
    attempts: int = 0


@dataclass(eq=False, slots=True)
class _Queue:
    name: str
    model: str
    priority: Priority
    max_length: int
    delivery_limit: int
    ready: deque[_Message] = field(default_factory=deque)
    unacked: dict[int, tuple[_Message, _MemoryConsumer]] = field(default_factory=dict)
    consumers: list[_MemoryConsumer] = field(default_factory=list)
    _turn: int = 0


class MemoryBroker:
    """The shared state behind one ``memory://NAME``."""

    _registry: dict[str, MemoryBroker] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, _Queue] = {}
        self.inboxes: dict[str, OnBytes] = {}
        self.subscribers: dict[str, list[OnBytes]] = {}  # heartbeats, notifications
        self.destinations: set[str] = set()  # declared notification destinations
        self.dead_letters: deque[bytes] = deque(maxlen=_DEAD_LETTER_LIMIT)
        self.transports: set[MemoryTransport] = set()
        self.up = True

    @classmethod
    def get(cls, name: str) -> MemoryBroker:
        broker = cls._registry.get(name)
        if broker is None:
            broker = cls._registry[name] = cls(name)
        return broker

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget one broker (or all): for tests."""
        if name is None:
            cls._registry.clear()
        else:
            cls._registry.pop(name, None)

    # ------------------------------------------------------------------ queues
    def declare(self, model: str, priority: Priority, options: TransportOptions) -> _Queue:
        name = queue_name(model, priority)
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue(
                name=name,
                model=model,
                priority=priority,
                max_length=options.max_queue_length,
                delivery_limit=options.delivery_limit,
            )
        return q

    def publish(self, name: str, body: bytes) -> None:
        q = self.queues.get(name)
        if q is None:
            raise ModelNotFound(f"no worker has declared queue {name!r}")
        if len(q.ready) >= q.max_length:
            raise Overloaded(f"queue {name!r} is full ({q.max_length} messages)")
        q.ready.append(_Message(body))
        self.pump(q)

    def dead_letter(self, body: bytes) -> None:
        """To the dead letters, and to the tap's queue once someone made it."""
        self.dead_letters.append(body)
        tap = self.queues.get(DEAD_LETTER_TAP)
        if tap is not None:
            if len(tap.ready) >= tap.max_length:
                tap.ready.popleft()  # drop-head, like the RabbitMQ queue
            tap.ready.append(_Message(body))
            self.pump(tap)

    def declare_tap(self) -> _Queue:
        q = self.queues.get(DEAD_LETTER_TAP)
        if q is None:
            q = self.queues[DEAD_LETTER_TAP] = _Queue(
                name=DEAD_LETTER_TAP,
                model="",
                priority=Priority.BATCH,
                max_length=_DEAD_LETTER_LIMIT,
                delivery_limit=1 << 30,
            )
        return q

    def pump(self, q: _Queue) -> None:
        while q.ready:
            live = [c for c in q.consumers if c.has_room()]
            if not live:
                return
            consumer = live[q._turn % len(live)]
            q._turn += 1
            msg = q.ready.popleft()
            msg.attempts += 1
            if msg.attempts > q.delivery_limit:
                log.warning("delivery limit reached; dead-lettering", queue=q.name)
                self.dead_letter(msg.body)
                continue
            tag = next(_tags)
            q.unacked[tag] = (msg, consumer)
            consumer.deliver(_MemoryDelivery(self, q, tag, msg))

    def settle(self, q: _Queue, tag: int, *, dead_letter: bool, requeue: bool = False) -> None:
        entry = q.unacked.pop(tag, None)
        if entry is None:
            return  # its consumer died: already back in the queue
        msg = entry[0]
        if requeue and msg.attempts >= q.delivery_limit:  # like RabbitMQ: dead on return
            dead_letter, requeue = True, False
        if dead_letter:
            self.dead_letter(msg.body)
        elif requeue:
            q.ready.appendleft(msg)
        entry[1].in_flight -= 1
        self.pump(q)

    def drop_consumer(self, consumer: _MemoryConsumer, *, requeue_unacked: bool) -> None:
        q = consumer.queue
        if consumer in q.consumers:
            q.consumers.remove(consumer)
        if requeue_unacked:
            mine = [(tag, m) for tag, (m, c) in q.unacked.items() if c is consumer]
            for tag, _m in mine:
                del q.unacked[tag]
            # back at the head, in their original order, like a requeue
            for _tag, m in reversed(mine):
                if m.attempts >= q.delivery_limit:  # like RabbitMQ: dead-lettered on return
                    self.dead_letter(m.body)
                else:
                    q.ready.appendleft(m)
            consumer.in_flight = 0
        self.pump(q)

    # ------------------------------------------------------------------ restart
    async def restart(self, downtime: float = 0.2) -> None:
        """Drop every connection, stay down ``downtime`` seconds, come back.
        Queues and their messages survive (they are durable); unacked ones are
        delivered again; inboxes vanish until their clients reconnect."""
        self.up = False
        for t in list(self.transports):
            t._lost()
        await asyncio.sleep(downtime)
        self.up = True


class _MemoryDelivery(Delivery):
    def __init__(self, broker: MemoryBroker, q: _Queue, tag: int, msg: _Message) -> None:
        self.body = msg.body
        self.model = q.model
        self.priority = q.priority
        self.attempt = msg.attempts
        self._broker = broker
        self._queue = q
        self._tag = tag

    async def ack(self) -> None:
        self._broker.settle(self._queue, self._tag, dead_letter=False)
        await asyncio.sleep(0)

    async def reject(self) -> None:
        self._broker.settle(self._queue, self._tag, dead_letter=True)
        await asyncio.sleep(0)

    async def requeue(self) -> None:
        self._broker.settle(self._queue, self._tag, dead_letter=False, requeue=True)
        await asyncio.sleep(0)


class _MemoryConsumer(Consumer):
    def __init__(
        self,
        transport: MemoryTransport,
        queue: _Queue,
        on_delivery: OnDelivery,
        prefetch: int,
    ) -> None:
        self.transport = transport
        self.queue = queue
        self.on_delivery = on_delivery
        self.prefetch = prefetch
        self.in_flight = 0
        self.active = True
        self.paused = False
        self.tasks: set[asyncio.Task[None]] = set()

    def has_room(self) -> bool:
        return self.active and not self.paused and self.in_flight < self.prefetch

    def deliver(self, d: _MemoryDelivery) -> None:
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(d))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, d: _MemoryDelivery) -> None:
        try:
            await self.on_delivery(d)
        except Exception:
            log.exception("delivery handler failed", queue=self.queue.name)

    async def pause(self) -> None:
        self.paused = True
        await asyncio.sleep(0)

    async def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.transport.broker.pump(self.queue)
        await asyncio.sleep(0)

    async def cancel(self) -> None:
        self.active = False
        if self in self.transport._consumers:
            self.transport._consumers.remove(self)
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        await asyncio.sleep(0)


class MemoryTransport(Transport, DeadLetterTap):
    scheme = "memory"
    capabilities = frozenset({Capability.DEAD_LETTER_TAP})

    def __init__(self, url: str, options: TransportOptions) -> None:
        super().__init__(url, options)
        parts = urlsplit(url)
        self.broker = MemoryBroker.get((parts.netloc + parts.path) or "default")
        self._connected = False
        self._closing = False
        self._consumers: list[_MemoryConsumer] = []
        self._inboxes: dict[str, OnBytes] = {}
        self._subs: list[tuple[str, OnBytes]] = []  # (channel, callback)
        self._reconnector: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        if not self.broker.up:
            raise Unavailable(f"memory broker {self.broker.name!r} is restarting")
        self._closing = False
        self._attach()

    def _attach(self) -> None:
        self.broker.transports.add(self)
        for address, cb in self._inboxes.items():
            self.broker.inboxes[address] = cb
        for channel, cb in self._subs:
            self.broker.subscribers.setdefault(channel, []).append(cb)
        for c in self._consumers:
            c.active = True
            c.in_flight = 0
            c.queue.consumers.append(c)
        self._connected = True
        self._up.set()
        for c in self._consumers:
            self.broker.pump(c.queue)

    def _detach(self, *, requeue: bool) -> None:
        self._connected = False
        self._up.clear()
        self.broker.transports.discard(self)
        for address in self._inboxes:
            self.broker.inboxes.pop(address, None)
        for channel, cb in self._subs:
            live = self.broker.subscribers.get(channel, [])
            if cb in live:
                live.remove(cb)
        for c in self._consumers:
            c.active = False
            self.broker.drop_consumer(c, requeue_unacked=requeue)

    def _lost(self) -> None:
        """The broker went away: like a dropped socket."""
        self._detach(requeue=True)
        if not self._closing and self._reconnector is None:
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            while not self.broker.up:
                await asyncio.sleep(self.options.reconnect_interval)
            self._attach()
            log.info("reconnected", broker=self.broker.name)
            await self._fire_reconnected()
        finally:
            self._reconnector = None

    async def close(self) -> None:
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
        self._detach(requeue=True)
        tasks = [t for c in self._consumers for t in c.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._consumers.clear()
        self._inboxes.clear()
        self._subs.clear()

    async def _ready(self) -> None:
        if self._connected:
            return
        if self._closing:
            raise Unavailable("transport is closed")
        try:
            await asyncio.wait_for(self._up.wait(), self.options.publish_timeout)
        except TimeoutError:
            raise Unavailable(f"memory broker {self.broker.name!r} unreachable") from None

    # ------------------------------------------------------------------ topology
    async def declare_model(self, model: str) -> None:
        await self._ready()
        for p in Priority:
            self.broker.declare(model, p, self.options)

    # ------------------------------------------------------------------ client side
    async def publish_request(self, model: str, priority: Priority, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "request")
        await self._ready()
        self.broker.publish(queue_name(model, priority), body)
        await asyncio.sleep(0)

    async def open_inbox(self, on_reply: OnBytes) -> str:
        await self._ready()
        address = new_reply_address()
        self._inboxes[address] = on_reply
        self.broker.inboxes[address] = on_reply
        return address

    # ------------------------------------------------------------------ worker side
    async def consume(
        self, model: str, priority: Priority, on_delivery: OnDelivery, *, prefetch: int
    ) -> Consumer:
        await self._ready()
        return self._consume(
            self.broker.declare(model, priority, self.options), on_delivery, prefetch
        )

    async def tap_dead_letters(self, on_delivery: OnDelivery, *, prefetch: int) -> Consumer:
        await self._ready()
        return self._consume(self.broker.declare_tap(), on_delivery, prefetch)

    def _consume(self, q: _Queue, on_delivery: OnDelivery, prefetch: int) -> Consumer:
        c = _MemoryConsumer(self, q, on_delivery, max(1, prefetch))
        self._consumers.append(c)
        q.consumers.append(c)
        self.broker.pump(q)
        return c

    async def publish_reply(self, reply_to: str, body: bytes) -> None:
        check_reply_address(reply_to)
        check_size(body, self.max_message_bytes, "reply")
        await self._ready()
        cb = self.broker.inboxes.get(reply_to)
        if cb is None:
            log.debug("reply to an inbox that is gone; dropped", reply_to=reply_to)
        else:
            asyncio.get_running_loop().call_soon(cb, body)
        await asyncio.sleep(0)

    async def publish_heartbeat(self, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "heartbeat")
        await self._fan_out(HEARTBEATS, body)

    async def subscribe_heartbeats(self, on_beat: OnBytes) -> Consumer:
        return await self._subscribe_channel(HEARTBEATS, on_beat)

    async def declare_notifications(self, destination: str) -> None:
        await self._ready()
        self.broker.destinations.add(check_destination(destination))

    async def publish_notification(self, destination: str, key: str, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "notification")
        await self.declare_notifications(destination)
        await self._fan_out(destination, body)

    async def subscribe_notifications(self, destination: str, on_message: OnBytes) -> Consumer:
        await self.declare_notifications(destination)
        return await self._subscribe_channel(destination, on_message)

    async def _fan_out(self, channel: str, body: bytes) -> None:
        await self._ready()
        loop = asyncio.get_running_loop()
        for cb in list(self.broker.subscribers.get(channel, ())):
            loop.call_soon(cb, body)

    async def _subscribe_channel(self, channel: str, on_message: OnBytes) -> Consumer:
        await self._ready()
        entry = (channel, on_message)
        self._subs.append(entry)
        live = self.broker.subscribers.setdefault(channel, [])
        live.append(on_message)
        transport = self

        class _Sub(Consumer):
            """Nothing is kept: what is published while paused is not seen."""

            async def cancel(self) -> None:
                if entry in transport._subs:
                    transport._subs.remove(entry)
                await self.pause()

            async def pause(self) -> None:
                if on_message in live:
                    live.remove(on_message)

            async def resume(self) -> None:
                if entry in transport._subs and on_message not in live:
                    live.append(on_message)

        return _Sub()

    # ------------------------------------------------------------------ operators
    async def depth(self, model: str) -> Depth:
        await self._ready()
        qs = [self.broker.queues.get(queue_name(model, p)) for p in Priority]
        present = [q for q in qs if q is not None]
        if not present:
            raise ModelNotFound(f"model {model!r} has no queues")
        return Depth(
            model=model,
            ready=sum(len(q.ready) for q in present),
            in_flight=sum(len(q.unacked) for q in present),
            consumers=max(len(q.consumers) for q in present),
        )

    async def take_dead_letters(self, limit: int = 100) -> list[bytes]:
        await self._ready()
        out: list[bytes] = []
        while self.broker.dead_letters and len(out) < limit:
            out.append(self.broker.dead_letters.popleft())
        return out


SPEC = TransportSpec(name="memory", schemes=("memory",), factory=MemoryTransport)

__all__ = ["SPEC", "MemoryBroker", "MemoryTransport"]
