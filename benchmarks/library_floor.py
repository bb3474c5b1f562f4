"""The broker client libraries' own floor: request/reply with nothing else.

    .venv/bin/python benchmarks/library_floor.py serve amqp|amqp-wire|kafka|kafka-wire URL SECONDS
    .venv/bin/python benchmarks/library_floor.py call amqp|amqp-wire|kafka|kafka-wire URL '{..}'

The least any request/reply service on aio-pika or aiokafka does for the
delivery guarantees the fleet gives, with no model, no batching, no codec and
no bookkeeping: an echo.

- RabbitMQ: the request is published persistent and mandatory, with a
  publisher confirm, to a quorum queue; the server consumes it with a
  prefetch and manual acks, publishes the reply (mandatory, confirmed) to the
  caller's exclusive queue and acks the request once the reply is confirmed.
- Kafka: the request is sent by an idempotent producer with ``acks=all``;
  the server reads it in a consumer group with manual commits, sends the
  reply (``acks=all``) to the reply topic keyed by the caller, and commits
  once the replies are acknowledged; the caller tails the reply topic.
- ``amqp-wire``: the RabbitMQ echo with the same guarantees, its frames sent
  and read by :mod:`fleet.transport._amqp_wire` (the protocol over an asyncio
  ``Protocol``, nothing per frame but its parsing) instead of aio-pika: what
  the protocol itself costs in Python, near the floor of any client of it.
- ``kafka-wire``: the Kafka echo on :mod:`fleet.transport._kafka_wire` (the
  fleet's own produce and fetch): the idempotent producer with ``acks=all``
  both ways; the server tails the request partition without a group and
  commits nothing, so it is a little under what the fleet's guarantees cost.

The server puts two stamps ahead of each echo: when it received the request
and when it began the reply's send, on the monotonic clock that every process
of one host shares. The caller splits each round trip into its two broker
legs with them: from the request's send to the server's receipt, and from the
reply's send to the caller's receipt (the fleet's ``request_broker`` and
``reply_broker`` stages).

``benchmarks/latency.py`` runs it at the same rates, with the same arrivals
(seeded Poisson), payload size and machine as the fleet, in the same run:
the fleet's latency, broker legs and CPU per request are printed as ratios to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.arrivals import poisson  # noqa: E402
from fleet.transport import connect  # noqa: E402

REQUESTS = "floor.requests"
REPLIES = "floor.replies"

CALL_TIMEOUT = 30.0  # seconds a call waits for its echo before it counts as failed
STAMPS = struct.Struct("<dd")  # the server's receipt and reply send, time.monotonic()
Send = Callable[[str, bytes], Awaitable[None]]
Answer = tuple[float, bytes]  # when the echo arrived (time.monotonic()), and its body


def stamped(received: float, body: bytes) -> bytes:
    """An echo of ``body``: the server's receipt and now ahead of it."""
    return STAMPS.pack(received, time.monotonic()) + body


async def open_loop(
    send: Send, futures: dict[str, asyncio.Future[Answer]], args: dict[str, Any]
) -> dict[str, Any]:
    """Seeded Poisson arrivals at ``args["rate"]`` for ``args["duration"]``
    seconds; each call sends a body of ``args["bytes"]`` and awaits its echo.
    Returns each answered call's round trip (``lat``) and its two broker legs
    (``request_leg``, ``reply_leg``), in seconds."""
    rng = np.random.default_rng(args["seed"])
    body = bytes(args["bytes"])
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    legs: tuple[list[float], list[float]] = ([], [])
    failed: list[int] = []

    async def one(i: int) -> None:
        t0 = time.monotonic()
        key = str(i)
        futures[key] = answer = loop.create_future()  # the echo may beat the confirm
        try:
            await send(key, body)
            async with asyncio.timeout(CALL_TIMEOUT):  # no task per call, unlike wait_for
                arrived, echo = await answer
        except Exception:  # a call that failed or went unanswered is counted, not timed
            futures.pop(key, None)
            failed.append(i)
            return
        lat.append(time.monotonic() - t0)
        received, replied = STAMPS.unpack_from(echo)
        legs[0].append(received - t0)
        legs[1].append(arrived - replied)

    cpu, t_start = time.process_time(), time.monotonic()
    await poisson(one, rng, args["rate"], args["duration"])
    return {
        "lat": lat,
        "request_leg": legs[0],
        "reply_leg": legs[1],
        "failed": len(failed),
        "cpu_s": time.process_time() - cpu,
        "seconds": time.monotonic() - t_start,
    }


# ---------------------------------------------------------------- RabbitMQ
async def amqp_serve(url: str, seconds: float) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    consume = await conn.channel(publisher_confirms=False)
    await consume.set_qos(prefetch_count=256)
    publish = await conn.channel(publisher_confirms=True)
    queue = await consume.declare_queue(
        REQUESTS, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.purge()

    async def on(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        received = time.monotonic()
        reply = aio_pika.Message(
            stamped(received, message.body), correlation_id=message.correlation_id
        )
        await publish.default_exchange.publish(reply, str(message.reply_to), mandatory=True)
        await message.ack()

    await queue.consume(on)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await conn.close()


async def amqp_call(url: str, args: dict[str, Any]) -> dict[str, Any]:
    import aio_pika

    conn = await aio_pika.connect(url)
    channel = await conn.channel(publisher_confirms=True)
    inbox = await channel.declare_queue(exclusive=True, auto_delete=True)
    futures: dict[str, asyncio.Future[Answer]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrived = time.monotonic()
        futures.pop(str(message.correlation_id)).set_result((arrived, message.body))

    await inbox.consume(on_reply, no_ack=True)

    async def send(key: str, body: bytes) -> None:
        message = aio_pika.Message(
            body,
            correlation_id=key,
            reply_to=inbox.name,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await channel.default_exchange.publish(message, REQUESTS, mandatory=True)

    try:
        return await open_loop(send, futures, args)
    finally:
        await conn.close()


# ---------------------------------------------------------------- RabbitMQ, frames by hand
async def _request_queue(url: str) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel()
        queue = await channel.declare_queue(
            REQUESTS, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.purge()


_KEY = struct.Struct("<IB")  # the call's number, the length of the caller's queue name


async def _wire(url: str) -> Any:
    from urllib.parse import unquote, urlsplit

    from fleet.transport._amqp_wire import WireConnection

    parts = urlsplit(url)
    return await WireConnection.open(
        parts.hostname or "127.0.0.1",
        parts.port or 5672,
        login=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        vhost=unquote(parts.path[1:]) or "/",
    )


async def wire_serve(url: str, seconds: float) -> None:
    """The echo's server on :mod:`fleet.transport._amqp_wire`. The request's
    body starts with the call's number and the caller's queue (the client
    reads no properties but the headers and message id)."""
    from fleet.transport._amqp_wire import Delivered

    await _request_queue(url)
    conn = await _wire(url)
    replies = await conn.channel(confirms=True)
    requests = await conn.channel(prefetch=256)

    def on(d: Delivered) -> None:
        received = time.monotonic()
        _, n = _KEY.unpack_from(d.body)
        inbox = d.body[_KEY.size : _KEY.size + n].decode()
        echo = stamped(received, d.body[:4] + d.body[_KEY.size + n :])
        confirm = replies.publish(inbox, echo, persistent=False)
        # the request is acked once its reply is confirmed
        confirm.add_done_callback(lambda f: f.exception() is None and requests.ack(d.delivery_tag))

    await requests.consume(REQUESTS, on, no_ack=False)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await conn.close()


async def wire_call(url: str, args: dict[str, Any]) -> dict[str, Any]:
    from fleet.transport._amqp_wire import Delivered

    conn = await _wire(url)
    ch = await conn.channel(confirms=True)
    inbox, _, _ = await ch.declare_queue("", exclusive=True, auto_delete=True)
    head = inbox.encode()
    futures: dict[str, asyncio.Future[Answer]] = {}

    def on_reply(d: Delivered) -> None:
        arrived = time.monotonic()
        (number,) = struct.unpack_from("<I", d.body, STAMPS.size)
        futures.pop(str(number)).set_result((arrived, d.body))

    await ch.consume(inbox, on_reply, no_ack=True)

    async def send(key: str, body: bytes) -> None:
        prefix = _KEY.pack(int(key), len(head)) + head
        await ch.publish(REQUESTS, prefix + body, persistent=True)

    try:
        return await open_loop(send, futures, args)
    finally:
        await conn.close()


# ---------------------------------------------------------------- Kafka
def _kafka_options(url: str) -> dict[str, Any]:
    """The servers and security settings the fleet's own clients use for ``url``."""
    return dict(connect(url).client_options)  # type: ignore[attr-defined]


async def kafka_topics(url: str, names: Sequence[str] = (REQUESTS, REPLIES)) -> None:
    """Topics ``names`` of one partition, where they do not exist yet."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**_kafka_options(url))
    await admin.start()
    try:
        for name in names:
            try:
                await admin.create_topics([NewTopic(name, 1, 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def kafka_serve(url: str, seconds: float) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    await kafka_topics(url)
    options = _kafka_options(url)
    producer = AIOKafkaProducer(**options, enable_idempotence=True, acks="all")
    consumer = AIOKafkaConsumer(
        REQUESTS,
        **options,
        group_id=f"floor-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await producer.start()
    await consumer.start()
    while not consumer.assignment():  # joined the group
        await consumer.getmany(timeout_ms=200)
    for tp in consumer.assignment():  # and at the end of the topic before any call
        await consumer.position(tp)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            batches = await consumer.getmany(timeout_ms=200)
            received = time.monotonic()
            sent = [
                await producer.send(REPLIES, stamped(received, r.value or b""), key=r.key)
                for records in batches.values()
                for r in records
            ]
            await asyncio.gather(*sent)
            if sent:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


async def kafka_call(url: str, args: dict[str, Any]) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    options = _kafka_options(url)
    producer = AIOKafkaProducer(**options, enable_idempotence=True, acks="all")
    tail = AIOKafkaConsumer(**options, auto_offset_reset="latest")
    await producer.start()
    await tail.start()
    tail.assign([TopicPartition(REPLIES, 0)])
    await tail.seek_to_end()
    await tail.position(TopicPartition(REPLIES, 0))  # at the end before the first call
    futures: dict[str, asyncio.Future[Answer]] = {}

    async def read() -> None:
        while True:
            batches = await tail.getmany(timeout_ms=1000)
            arrived = time.monotonic()
            for records in batches.values():
                for r in records:
                    future = futures.pop((r.key or b"").decode(), None)
                    if future is not None:
                        future.set_result((arrived, r.value or b""))

    reader = asyncio.ensure_future(read())

    async def send(key: str, body: bytes) -> None:
        await (await producer.send(REQUESTS, body, key=key.encode()))

    try:
        return await open_loop(send, futures, args)
    finally:
        reader.cancel()
        await tail.stop()
        await producer.stop()


def _kafka_wire(url: str, name: str) -> Any:
    from fleet.transport._kafka_wire import Cluster

    options = _kafka_options(url)
    return Cluster(
        options["bootstrap_servers"],
        client_id=name,
        ssl_context=options.get("ssl_context"),
        timeout=10.0,
    )


async def kafka_wire_serve(url: str, seconds: float) -> None:
    """The Kafka echo's server on :mod:`fleet.transport._kafka_wire`: the
    request partition tailed from its end (no group, no commits), each reply
    sent by the idempotent producer with ``acks=all`` as it is read."""
    from fleet.transport._kafka_wire import Producer, Tail

    await kafka_topics(url)
    cluster = _kafka_wire(url, "floor-serve")
    producer = Producer(cluster, timeout_ms=10_000)
    await producer.start()
    sending: set[asyncio.Future[Any]] = set()

    def on(record: Any) -> None:
        echo = stamped(time.monotonic(), record.value or b"")
        sent = asyncio.ensure_future(producer.send(REPLIES, echo, key=record.key, partition=0))
        sending.add(sent)
        sent.add_done_callback(sending.discard)

    tail = Tail(cluster, REQUESTS, [0], on)
    await tail.start()
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await tail.stop()
    await cluster.close()


async def kafka_wire_call(url: str, args: dict[str, Any]) -> dict[str, Any]:
    from fleet.transport._kafka_wire import Producer, Tail

    cluster = _kafka_wire(url, "floor-call")
    producer = Producer(cluster, timeout_ms=10_000)
    await producer.start()
    futures: dict[str, asyncio.Future[Answer]] = {}

    def on(record: Any) -> None:
        future = futures.pop((record.key or b"").decode(), None)
        if future is not None:
            future.set_result((time.monotonic(), record.value or b""))

    tail = Tail(cluster, REPLIES, [0], on)
    await tail.start()

    async def send(key: str, body: bytes) -> None:
        await producer.send(REQUESTS, body, key=key.encode(), partition=0)

    try:
        return await open_loop(send, futures, args)
    finally:
        await tail.stop()
        await cluster.close()


def _run(*argv: str, timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"library floor call failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(
    broker: str, url: str, rates: Sequence[int], duration: float, size: int
) -> dict[int, dict[str, Any]]:
    """The echo at each rate (after 2 s of warm-up at the first): latencies,
    the caller's CPU (``cpu_s``) and the server's (``worker_cpu_s``), in the
    shape of ``latency.py``'s runs (``inference_s`` 0: there is no model)."""
    from benchmarks.request_path import _cpu_s, stop_process

    budget = (duration + 30) * (len(rates) + 1)
    with subprocess.Popen(
        [sys.executable, __file__, "serve", broker, url, str(budget)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as server:
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"library floor server for {broker} did not start")
            out: dict[int, dict[str, Any]] = {}
            for n, rate in enumerate([rates[0], *rates]):
                seconds = 2 if n == 0 else duration
                args = {"rate": rate, "duration": seconds, "seed": 0, "bytes": size}
                before = _cpu_s(server.pid)
                run = _run("call", broker, url, json.dumps(args), timeout=duration + 120)
                run.update(worker_cpu_s=_cpu_s(server.pid) - before, inference_s=0.0, stages=[])
                if n > 0:
                    out[rate] = run
            return out
        finally:
            stop_process(server, 10)


def main(argv: list[str]) -> None:
    what, broker, url, rest = argv
    if what == "serve":
        serve = {
            "amqp": amqp_serve,
            "amqp-wire": wire_serve,
            "kafka": kafka_serve,
            "kafka-wire": kafka_wire_serve,
        }[broker]
        asyncio.run(serve(url, float(rest)))
        return
    call = {
        "amqp": amqp_call,
        "amqp-wire": wire_call,
        "kafka": kafka_call,
        "kafka-wire": kafka_wire_call,
    }[broker]
    out = asyncio.run(call(url, json.loads(rest)))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
