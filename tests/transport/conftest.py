"""Fixtures and helpers of the transport tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from fleet.contract import Priority
from fleet.transport import Delivery, Transport, connect, queue_name
from fleet.transport.base import wait_until
from fleet.transport.kafka import KafkaTransport
from tests.conftest import broker_url_for
from tests.transport.kafka_support import Connect

WAIT = 15.0  # seconds: the bound on every wait for something the broker does

OpenTransport = Callable[..., Awaitable[Transport]]


class Deliveries:
    """An ``on_delivery`` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)

    async def wait(self, n: int, timeout: float = WAIT) -> list[Delivery]:
        ok = await wait_until(lambda: len(self.items) >= n, timeout)
        assert ok, f"expected {n} deliveries within {timeout}s, got {len(self.items)}"
        return self.items[:n]

    async def none_within(self, seconds: float) -> bool:
        before = len(self.items)
        await asyncio.sleep(seconds)
        return len(self.items) == before


class Frames:
    """An ``OnBytes`` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def __call__(self, body: bytes) -> None:
        self.items.append(body)

    async def wait_for(self, body: bytes, timeout: float = WAIT) -> None:
        ok = await wait_until(lambda: body in self.items, timeout)
        assert ok, f"{body!r} did not arrive within {timeout}s (got {self.items!r})"


async def wait_dead_letter(transport: Transport, body: bytes, timeout: float = WAIT) -> bool:
    """Take dead letters until ``body`` is among them (others are dropped: the
    dead-letter queue is shared by every test on a real broker)."""
    seen: list[bytes] = []

    async def poll() -> bool:
        seen.extend(await transport.take_dead_letters(1000))
        return body in seen

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await poll():
        if loop.time() >= end:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.fixture
async def open_transport(broker_url: str) -> AsyncIterator[OpenTransport]:
    """Connect transports to the broker under test; all are closed afterwards."""
    opened: list[Transport] = []

    async def make(**options: object) -> Transport:
        options.setdefault("reconnect_interval", 0.2)
        transport = connect(broker_url, **options)
        await transport.connect()
        opened.append(transport)
        return transport

    yield make
    for transport in opened:
        await transport.close()


@pytest.fixture(autouse=True)
async def _drop_amqp_queues(
    request: pytest.FixtureRequest, unique_model: str
) -> AsyncIterator[None]:
    """Delete the test model's RabbitMQ queues afterwards, so that test runs do
    not pile up durable queues on a shared broker."""
    yield
    url = os.environ.get("FLEET_TEST_AMQP_URL")
    if not url or request.node.get_closest_marker("rabbitmq") is None:
        return
    import aio_pika

    connection = await aio_pika.connect(url.split("?", 1)[0], timeout=5)
    async with connection:
        channel = await connection.channel()
        for priority in Priority:
            await channel.queue_delete(queue_name(unique_model, priority))


# --------------------------------------------------------------------------- Kafka


@pytest.fixture
def kafka_url() -> str:
    return broker_url_for("kafka")


@pytest.fixture
async def kafka(kafka_url: str) -> AsyncIterator[Connect]:
    """Connect transports (options as keywords); all are closed afterwards."""
    made: list[KafkaTransport] = []

    async def make(**options: Any) -> KafkaTransport:
        options.setdefault("reconnect_interval", 0.2)
        t = connect(kafka_url, **options)
        assert isinstance(t, KafkaTransport)
        await t.connect()
        made.append(t)
        return t

    yield make
    for t in made:
        await t.close()


@pytest.fixture
async def admin(kafka_url: str) -> AsyncIterator[Any]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await client.start()
    yield client
    await client.close()
