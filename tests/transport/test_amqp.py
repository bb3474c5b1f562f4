"""RabbitMQ specifics of the ``amqp://`` transport: the declared topology, how
broker answers map to fleet errors, and what happens to channels, consumers
and inboxes when connections drop."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import ChannelPreconditionFailed
from structlog.testing import capture_logs

from fleet.contract import Priority
from fleet.errors import ConfigError, ModelNotFound, Overloaded, Unavailable
from fleet.transport import DEAD_LETTER, Transport, connect, queue_name
from fleet.transport._amqp_wire import Nacked, Returned
from fleet.transport.base import new_reply_address, wait_until
from tests.conftest import broker_url_for, missing
from tests.transport.conftest import WAIT, Deliveries, Frames

pytestmark = pytest.mark.rabbitmq

ONLINE, BATCH = Priority.ONLINE, Priority.BATCH
OpenAmqp = Callable[..., Awaitable[Transport]]


@pytest.fixture
def amqp_url() -> str:
    return broker_url_for("amqp")


@pytest.fixture
async def open_amqp(amqp_url: str) -> AsyncIterator[OpenAmqp]:
    opened: list[Transport] = []

    async def make(query: str = "", **options: object) -> Transport:
        options.setdefault("reconnect_interval", 0.2)
        url = amqp_url + (query.replace("?", "&", 1) if "?" in amqp_url else query)
        transport = connect(url, **options)
        await transport.connect()
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        await transport.close()


@asynccontextmanager
async def raw_channel(url: str) -> AsyncIterator[AbstractChannel]:
    """A channel of a connection of the test's own, beside the transport."""
    connection = await aio_pika.connect(url.split("?", 1)[0], timeout=5)
    async with connection:
        yield await connection.channel()


class Management:
    """Just enough of the RabbitMQ management HTTP API."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        default = f"http://{parts.hostname}:15672"
        self.base = dict(parse_qsl(parts.query)).get("management_url", default) + "/api"
        token = f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()
        self.headers = {"Authorization": "Basic " + base64.b64encode(token).decode()}

    async def request(self, method: str, path: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(headers=self.headers, timeout=timeout) as session,
            session.request(method, self.base + path) as resp,
        ):
            resp.raise_for_status()
            return await resp.json() if resp.content_type == "application/json" else None

    async def queue(self, name: str) -> dict[str, Any]:
        return dict(await self.request("GET", f"/queues/%2F/{quote(name, safe='')}"))

    async def close_connection(self, connection_name: str) -> None:
        """Have the broker close a connection (listed once its stats are in)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT
        while loop.time() < end:
            for conn in await self.request("GET", "/connections"):
                if conn.get("client_properties", {}).get("connection_name") == connection_name:
                    await self.request("DELETE", f"/connections/{quote(conn['name'], safe='')}")
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"no connection named {connection_name!r}")


@pytest.fixture
async def management(amqp_url: str) -> Management:
    api = Management(amqp_url)
    try:
        await api.request("GET", "/overview")
    except (aiohttp.ClientError, TimeoutError) as exc:
        missing(f"the RabbitMQ management API is not reachable: {exc!r}")
    return api


def expected_arguments(max_queue_length: int, delivery_limit: int) -> dict[str, Any]:
    # RabbitMQ counts both limits one past ours (see fleet.transport.amqp)
    return {
        "x-queue-type": "quorum",
        "x-max-length": max_queue_length - 1,
        "x-overflow": "reject-publish",
        "x-delivery-limit": delivery_limit - 1,
        "x-dead-letter-exchange": "fleet.dlx",
    }


async def dead_letter_headers(url: str, body: bytes) -> dict[str, Any]:
    """Take messages off the dead-letter queue until ``body``; its headers."""
    async with raw_channel(url) as channel:
        queue = await channel.declare_queue(DEAD_LETTER, passive=True)
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT
        while loop.time() < end:
            message = await queue.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.1)
            elif message.body == body:
                return dict(message.headers)
    raise AssertionError(f"{body!r} never reached {DEAD_LETTER}")


# ---------------------------------------------------------------------- topology
async def test_work_queues_are_quorum_with_exact_arguments(
    open_amqp: OpenAmqp, amqp_url: str, unique_model: str
) -> None:
    transport = await open_amqp(max_queue_length=3, delivery_limit=4)
    await transport.declare_model(unique_model)
    await transport.declare_model(unique_model)  # idempotent
    expected = expected_arguments(3, 4)
    for priority in Priority:
        name = queue_name(unique_model, priority)
        async with raw_channel(amqp_url) as channel:  # the same declaration passes
            await channel.declare_queue(name, durable=True, arguments=expected)
        with pytest.raises(ChannelPreconditionFailed):  # a classic queue does not
            async with raw_channel(amqp_url) as channel:
                await channel.declare_queue(name, durable=True)
        with pytest.raises(ChannelPreconditionFailed):  # nor another limit
            async with raw_channel(amqp_url) as channel:
                await channel.declare_queue(
                    name, durable=True, arguments={**expected, "x-max-length": 3}
                )


async def test_queue_details_in_management_api(
    open_amqp: OpenAmqp, management: Management, unique_model: str
) -> None:
    transport = await open_amqp(max_queue_length=50, delivery_limit=5)
    await transport.declare_model(unique_model)
    info = await management.queue(queue_name(unique_model, BATCH))
    assert (info["type"], info["durable"], info["exclusive"]) == ("quorum", True, False)
    assert info["arguments"] == expected_arguments(50, 5)
    dead = await management.queue(DEAD_LETTER)
    assert dead["durable"] is True


async def test_other_arguments_are_a_config_error(open_amqp: OpenAmqp, unique_model: str) -> None:
    first = await open_amqp(max_queue_length=10)
    await first.declare_model(unique_model)
    second = await open_amqp(max_queue_length=20)
    with pytest.raises(ConfigError, match="other arguments"):
        await second.declare_model(unique_model)
    assert second.connected  # only a throwaway channel was closed
    await second.publish_request(unique_model, ONLINE, b"still usable")


async def test_a_consumer_on_a_queue_with_other_arguments_is_a_config_error(
    open_amqp: OpenAmqp, unique_model: str
) -> None:
    """The same refusal where a consumer declares its queue (on the protocol
    connection): a ConfigError, not an outage to retry."""
    first = await open_amqp(max_queue_length=10)
    await first.declare_model(unique_model)
    second = await open_amqp(max_queue_length=20)
    with pytest.raises(ConfigError, match="other arguments"):
        await second.consume(unique_model, ONLINE, Deliveries(), prefetch=1)
    assert second.connected  # only that consumer's channel was closed
    await second.publish_request(unique_model, ONLINE, b"still usable")


async def test_a_consumer_cancelled_while_a_reconnection_restores_it(
    open_amqp: OpenAmqp, unique_model: str
) -> None:
    """A cancel that lands while a reconnection is starting the consumer again
    (its queue declared, its consume not yet sent): the reconnection still
    completes, and the cancelled consumer receives nothing."""
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    got = Deliveries()
    sub = await worker.consume(unique_model, ONLINE, got, prefetch=4)
    entered, gate = asyncio.Event(), asyncio.Event()
    declare = sub.declare  # type: ignore[attr-defined]

    async def held(channel: Any) -> str:
        name = str(await declare(channel))
        entered.set()
        await gate.wait()  # declared; the consume comes next
        return name

    sub.declare = held  # type: ignore[attr-defined]
    reconnected = asyncio.Event()
    worker.add_reconnect_listener(reconnected.set)
    worker._wire.abort()  # type: ignore[attr-defined]  # the data connection drops
    await asyncio.wait_for(entered.wait(), WAIT)
    await asyncio.wait_for(sub.cancel(), WAIT)
    gate.set()
    await asyncio.wait_for(reconnected.wait(), WAIT)
    assert worker.connected
    await worker.publish_request(unique_model, ONLINE, b"after")
    assert await got.none_within(1.0)


# ---------------------------------------------------------------------- errors
async def test_full_queue_is_overloaded_at_once(open_amqp: OpenAmqp, unique_model: str) -> None:
    transport = await open_amqp(max_queue_length=3, publish_timeout=60.0)
    await transport.declare_model(unique_model)
    for i in range(3):
        await transport.publish_request(unique_model, ONLINE, b"%d" % i)
    started = time.monotonic()
    with pytest.raises(Overloaded) as info:
        await transport.publish_request(unique_model, ONLINE, b"full")
    assert time.monotonic() - started < 30  # a nack, not a timeout
    assert isinstance(info.value.__cause__, Nacked)
    assert (await transport.depth(unique_model)).ready == 3


async def test_a_confirm_that_never_comes_fails_the_publish_at_publish_timeout(
    open_amqp: OpenAmqp, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = await open_amqp()  # the default publish_timeout: real confirms have room
    await transport.declare_model(unique_model)
    await transport.publish_request(unique_model, ONLINE, b"confirmed")
    channel = await transport._publish_wire()
    monkeypatch.setattr(channel, "_confirmed", lambda *args: None)  # acks go unheard
    short = dataclasses.replace(transport.options, publish_timeout=0.5)
    monkeypatch.setattr(transport, "options", short)  # only the unheard one waits 0.5 s
    with pytest.raises(Unavailable) as info:
        await asyncio.wait_for(transport.publish_request(unique_model, ONLINE, b"unheard"), 10)
    assert isinstance(info.value.__cause__, TimeoutError)
    monkeypatch.undo()
    await transport.publish_request(unique_model, ONLINE, b"heard again")


async def test_nack_with_room_is_unavailable_not_overloaded(
    open_amqp: OpenAmqp, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quorum queue also nacks a publish it cannot commit (its leader is
    changing): with room in the queue that is a retriable outage, not a full
    queue, so the client tries again instead of failing the request."""
    transport = await open_amqp(max_queue_length=3)
    await transport.declare_model(unique_model)
    await transport.publish_request(unique_model, ONLINE, b"1")

    async def nacked(*_: object, **__: object) -> None:
        raise Nacked("the broker nacked publish 1")

    monkeypatch.setattr(transport, "_publish", nacked)
    with pytest.raises(Unavailable, match="room") as info:
        await transport.publish_request(unique_model, ONLINE, b"2")
    assert info.value.retriable
    assert isinstance(info.value.__cause__, Nacked)
    monkeypatch.undo()
    await transport.publish_request(unique_model, ONLINE, b"2")
    await transport.publish_request(unique_model, ONLINE, b"3")
    with pytest.raises(Overloaded):  # a real full queue stays Overloaded
        await transport.publish_request(unique_model, ONLINE, b"4")


@pytest.mark.parametrize("nodes", [1, 2])
async def test_lasting_nacks_with_room_move_a_cluster_transport_to_the_next_node(
    amqp_url: str, unique_model: str, monkeypatch: pytest.MonkeyPatch, nodes: int
) -> None:
    """A node whose copy of a quorum queue never learns the new leader nacks
    every publish to it: past ``nack_failover`` seconds of that, a transport
    given several nodes (here the same node twice) reconnects to the next one;
    one given a single node stays where it is."""
    parts = urlsplit(amqp_url)
    login, _, host = parts.netloc.rpartition("@")
    url = urlunsplit(parts._replace(netloc=f"{login}@{','.join([host] * nodes)}"))
    transport = connect(url, nack_failover=0.3, reconnect_interval=0.1)
    await transport.connect()
    try:
        await transport.declare_model(unique_model)
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        transport.add_reconnect_listener(on_reconnect)

        async def nacked(*_: object, **__: object) -> None:
            raise Nacked("the broker nacked publish 1")

        monkeypatch.setattr(transport, "_publish", nacked)
        with capture_logs() as logs:
            with pytest.raises(Unavailable, match="room"):
                await transport.publish_request(unique_model, ONLINE, b"1")
            await asyncio.sleep(0.35)
            with pytest.raises(Unavailable, match="room"):
                await transport.publish_request(unique_model, ONLINE, b"2")
            monkeypatch.undo()
            if nodes == 1:
                assert transport.connected and not reconnected.is_set()
            else:
                await asyncio.wait_for(reconnected.wait(), WAIT)
                assert transport._node == 1  # type: ignore[attr-defined]
        # the failover says why it moves, and reports no lost connection
        warnings = [e["event"] for e in logs if e["log_level"] in ("warning", "error")]
        moving = "keeps nacking publishes to queues with room; moving to the next node"
        assert [moving in w for w in warnings] == ([] if nodes == 1 else [True])
        await transport.publish_request(unique_model, ONLINE, b"3")
    finally:
        await transport.close()


async def test_unknown_model_is_not_found(open_amqp: OpenAmqp, unique_model: str) -> None:
    transport = await open_amqp()
    with pytest.raises(ModelNotFound) as info:
        await transport.publish_request(unique_model, BATCH, b"x")
    assert isinstance(info.value.__cause__, Returned)
    with pytest.raises(ModelNotFound):
        await transport.depth(unique_model)
    await transport.declare_model(unique_model)  # the transport is still usable
    await transport.publish_request(unique_model, BATCH, b"x")


async def test_unreachable_broker_is_unavailable() -> None:
    nowhere = connect("amqp://guest:guest@127.0.0.1:1/", publish_timeout=0.5)
    with pytest.raises(Unavailable):
        await nowhere.connect()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await nowhere.publish_request("m", ONLINE, b"x")
    assert time.monotonic() - started < 10  # bounded by the 0.5 s publish timeout
    assert not nowhere.connected
    await nowhere.close()
    await nowhere.close()


async def test_url_query_options(open_amqp: OpenAmqp, unique_model: str) -> None:
    transport = await open_amqp("?max_queue_length=2&heartbeat=7&name=fleet-test")
    assert transport.options.max_queue_length == 2
    await transport.declare_model(unique_model)
    await transport.publish_request(unique_model, ONLINE, b"1")
    await transport.publish_request(unique_model, ONLINE, b"2")
    with pytest.raises(Overloaded):
        await transport.publish_request(unique_model, ONLINE, b"3")


# ---------------------------------------------------------------------- dead letters
@pytest.mark.shares("dead-letters")
async def test_reject_goes_to_dead_letter_queue(
    open_amqp: OpenAmqp, amqp_url: str, unique_model: str
) -> None:
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    body = f"reject-{uuid.uuid4().hex}".encode()
    await worker.publish_request(unique_model, ONLINE, body)
    (delivery,) = await got.wait(1)
    await delivery.reject()
    headers = await dead_letter_headers(amqp_url, body)
    (death,) = headers["x-death"]
    assert death["queue"] == queue_name(unique_model, ONLINE)
    assert death["reason"] == "rejected"


@pytest.mark.shares("dead-letters")
async def test_delivery_limit_sends_to_dead_letter_queue(
    open_amqp: OpenAmqp, amqp_url: str, unique_model: str
) -> None:
    client = await open_amqp(delivery_limit=2)
    await client.declare_model(unique_model)
    body = f"limit-{uuid.uuid4().hex}".encode()
    await client.publish_request(unique_model, BATCH, body)
    for attempt in (1, 2):
        worker = await open_amqp(delivery_limit=2)
        got = Deliveries()
        await worker.consume(unique_model, BATCH, got, prefetch=1)
        (delivery,) = await got.wait(1)
        assert delivery.attempt == attempt
        await worker.close()
    headers = await dead_letter_headers(amqp_url, body)
    assert headers["x-death"][0]["reason"] == "delivery_limit"
    assert (await client.depth(unique_model)).ready == 0


async def test_unacked_is_redelivered_with_attempt_2(
    open_amqp: OpenAmqp, unique_model: str
) -> None:
    first = await open_amqp()
    await first.declare_model(unique_model)
    got = Deliveries()
    await first.consume(unique_model, ONLINE, got, prefetch=1)
    await first.publish_request(unique_model, ONLINE, b"job")
    await got.wait(1)
    await first.close()
    second = await open_amqp()
    again = Deliveries()
    await second.consume(unique_model, ONLINE, again, prefetch=1)
    (delivery,) = await again.wait(1)
    assert (delivery.body, delivery.attempt) == (b"job", 2)
    await delivery.ack()


async def test_acks_made_just_before_a_close_reach_the_broker(
    open_amqp: OpenAmqp, unique_model: str
) -> None:
    """A worker acks what it answered, then closes at once (the end of a
    drain): every ack is taken by the queue before the channel goes. A quorum
    queue's channel holds back settlements past a few dozen in flight and
    drops what it holds when it closes, so many acks sent one by one just
    before a close came back as deliveries, in some rounds and not others:
    several rounds, each on a queue of its own, make that show."""
    rounds, total = 8, 200
    models = [f"{unique_model}-{n}" for n in range(rounds)]
    for model in models:
        worker = await open_amqp()
        await worker.declare_model(model)
        for i in range(total):
            await worker.publish_request(model, ONLINE, b"%d" % i)
        got = Deliveries()
        await worker.consume(model, ONLINE, got, prefetch=total)
        held = await got.wait(total)
        await asyncio.gather(*(d.ack() for d in held))
        await worker.close()

    other = await open_amqp()
    again = {model: Deliveries() for model in models}
    for model in models:
        await other.consume(model, ONLINE, again[model], prefetch=total)
    await asyncio.sleep(1.0)
    came = {model: len(d.items) for model, d in again.items() if d.items}
    assert not came, f"acked deliveries came again: {came}"


async def test_acks_requeues_and_rejects_made_together_each_reach_their_message(
    open_amqp: OpenAmqp, unique_model: str
) -> None:
    """Settlements made together leave in shared frames: each message still
    gets its own fate (the rejected one is not delivered again), and one left
    open is not settled with its neighbours."""
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    bodies = [f"{unique_model}-{i}".encode() for i in range(7)]
    for body in bodies:
        await worker.publish_request(unique_model, ONLINE, body)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=len(bodies))
    held = {d.body: d for d in await got.wait(len(bodies))}
    fates = [
        held[bodies[0]].ack(),
        held[bodies[1]].ack(),
        held[bodies[2]].requeue(),
        held[bodies[3]].ack(),
        held[bodies[4]].reject(),
        held[bodies[6]].ack(),  # past bodies[5], left open
    ]
    await asyncio.gather(*fates)
    back = (await got.wait(len(bodies) + 1))[-1]  # the requeued one, at once
    assert (back.body, back.attempt) == (bodies[2], 2)
    await back.ack()
    await worker.close()

    other = await open_amqp()
    again = Deliveries()
    await other.consume(unique_model, ONLINE, again, prefetch=len(bodies))
    (left,) = await again.wait(1)
    assert left.body == bodies[5]
    await left.ack()
    assert await again.none_within(0.5), [d.body for d in again.items]


async def test_what_comes_while_a_cancel_is_on_its_way_can_still_be_acked(
    open_amqp: OpenAmqp, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker may deliver until it answers a cancel. Settling everything
    received before that answer must not close the channel: a delivery still
    on its way would be answered and then, its ack lost, delivered again."""
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    for body in (b"first", b"second"):
        await worker.publish_request(unique_model, ONLINE, body)
    got = Deliveries()
    consumer = await worker.consume(unique_model, ONLINE, got, prefetch=1)
    (first,) = await got.wait(1)

    real_cancel = consumer._cancel_consumer  # type: ignore[attr-defined]
    acked = asyncio.Event()

    async def slow_cancel(tag: str) -> None:  # this cancel takes a while to reach the broker
        await acked.wait()
        await asyncio.sleep(0.5)
        await real_cancel(tag)

    monkeypatch.setattr(consumer, "_cancel_consumer", slow_cancel)
    cancelling = asyncio.create_task(consumer.cancel())
    await asyncio.sleep(0.1)
    await first.ack()  # all received is settled, with the cancel not yet answered
    acked.set()
    (_, second) = await got.wait(2, timeout=5)  # its slot freed, the broker sends the next
    await second.ack()
    await cancelling
    await worker.close()

    other = await open_amqp()
    again = Deliveries()
    await other.consume(unique_model, ONLINE, again, prefetch=2)
    assert await again.none_within(1.0), [(d.body, d.attempt) for d in again.items]


# ---------------------------------------------------------------------- connections
async def test_ack_on_a_dead_channel_after_reconnect_is_a_no_op(
    open_amqp: OpenAmqp, management: Management, unique_model: str
) -> None:
    name = f"fleet-test-{uuid.uuid4().hex[:8]}"
    worker = await open_amqp(f"?name={name}")
    reconnects: list[float] = []
    worker.add_reconnect_listener(lambda: reconnects.append(time.monotonic()))
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=2)
    await worker.publish_request(unique_model, ONLINE, b"held")
    (held,) = await got.wait(1)

    await management.close_connection(name)  # the broker drops it
    assert await wait_until(lambda: len(reconnects) == 1, WAIT)
    await held.ack()  # no exception, and the channel it came on is gone
    await held.reject()
    (_, again) = await got.wait(2)  # the restored consumer gets it again
    assert (again.body, again.attempt) == (b"held", 2)
    await again.ack()
    assert await got.none_within(0.5)
    assert len(reconnects) == 1


async def test_broker_cancel_restarts_the_consumer(
    open_amqp: OpenAmqp, amqp_url: str, unique_model: str
) -> None:
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=2)
    async with raw_channel(amqp_url) as channel:  # the queue vanishes under it
        await channel.queue_delete(queue_name(unique_model, ONLINE))

    async def delivered_again() -> bool:
        try:
            await worker.publish_request(unique_model, ONLINE, b"after cancel")
        except ModelNotFound:
            return False
        return True

    assert await _poll(delivered_again)
    (delivery,) = await got.wait(1)
    assert delivery.body == b"after cancel"
    await delivery.ack()


@pytest.mark.exclusive
async def test_broker_restart(
    open_amqp: OpenAmqp,
    amqp_url: str,
    unique_model: str,
) -> None:
    """The inbox comes back under its address, consumers are restored,
    ``connected`` follows the connection, a publish waits for it, a request
    waiting in its queue is still there, and each reconnect listener is
    called once."""
    command = os.environ.get("FLEET_TEST_AMQP_RESTART")
    if not command:
        missing("FLEET_TEST_AMQP_RESTART is not set: cannot restart the broker")
    client = await open_amqp(publish_timeout=60.0)
    worker = await open_amqp()
    calls: list[str] = []
    client.add_reconnect_listener(lambda: calls.append("client"))
    worker.add_reconnect_listener(lambda: calls.append("worker"))
    replies = Frames()
    address = await client.open_inbox(replies)
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=4)
    waiting = f"{unique_model}-waiting"  # a model nobody consumes yet
    await worker.declare_model(waiting)
    await client.publish_request(waiting, ONLINE, b"queued before")

    restart = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.DEVNULL)
    assert await wait_until(lambda: not client.connected, 60)
    # published while the broker is down: waits for the reconnection
    pending = asyncio.create_task(client.publish_request(unique_model, ONLINE, b"while down"))
    assert await asyncio.wait_for(restart.wait(), 120) == 0
    assert await wait_until(lambda: sorted(calls) == ["client", "worker"], 60)
    assert client.connected and worker.connected
    await asyncio.wait_for(pending, 60)

    (delivery,) = await got.wait(1)
    assert delivery.body == b"while down"
    await delivery.ack()
    await worker.publish_reply(address, b"reply after restart")
    await replies.wait_for(b"reply after restart")
    async with raw_channel(amqp_url) as channel:  # replies to it are routed
        await channel.default_exchange.publish(aio_pika.Message(b"raw"), address, mandatory=True)
    await replies.wait_for(b"raw")
    kept = Deliveries()
    await worker.consume(waiting, ONLINE, kept, prefetch=1)
    (queued,) = await kept.wait(1)
    assert queued.body == b"queued before"
    await queued.ack()
    await asyncio.sleep(0.5)
    assert sorted(calls) == ["client", "worker"]


async def test_requests_are_published_persistent_and_replies_transient(
    open_amqp: OpenAmqp, amqp_url: str, unique_model: str
) -> None:
    """A request must outlive a broker restart; a reply goes to an exclusive
    queue that does not, and is not written to disk for nothing."""
    t = await open_amqp()
    await t.declare_model(unique_model)
    await t.publish_request(unique_model, ONLINE, b"request")
    inbox = new_reply_address()
    async with raw_channel(amqp_url) as channel:
        await channel.declare_queue(inbox, exclusive=True)
        await t.publish_reply(inbox, b"reply")
        request = await _get(channel, queue_name(unique_model, ONLINE))
        reply = await _get(channel, inbox)
    assert (request.body, request.delivery_mode) == (b"request", aio_pika.DeliveryMode.PERSISTENT)
    assert (reply.body, reply.delivery_mode) == (b"reply", aio_pika.DeliveryMode.NOT_PERSISTENT)


async def _get(channel: AbstractChannel, name: str) -> Any:
    """The first message in queue ``name``, waiting for one up to ``WAIT`` seconds."""
    queue = await channel.declare_queue(name, passive=True)
    got: list[Any] = []

    async def one() -> bool:
        message = await queue.get(fail=False, no_ack=True)
        got.extend([message] if message is not None else [])
        return bool(got)

    deadline = time.monotonic() + WAIT
    while not await one():
        assert time.monotonic() < deadline, f"nothing in {name!r}"
        await asyncio.sleep(0.05)
    return got[0]


async def test_a_pause_while_a_resume_is_consuming_leaves_no_consumer(
    open_amqp: OpenAmqp, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume awaits the broker's ConsumeOk; a pause that comes meanwhile
    must cancel the consumer that answer starts, or the paused consumer keeps
    receiving and nothing can cancel it."""
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    got = Deliveries()
    sub = await worker.consume(unique_model, ONLINE, got, prefetch=4)
    await sub.pause()
    channel = sub.channel  # type: ignore[attr-defined]
    real_consume = channel.consume
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_consume(*args: Any, **kwargs: Any) -> Any:
        asked.set()
        await answer.wait()  # the ConsumeOk is on its way
        return await real_consume(*args, **kwargs)

    monkeypatch.setattr(channel, "consume", slow_consume)
    resuming = asyncio.create_task(sub.resume())
    await asyncio.wait_for(asked.wait(), WAIT)
    pausing = asyncio.create_task(sub.pause())
    await asyncio.sleep(0)
    answer.set()
    await asyncio.wait_for(asyncio.gather(resuming, pausing), WAIT)
    await worker.publish_request(unique_model, ONLINE, b"while paused")
    assert await got.none_within(1.0), [d.body for d in got.items]
    monkeypatch.setattr(channel, "consume", real_consume)
    await sub.resume()
    (delivery,) = await got.wait(1)
    assert delivery.body == b"while paused"
    await delivery.ack()


# ---------------------------------------------------------------------- operators
async def test_depth_counts_ready_and_in_flight(
    open_amqp: OpenAmqp, management: Management, unique_model: str
) -> None:
    worker = await open_amqp()
    await worker.declare_model(unique_model)
    for i in range(5):
        await worker.publish_request(unique_model, BATCH if i % 2 else ONLINE, b"%d" % i)
    depth = await worker.depth(unique_model)
    assert (depth.ready, depth.consumers) == (5, 0)

    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=2)
    await got.wait(2)

    async def counted() -> bool:
        d = await worker.depth(unique_model)
        return (d.ready, d.in_flight, d.consumers) == (3, 2, 1)

    assert await _poll(counted), await worker.depth(unique_model)
    assert (await worker.depth(unique_model)).backlog == 5


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await check():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.2)
    return True


@pytest.mark.shares("dead-letters")
async def test_take_dead_letters_respects_the_limit(open_amqp: OpenAmqp, unique_model: str) -> None:
    worker = await open_amqp()
    await worker.take_dead_letters(10_000)  # start from an empty queue
    await worker.declare_model(unique_model)
    got = Deliveries()
    await worker.consume(unique_model, ONLINE, got, prefetch=5)
    for i in range(3):
        await worker.publish_request(unique_model, ONLINE, b"dead-%d" % i)
    for delivery in await got.wait(3):
        await delivery.reject()

    async def three_dead() -> bool:
        return (await _dead_letter_count()) >= 3

    assert await _poll(three_dead)
    assert len(await worker.take_dead_letters(2)) == 2
    assert len(await worker.take_dead_letters(10)) == 1
    assert await worker.take_dead_letters(10) == []


async def _dead_letter_count() -> int:
    url = broker_url_for("amqp")
    async with raw_channel(url) as channel:
        queue = await channel.declare_queue(DEAD_LETTER, passive=True)
        return int(queue.declaration_result.message_count or 0)
