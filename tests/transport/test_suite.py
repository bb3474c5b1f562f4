"""The behavioural suite of every transport: the semantics in
``fleet.transport.base``, through the abstract API only, on each broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from fleet.contract import Priority
from fleet.errors import InvalidArgument, LimitExceeded, ModelNotFound, Overloaded, Unavailable
from fleet.transport import (
    DEAD_LETTER,
    HEARTBEATS,
    Delivery,
    Transport,
    is_reply_address,
    queue_name,
)
from fleet.transport.base import new_reply_address, wait_until
from tests.transport.conftest import WAIT, Deliveries, Frames, OpenTransport, wait_dead_letter

ONLINE, BATCH = Priority.ONLINE, Priority.BATCH


async def test_publish_consume_ack(open_transport: OpenTransport, unique_model: str) -> None:
    worker = await open_transport()
    client = await open_transport()
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=8)

    bodies = [b"a", b"b", b"c"]
    for body in bodies:
        await client.publish_request(unique_model, ONLINE, body)
    deliveries = await got.wait(3)
    assert sorted(d.body for d in deliveries) == bodies
    for d in deliveries:
        assert (d.model, d.priority, d.attempt) == (unique_model, ONLINE, 1)
        await d.ack()
        await d.ack()  # settling twice is harmless

    await worker.close()  # acked: nothing comes back
    again = Deliveries()
    other = await open_transport()
    await other.consume(unique_model, ONLINE, again, prefetch=8)
    assert await again.none_within(1.0)


async def test_priority_classes_are_separate(
    open_transport: OpenTransport, unique_model: str
) -> None:
    worker = await open_transport()
    await worker.declare_model(unique_model)
    online, batch = Deliveries(), Deliveries()
    await worker.consume(unique_model, ONLINE, online, prefetch=4)
    await worker.consume(unique_model, BATCH, batch, prefetch=4)
    await worker.publish_request(unique_model, BATCH, b"later")
    (d,) = await batch.wait(1)
    assert (d.body, d.priority) == (b"later", BATCH)
    await d.ack()
    assert online.items == []


async def test_reply_inbox(open_transport: OpenTransport) -> None:
    client = await open_transport()
    worker = await open_transport()
    replies = Frames()
    address = await client.open_inbox(replies)
    await worker.publish_reply(address, b"answer")
    await replies.wait_for(b"answer")
    assert is_reply_address(address)
    # an inbox that is gone drops the reply; no error for the worker
    await worker.publish_reply(new_reply_address(), b"lost")


async def _refused_everywhere(
    worker: Transport,
    model: str,
    publish: Callable[[str, bytes], Awaitable[None]],
    targets: list[str],
) -> None:
    """``publish`` to each target is an ``InvalidArgument`` that sends nothing:
    no work, no heartbeat, no dead letter."""
    await worker.declare_model(model)
    work, beats = Deliveries(), Frames()
    await worker.consume(model, ONLINE, work, prefetch=4)
    await worker.subscribe_heartbeats(beats)
    body = f"hijack-{model}".encode()
    for target in targets:
        with pytest.raises(InvalidArgument) as err:
            await publish(target, body)
        assert not err.value.retriable
    # a marker sent after them arrives; nothing sent before it did
    await worker.publish_heartbeat(b"marker")
    await beats.wait_for(b"marker")
    assert body not in beats.items
    assert await work.none_within(0.5)
    assert not await wait_dead_letter(worker, body, timeout=1.0)


@pytest.mark.shares("dead-letters")
async def test_reply_to_anything_but_an_inbox_is_refused(
    open_transport: OpenTransport, unique_model: str
) -> None:
    worker = await open_transport()
    targets = [
        queue_name(unique_model, ONLINE),
        queue_name(unique_model, BATCH),
        HEARTBEATS,
        DEAD_LETTER,
        "fleet.inbox.",
        "fleet.inbox." + "A" * 32,
        "fleet.inbox." + "0" * 31,
        "fleet.inbox." + "0" * 32 + ":0",
        "garbage",
        "",
    ]
    assert not any(is_reply_address(t) for t in targets)
    await _refused_everywhere(worker, unique_model, worker.publish_reply, targets)


async def test_full_queue_is_overloaded(open_transport: OpenTransport, unique_model: str) -> None:
    worker = await open_transport(max_queue_length=3)
    client = await open_transport(max_queue_length=3)
    await worker.declare_model(unique_model)
    for i in range(3):
        await client.publish_request(unique_model, ONLINE, b"%d" % i)
    with pytest.raises(Overloaded):
        await client.publish_request(unique_model, ONLINE, b"one too many")
    # the other priority class has a queue of its own
    await client.publish_request(unique_model, BATCH, b"batch")

    async def ack(delivery: Delivery) -> None:
        await delivery.ack()

    await worker.consume(unique_model, ONLINE, ack, prefetch=1)
    # once the backlog drains there is room again (RabbitMQ takes publishes
    # again only below 80% of the limit, a moment after the queue drained:
    # a nack then, with room in the queue, reads as retriable Unavailable)
    await _eventually_accepted(lambda: client.publish_request(unique_model, ONLINE, b"3"))


async def _eventually_accepted(publish: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT
    while True:
        try:
            await publish()
            return
        except (Overloaded, Unavailable):
            if loop.time() > end:
                raise
            await asyncio.sleep(0.1)


async def test_unknown_model(open_transport: OpenTransport, unique_model: str) -> None:
    client = await open_transport()
    with pytest.raises(ModelNotFound):
        await client.publish_request(unique_model, ONLINE, b"x")
    with pytest.raises(ModelNotFound):
        await client.depth(unique_model)


async def test_redelivery_after_consumer_goes_away(
    open_transport: OpenTransport, unique_model: str
) -> None:
    first = await open_transport()
    await first.declare_model(unique_model)
    got = Deliveries()
    await first.consume(unique_model, ONLINE, got, prefetch=4)
    await first.publish_request(unique_model, ONLINE, b"work")
    (d1,) = await got.wait(1)
    assert d1.attempt == 1
    await first.close()  # not acked: the broker has it back

    second = await open_transport()
    again = Deliveries()
    await second.consume(unique_model, ONLINE, again, prefetch=4)
    (d2,) = await again.wait(1)
    assert (d2.body, d2.attempt) == (b"work", 2)
    await d2.ack()


async def test_pause_keeps_what_was_delivered_and_resume_delivers_the_rest(
    open_transport: OpenTransport, unique_model: str
) -> None:
    worker = await open_transport()
    client = await open_transport()
    await worker.declare_model(unique_model)
    got = Deliveries()
    consumer = await worker.consume(unique_model, ONLINE, got, prefetch=8)
    await client.publish_request(unique_model, ONLINE, b"before")
    (first,) = await got.wait(1)

    await consumer.pause()
    await consumer.pause()  # idempotent
    for body in (b"p1", b"p2", b"p3"):
        await client.publish_request(unique_model, ONLINE, body)
    assert await got.none_within(1.0), "a paused consumer received"
    await first.ack()  # what was delivered before the pause can still be settled

    await consumer.resume()
    await consumer.resume()  # idempotent
    later = (await got.wait(4))[1:]
    assert sorted(d.body for d in later) == [b"p1", b"p2", b"p3"]
    assert all(d.attempt == 1 for d in later), "a pause is no redelivery"
    for d in later:
        await d.ack()
    await consumer.cancel()
    again = Deliveries()
    await (await open_transport()).consume(unique_model, ONLINE, again, prefetch=8)
    assert await again.none_within(1.0), "everything was acked"


@pytest.mark.shares("dead-letters")
async def test_reject_dead_letters(open_transport: OpenTransport, unique_model: str) -> None:
    worker = await open_transport()
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    body = f"poison-{unique_model}".encode()
    await worker.publish_request(unique_model, ONLINE, body)
    (d,) = await got.wait(1)
    await d.reject()
    assert await wait_dead_letter(worker, body)
    assert await got.none_within(0.5)


@pytest.mark.shares("dead-letters")
async def test_delivery_limit_dead_letters(
    open_transport: OpenTransport, unique_model: str
) -> None:
    client = await open_transport(delivery_limit=2)
    await client.declare_model(unique_model)
    body = f"crashes-workers-{unique_model}".encode()
    await client.publish_request(unique_model, ONLINE, body)
    for attempt in (1, 2):  # each worker dies holding it
        worker = await open_transport(delivery_limit=2)
        got = Deliveries()
        await worker.consume(unique_model, ONLINE, got, prefetch=1)
        (d,) = await got.wait(1)
        assert (d.body, d.attempt) == (body, attempt)
        await worker.close()

    last = await open_transport(delivery_limit=2)
    got = Deliveries()
    await last.consume(unique_model, ONLINE, got, prefetch=1)
    assert await wait_dead_letter(client, body)
    assert got.items == []


@pytest.mark.shares("dead-letters")
async def test_requeue_redelivers_with_a_higher_attempt_then_dead_letters(
    open_transport: OpenTransport, unique_model: str
) -> None:
    worker = await open_transport(delivery_limit=3)
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    body = f"handed-back-{unique_model}".encode()
    await worker.publish_request(unique_model, ONLINE, body)
    for attempt in (1, 2, 3):
        d = (await got.wait(attempt))[-1]
        assert (d.body, d.attempt) == (body, attempt)
        await d.requeue()
        await d.requeue()  # settling twice is harmless
    assert await wait_dead_letter(worker, body)
    # the queue is not stuck behind it
    await worker.publish_request(unique_model, ONLINE, b"next")
    last = (await got.wait(4))[-1]
    assert (last.body, last.attempt) == (b"next", 1)
    await last.ack()
    assert len(got.items) == 4


async def test_body_over_the_size_limit_is_refused_before_sending(
    open_transport: OpenTransport, unique_model: str
) -> None:
    limit = 4096
    worker = await open_transport(max_message_bytes=limit)
    assert worker.max_message_bytes == limit
    await worker.declare_model(unique_model)
    replies, beats = Frames(), Frames()
    address = await worker.open_inbox(replies)
    await worker.subscribe_heartbeats(beats)
    over = b"o" * (limit + 1)
    calls: list[Callable[[], Awaitable[None]]] = [
        lambda: worker.publish_request(unique_model, ONLINE, over),
        lambda: worker.publish_reply(address, over),
        lambda: worker.publish_heartbeat(over),
        lambda: worker.publish_notification(f"events-{unique_model}", "k", over),
    ]
    for call in calls:
        with pytest.raises(LimitExceeded) as err:
            await call()
        assert not err.value.retriable
    depth = await worker.depth(unique_model)
    assert depth.ready == 0

    at = b"a" * limit
    await worker.publish_request(unique_model, ONLINE, at)
    await worker.publish_reply(address, at)
    await worker.publish_heartbeat(at)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    (d,) = await got.wait(1)
    assert d.body == at
    await d.ack()
    await replies.wait_for(at)
    await beats.wait_for(at)
    assert over not in replies.items and over not in beats.items
    assert await got.none_within(0.3)


async def test_heartbeats_fan_out(open_transport: OpenTransport) -> None:
    a, b = Frames(), Frames()
    one = await open_transport()
    two = await open_transport()
    await one.subscribe_heartbeats(a)
    sub = await two.subscribe_heartbeats(b)
    worker = await open_transport()
    await worker.publish_heartbeat(b"beat-1")
    await a.wait_for(b"beat-1")
    await b.wait_for(b"beat-1")

    await sub.cancel()
    await worker.publish_heartbeat(b"beat-2")
    await a.wait_for(b"beat-2")
    await asyncio.sleep(0.3)
    assert b"beat-2" not in b.items


async def test_depth(open_transport: OpenTransport, unique_model: str) -> None:
    worker = await open_transport()
    await worker.declare_model(unique_model)
    for i in range(3):
        await worker.publish_request(unique_model, ONLINE, b"%d" % i)
    await worker.publish_request(unique_model, BATCH, b"b")
    depth = await worker.depth(unique_model)
    assert (depth.model, depth.ready, depth.consumers) == (unique_model, 4, 0)
    assert depth.in_flight in (0, None)

    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=2)
    await got.wait(2)

    async def settled() -> bool:
        d = await worker.depth(unique_model)
        return d.ready == 2 and d.consumers == 1 and d.in_flight in (2, None)

    assert await _poll(settled), await worker.depth(unique_model)
    depth = await worker.depth(unique_model)
    if depth.in_flight is not None:  # a broker may not say
        assert depth.backlog == 4


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.mark.faults
async def test_broker_restart(
    open_transport: OpenTransport,
    unique_model: str,
    restart_broker: Callable[[], Awaitable[None]],
) -> None:
    """After a restart: the same inbox address works again, consumers are back,
    unacked work is delivered again, and each listener hears of it once."""
    client = await open_transport()
    worker = await open_transport()
    reconnects = {"client": 0, "worker": 0}

    def counter(name: str) -> Callable[[], None]:
        def listener() -> None:
            reconnects[name] += 1

        return listener

    client.add_reconnect_listener(counter("client"))
    worker.add_reconnect_listener(counter("worker"))
    replies = Frames()
    address = await client.open_inbox(replies)
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    await client.publish_request(unique_model, ONLINE, b"in-flight")
    (held,) = await got.wait(1)

    await restart_broker()
    assert await wait_until(lambda: min(reconnects.values()) >= 1, 60)
    assert client.connected and worker.connected

    await held.ack()  # its channel is gone: a no-op, and the broker redelivers
    (_, again) = await got.wait(2)
    assert (again.body, again.attempt) == (b"in-flight", 2)
    await again.ack()

    await worker.publish_reply(address, b"after restart")
    await replies.wait_for(b"after restart")
    await client.publish_request(unique_model, ONLINE, b"new")
    (*_, new) = await got.wait(3)
    assert (new.body, new.attempt) == (b"new", 1)
    await asyncio.sleep(0.5)
    assert reconnects == {"client": 1, "worker": 1}


# --------------------------------------------------------------------------- notifications
async def test_notifications_reach_every_subscriber_in_order(
    open_transport: OpenTransport, unique_model: str
) -> None:
    destination = f"events-{unique_model}"
    worker, reader = await open_transport(), await open_transport()
    await worker.declare_notifications(destination)
    await worker.declare_notifications(destination)  # idempotent
    first, second = Frames(), Frames()
    await reader.subscribe_notifications(destination, first)
    await reader.subscribe_notifications(destination, second)
    bodies = [f"{unique_model}-{i}".encode() for i in range(5)]
    for i, body in enumerate(bodies):
        await worker.publish_notification(destination, f"m.{'done' if i % 2 else 'failed'}", body)
    for seen in (first, second):
        await seen.wait_for(bodies[-1])
        assert seen.items == bodies


@pytest.mark.shares("dead-letters")
async def test_notifications_never_go_to_the_fleets_own_names(
    open_transport: OpenTransport, unique_model: str
) -> None:
    worker = await open_transport()
    targets = [
        queue_name(unique_model, ONLINE),
        HEARTBEATS,
        DEAD_LETTER,
        "fleet.inbox." + "0" * 32,
        "fleet.anything",
        "",
        "-leading-dash",
        "a b",
        "x" * 201,
    ]
    for target in targets:
        with pytest.raises(InvalidArgument):
            await worker.declare_notifications(target)

    async def notify(target: str, body: bytes) -> None:
        await worker.publish_notification(target, "k", body)

    await _refused_everywhere(worker, unique_model, notify, targets)
