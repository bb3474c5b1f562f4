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
    """Heartbeats of 4 s: an idle connection lives on (both sides send them);
    behind a proxy that forwards nothing any more, the connection is dropped
    after two silent intervals, and what waits on it fails."""
    from tests.chaos.proxy import FaultProxy

    parts = urlsplit(broker_url_for("amqp"))
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        conn = await wire(host="127.0.0.1", port=proxy.port, heartbeat=4)
        assert conn.heartbeat == 4
        ch = await conn.channel(confirms=True)
        name, _, _ = await ch.declare_queue("", exclusive=True)
        await asyncio.sleep(9)  # idle past two intervals
        assert not conn.is_closed
        await asyncio.wait_for(ch.publish(name, b"alive", persistent=False), 10)
        proxy.blackhole()
        confirm = ch.publish(name, b"lost", persistent=False)
        # dropped by this side or the broker's, whichever counts two intervals first
        await asyncio.wait_for(conn.closed, 40)
        with pytest.raises(WireError):
            await confirm
        proxy.recover()


@pytest.mark.unit
async def test_two_silent_heartbeat_intervals_drop_the_connection() -> None:
    """Each half interval sends a heartbeat where nothing else was written,
    and four half intervals in a row with nothing heard drop the connection."""

    conn = WireConnection(heartbeat=1)
    transport = _Transport()
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


@pytest.mark.unit
async def test_a_multiple_confirm_settles_every_publish_up_to_its_tag_and_no_further() -> None:
    from fleet.transport._amqp_wire import Nacked, WireChannel

    class Conn:
        frame_max = 131072
        written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    ch = WireChannel(Conn(), 1)  # type: ignore[arg-type]
    ch._confirming = True
    confirms = [ch.publish("q", b"%d" % i, persistent=True) for i in range(4)]
    ch._confirmed(2, multiple=True, ack=True)
    assert [f.done() for f in confirms] == [True, True, False, False]
    ch._returned.add(4)
    ch._confirmed(4, multiple=False, ack=True)  # returned, then acked: Returned
    ch._confirmed(3, multiple=False, ack=False)
    with pytest.raises(Nacked):
        confirms[2].result()
    with pytest.raises(Returned):
        confirms[3].result()
    assert not ch._confirms and not ch._returned


class _Transport(asyncio.Transport):
    """What a connection writes, in order; closed on demand."""

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


def _answering(conn: WireConnection, transport: _Transport) -> asyncio.Task[None]:
    """Answer each Channel.Open written with an OpenOk, as a broker would."""
    from pamqp import commands
    from pamqp import frame as pframe

    async def answer() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0)
            for data in transport.out[seen:]:
                _, number, method = pframe.unmarshal(data)
                if isinstance(method, commands.Channel.Open):
                    conn.data_received(pframe.marshal(commands.Channel.OpenOk(), number))
            seen = len(transport.out)

    return asyncio.get_running_loop().create_task(answer())


@pytest.mark.unit
async def test_channel_numbers_are_reused_and_bounded() -> None:
    from pamqp import commands
    from pamqp import frame as pframe

    conn, transport = WireConnection(heartbeat=0, call_timeout=10), _Transport()
    conn.connection_made(transport)
    transport.out.clear()
    conn.channel_max = 3
    answering = _answering(conn, transport)
    try:
        chans = [await conn.channel() for _ in range(3)]
        assert [c.number for c in chans] == [1, 2, 3]
        with pytest.raises(WireError, match="all 3 channels"):
            await conn.channel()
        closing = asyncio.ensure_future(chans[1].close())
        await asyncio.sleep(0)
        conn.data_received(pframe.marshal(commands.Channel.CloseOk(), 2))
        await closing
        assert (await conn.channel()).number == 2  # the one given back
    finally:
        answering.cancel()


@pytest.mark.unit
async def test_a_call_unanswered_in_time_abandons_its_channel_not_the_connection() -> None:
    """No answer within the call timeout: the channel is closed for its users
    and with the broker (its number kept until the CloseOk); while the broker
    blocks the connection, the call waits on instead."""
    from pamqp import commands
    from pamqp import frame as pframe

    conn, transport = WireConnection(heartbeat=0, call_timeout=0.05), _Transport()
    conn.connection_made(transport)
    answering = _answering(conn, transport)
    try:
        ch = await conn.channel()
        transport.out.clear()
        with pytest.raises(WireError, match="no answer to Declare"):
            await ch.declare_queue("q")
        assert ch.is_closed and not conn.is_closed
        closes = [pframe.unmarshal(d)[2] for d in transport.out[1:]]
        assert [type(m) for m in closes] == [commands.Channel.Close]
        assert ch.number in conn.channels  # until the broker's CloseOk
        conn.data_received(pframe.marshal(commands.Queue.DeclareOk("q", 0, 0), ch.number))  # late
        conn.data_received(pframe.marshal(commands.Channel.CloseOk(), ch.number))
        assert ch.number not in conn.channels

        blocked = await conn.channel()
        conn.blocked = "low on memory"
        declaring = asyncio.ensure_future(blocked.declare_queue("q"))
        await asyncio.sleep(0.3)  # six call timeouts
        assert not declaring.done()
        conn.data_received(pframe.marshal(commands.Queue.DeclareOk("q", 0, 0), blocked.number))
        assert await declaring == ("q", 0, 0)
        assert not blocked.is_closed
    finally:
        answering.cancel()
