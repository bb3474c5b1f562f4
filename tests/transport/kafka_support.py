"""Helpers of the Kafka transport tests (``test_kafka*.py``); their fixtures
(``kafka_url``, ``kafka``, ``admin``) are in this directory's conftest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fleet.contract import Priority
from fleet.transport import Delivery
from fleet.transport.base import wait_until
from fleet.transport.kafka import KafkaTransport

Connect = Callable[..., Awaitable[KafkaTransport]]


def collector(sink: list[Delivery], *, ack: bool = True) -> Callable[[Delivery], Awaitable[None]]:
    async def on_delivery(d: Delivery) -> None:
        sink.append(d)
        if ack:
            await d.ack()

    return on_delivery


async def eventually(
    predicate: Callable[[], bool], timeout: float = 20.0, what: object = ""
) -> None:
    assert await wait_until(predicate, timeout, interval=0.05), f"condition not met in time {what}"


async def lag_becomes(t: KafkaTransport, model: str, value: int, timeout: float = 20.0) -> None:
    """Wait until the model's lag (``depth().backlog``: waiting + handed out
    and not committed) is ``value``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        lag = (await t.depth(model)).backlog
        if lag == value:
            return
        assert loop.time() < end, f"lag stayed {lag}, expected {value}"
        await asyncio.sleep(0.1)


async def joining_and_leaving_loses_nothing(
    first: KafkaTransport, second: KafkaTransport, client: KafkaTransport, model: str
) -> None:
    """``first`` consumes ``model``, ``second`` joins and leaves while
    ``client`` publishes: every request is delivered, and the lag ends at 0."""
    await client.declare_model(model)
    got: list[Delivery] = []
    await first.consume(model, Priority.ONLINE, collector(got), prefetch=4)
    sent: set[bytes] = set()

    async def publish(n: int) -> None:
        for _ in range(n):
            body = f"r{len(sent)}".encode()
            await client.publish_request(model, Priority.ONLINE, body)
            sent.add(body)
            await asyncio.sleep(0.01)

    await publish(20)
    joined = await second.consume(model, Priority.ONLINE, collector(got), prefetch=4)
    await publish(20)
    await joined.cancel()
    await publish(20)
    await eventually(lambda: {d.body for d in got} >= sent, timeout=40)
    await lag_becomes(client, model, 0)
