"""The AMQP protocol client (``fleet.transport._amqp_wire``) against a real
RabbitMQ: confirms, returns, nacks, deliveries over several frames, acks and
requeues, the broker closing a channel or the connection, cancels it sends,
heartbeats and a half-open connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import unquote, urlsplit

import pytest

from fleet.transport._amqp_wire import (
    Delivered,
    Returned,
    WireClosed,
    WireConnection,
    WireError,
)
from tests.conftest import BROKERS, broker_url_for

pytestmark = BROKERS["amqp"].mark

Open = Callable[..., Awaitable[WireConnection]]


@pytest.fixture
async def wire() -> AsyncIterator[Open]:
    """Open connections to the test broker (keywords: WireConnection.open's);
    every one is closed afterwards."""
    parts = urlsplit(broker_url_for("amqp"))
    made: list[WireConnection] = []

    async def make(**options: object) -> WireConnection:
        args: dict[str, object] = {
            "login": unquote(parts.username or "guest"),
            "password": unquote(parts.password or "guest"),
            "vhost": unquote(parts.path[1:]) or "/",
        }
        args.update(options)
        host, port = args.pop("host", parts.hostname), args.pop("port", parts.port or 5672)
        conn = await WireConnection.open(str(host), int(str(port)), **args)  # type: ignore[arg-type]
        made.append(conn)
        return conn

    yield make
    for conn in made:
        await conn.close()


def _name() -> str:
    return f"wire-test-{uuid.uuid4().hex[:10]}"


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_confirmed_publish_is_delivered_whole_and_acked(wire: Open) -> None:
    conn = await wire()
    ch = await conn.channel(confirms=True, prefetch=10)
    name = _name()
    await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        big = bytes(range(256)) * 1200  # 300 KB: three body frames at the usual frame_max
        await asyncio.wait_for(ch.publish(name, b"small", persistent=True), 10)
        await asyncio.wait_for(ch.publish(name, big, persistent=True), 10)
        await asyncio.wait_for(ch.publish(name, b"", persistent=False), 10)
        got: list[Delivered] = []
        await ch.consume(name, got.append, no_ack=False)
        await _until(lambda: len(got) == 3)
        assert [d.body for d in got] == [b"small", big, b""]
        assert [d.redelivered for d in got] == [False] * 3
        assert len({d.delivery_tag for d in got}) == 3
        ch.ack(got[-1].delivery_tag, multiple=True)
        await asyncio.sleep(0.2)
        _, ready, consumers = await ch.declare_queue(name, passive=True)
        assert (ready, consumers) == (0, 1)
    finally:
        await ch.declare_queue(name, passive=True)
        await (await conn.channel()).call(_delete(name))


def _delete(name: str) -> object:
    from pamqp import commands

    return commands.Queue.Delete(queue=name)


async def test_a_mandatory_publish_no_queue_takes_fails_as_returned(wire: Open) -> None:
    conn = await wire()
    ch = await conn.channel(confirms=True)
    with pytest.raises(Returned):
        await asyncio.wait_for(ch.publish(_name(), b"x", persistent=True), 10)
    # the channel carries on
    name, _, _ = await ch.declare_queue("", exclusive=True)
    await asyncio.wait_for(ch.publish(name, b"y", persistent=False), 10)


async def test_a_nack_with_requeue_redelivers_and_the_quorum_queue_counts_it(
    wire: Open,
) -> None:
    conn = await wire()
    ch = await conn.channel(confirms=True, prefetch=1)
    name = _name()
    await ch.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        await ch.publish(name, b"again", persistent=True)
        got: list[Delivered] = []
        await ch.consume(name, got.append, no_ack=False)
        await _until(lambda: len(got) == 1)
        ch.nack(got[0].delivery_tag, requeue=True)
        await _until(lambda: len(got) == 2)
        assert got[1].body == b"again" and got[1].redelivered
        assert (got[1].headers or {}).get("x-delivery-count") == 1
        ch.ack(got[1].delivery_tag)
    finally:
        await (await conn.channel()).call(_delete(name))


async def test_the_broker_closing_a_channel_fails_its_call_and_spares_the_others(
    wire: Open,
) -> None:
    conn = await wire()
    doomed, other = await conn.channel(), await conn.channel(confirms=True)
    closed: list[BaseException] = []
    doomed.on_close.append(closed.append)
    with pytest.raises(WireClosed) as caught:
        await asyncio.wait_for(doomed.consume(_name(), print, no_ack=True), 10)
    assert caught.value.reply_code == 404
    assert doomed.is_closed and len(closed) == 1
    with pytest.raises(WireError):
        doomed.publish("q", b"x", persistent=False)
    name, _, _ = await other.declare_queue("", exclusive=True)
    await asyncio.wait_for(other.publish(name, b"fine", persistent=False), 10)


async def test_a_refused_login_fails_with_the_brokers_reason(wire: Open) -> None:
    with pytest.raises(WireClosed) as caught:
        await wire(password="not-the-password")
    assert caught.value.reply_code == 403
    assert "ACCESS_REFUSED" in caught.value.reply_text


async def test_deleting_a_consumed_queue_tells_the_consumer(wire: Open) -> None:
    conn = await wire()
    ch = await conn.channel()
    name, _, _ = await ch.declare_queue(_name())
    cancelled: list[str] = []
    ch.on_cancel.append(cancelled.append)
    tag = await ch.consume(name, print, no_ack=True)
    await (await conn.channel()).call(_delete(name))
    await _until(lambda: cancelled == [tag])
    assert not ch.is_closed


async def test_a_consumer_that_raises_does_not_break_the_connection(wire: Open) -> None:
    conn = await wire()
    ch = await conn.channel(confirms=True)
    name, _, _ = await ch.declare_queue("", exclusive=True)
    got: list[bytes] = []

    def on(d: Delivered) -> None:
        if d.body == b"bad":
            raise RuntimeError("consumer bug")
        got.append(d.body)

    await ch.consume(name, on, no_ack=True)
    for body in (b"bad", b"good"):
        await ch.publish(name, body, persistent=False)
    await _until(lambda: got == [b"good"])
    assert not conn.is_closed


async def test_heartbeats_keep_an_idle_connection_and_drop_a_silent_one(wire: Open) -> None:
    """Heartbeats of 1 s: an idle connection lives on (both sides send them);
    behind a proxy that forwards nothing any more, the connection is dropped
    after two silent intervals, and what waits on it fails."""
    from tests.chaos.proxy import FaultProxy

    parts = urlsplit(broker_url_for("amqp"))
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        conn = await wire(host="127.0.0.1", port=proxy.port, heartbeat=1)
        assert conn.heartbeat == 1
        ch = await conn.channel(confirms=True)
        name, _, _ = await ch.declare_queue("", exclusive=True)
        await asyncio.sleep(3.5)  # idle past three intervals
        assert not conn.is_closed
        await asyncio.wait_for(ch.publish(name, b"alive", persistent=False), 10)
        proxy.blackhole()
        confirm = ch.publish(name, b"lost", persistent=False)
        # dropped by this side or the broker's, whichever counts two intervals first
        await asyncio.wait_for(conn.closed, 10)
        with pytest.raises(WireError):
            await confirm
        proxy.recover()


@pytest.mark.unit
async def test_two_silent_heartbeat_intervals_drop_the_connection() -> None:
    """Each half interval sends a heartbeat where nothing else was written,
    and four half intervals in a row with nothing heard drop the connection."""

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out: list[bytes] = []
            self.closing = False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            self.out.append(bytes(data))

        def is_closing(self) -> bool:
            return self.closing

        def close(self) -> None:
            self.closing = True

    conn = WireConnection(heartbeat=1)
    transport = Transport()
    conn.connection_made(transport)
    transport.out.clear()  # the protocol header
    conn._tick()
    assert transport.out == [b"\x08\x00\x00\x00\x00\x00\x00\xce"] and not conn.is_closed
    conn.data_received(b"\x08\x00\x00\x00\x00\x00\x00\xce")  # heard: counting starts again
    for _ in range(4):
        conn._tick()
    assert not conn.is_closed  # the first tick after hearing counts nothing
    conn._tick()
    assert conn.is_closed and transport.closing
    assert "no frame from the broker in 2 s" in str(conn.closed.result())


async def test_a_clean_close_leaves_nothing_open(wire: Open) -> None:
    conn = await wire()
    ch = await conn.channel()
    await conn.close()
    assert conn.is_closed and ch.is_closed
    with pytest.raises(WireError):
        await ch.declare_queue("", exclusive=True)
