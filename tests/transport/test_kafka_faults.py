"""Kafka under faults: size limits the broker enforces, slow requests that are
no lost connection, committed-offset reads that come back empty, hand-backs
whose publish fails, and how long a killed worker's partitions stay silent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import RequestTimedOutError

from fleet.contract import Priority
from fleet.errors import LimitExceeded, Unavailable
from fleet.transport import Delivery, queue_name
from fleet.transport.kafka import _Backlog
from tests.transport.kafka_support import Connect, collector, eventually, lag_becomes

pytestmark = pytest.mark.kafka

ONLINE = Priority.ONLINE


# --------------------------------------------------------------------------- sizes


async def test_default_size_limit_is_what_a_default_broker_takes(
    kafka: Connect, unique_model: str
) -> None:
    t = await kafka(partitions=1)
    limit = t.max_message_bytes
    assert (1 << 20) - 8192 <= limit < 1 << 20  # a default broker takes 1 MiB + 12 bytes
    await t.declare_model(unique_model)
    with pytest.raises(LimitExceeded):
        await asyncio.wait_for(t.publish_request(unique_model, ONLINE, b"o" * (limit + 1)), 1.0)
    body = bytes(range(256)) * (limit // 256) + b"e" * (limit % 256)
    assert len(body) == limit
    await t.publish_request(unique_model, ONLINE, body)
    got: list[Delivery] = []
    await t.consume(unique_model, ONLINE, collector(got), prefetch=1)
    await eventually(lambda: len(got) == 1)
    assert got[0].body == body


async def test_a_topic_that_takes_less_refuses_with_limit_exceeded_at_once(
    kafka: Connect, kafka_url: str, unique_model: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await admin.start()
    try:
        small = {"max.message.bytes": "2048"}
        await admin.create_topics(
            [NewTopic(queue_name(unique_model, p), 1, 1, topic_configs=small) for p in Priority]
        )
    finally:
        await admin.close()
    t = await kafka(partitions=1, max_message_bytes=16_384, publish_timeout=60.0)
    await t.declare_model(unique_model)
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as err:
        await t.publish_request(unique_model, ONLINE, b"x" * 8192)
    assert not err.value.retriable
    assert time.monotonic() - started < 30  # refused, not timed out


# --------------------------------------------------------------------------- hand-backs


async def test_a_reject_whose_dead_letter_publish_fails_is_handed_back(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await kafka(partitions=1, reconnect_interval=0.05)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    await worker.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    await worker.publish_request(unique_model, ONLINE, b"poison")
    await eventually(lambda: len(got) == 1)

    async def down(*args: object, **kwargs: object) -> None:
        raise Unavailable("the broker does not confirm")

    monkeypatch.setattr(worker, "dead_letter", down)
    monkeypatch.setattr(worker, "republish", down)
    await asyncio.wait_for(got[0].reject(), 10)  # never raises, never leaves it unsettled
    await eventually(lambda: len(got) == 2)
    assert (got[1].body, got[1].attempt) == (b"poison", 2)
    monkeypatch.undo()
    await got[1].reject()
    await lag_becomes(worker, unique_model, 0)


# --------------------------------------------------------------------------- slow is not dead


@pytest.mark.parametrize("how", ["request-timed-out", "slow-send"])
async def test_a_timed_out_send_is_not_a_lost_connection(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    t = await kafka(partitions=1, publish_timeout=1.0)
    await t.declare_model(unique_model)
    got: list[Delivery] = []
    await t.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    await t.publish_request(unique_model, ONLINE, b"held")
    await eventually(lambda: len(got) == 1)
    fired: list[int] = []
    t.add_reconnect_listener(lambda: fired.append(1))
    probes: list[bool] = []
    real_probe = t._probe

    async def probe() -> bool:
        ok = await real_probe()
        probes.append(ok)
        return ok

    monkeypatch.setattr(t, "_probe", probe)

    async def timed_out(*args: object, **kwargs: object) -> None:
        raise RequestTimedOutError()

    # slow: a broker that never answers (the record is never sent), cut by publish_timeout
    slow = how == "slow-send"
    seam, fake = ("_enqueue", lambda *a: None) if slow else ("send_and_wait", timed_out)
    setattr(t._producer, seam, fake)
    try:
        with pytest.raises(Unavailable) as err:
            await asyncio.wait_for(t.publish_request(unique_model, ONLINE, b"slow"), 10)
    finally:
        delattr(t._producer, seam)
    assert err.value.retriable
    seen = len(probes)
    await eventually(lambda: len(probes) >= seen + 3)  # the watcher looked, more than once
    assert all(probes) and fired == [] and t.connected
    await t.publish_request(unique_model, ONLINE, b"after")
    await eventually(lambda: len(got) >= 2)
    await asyncio.sleep(0.5)
    assert [(d.body, d.attempt) for d in got] == [(b"held", 1), (b"after", 1)]


# --------------------------------------------------------------------------- lag after a restart


async def test_an_empty_committed_read_is_not_the_whole_log(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await kafka(partitions=2, max_lag=20)
    worker = await kafka(partitions=2)
    await worker.declare_model(unique_model)
    for i in range(60):
        await worker.publish_request(unique_model, ONLINE, b"%d" % i)
    await worker.consume(unique_model, ONLINE, collector([]), prefetch=16)
    await lag_becomes(client, unique_model, 0)  # the client has read the commits

    reads: list[int] = []

    async def empty(group: str, tps: object) -> dict[Any, Any]:
        reads.append(1)
        return {}  # as right after a broker restart

    monkeypatch.setattr(client, "committed", empty)
    client._lag_cache.clear()
    await client.publish_request(unique_model, ONLINE, b"not overloaded")
    await eventually(lambda: bool(reads), timeout=10)
    depth = await client.depth(unique_model)
    assert depth.backlog <= 1


async def test_an_unreadable_backlog_does_not_refuse_a_publish(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a restart, partition leaders move and the backlog read times
    out; the guard is skipped for that read, the send decides."""
    client = await kafka(partitions=2, max_lag=20)
    worker = await kafka(partitions=2)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    await worker.consume(unique_model, ONLINE, collector(got), prefetch=4)
    reads: list[int] = []

    async def not_leader(topic: str) -> tuple[int, int]:
        reads.append(1)
        raise TimeoutError  # what a read against moving leaders ends in

    monkeypatch.setattr(client, "_topic_backlog", not_leader)
    client._lag_cache.clear()
    await client.publish_request(unique_model, ONLINE, b"published anyway")
    await client.publish_request(unique_model, ONLINE, b"and again")
    assert len(reads) == 1, "an unreadable backlog is not read again at once"
    await eventually(lambda: len(got) == 2, timeout=30)


async def test_a_slow_backlog_read_does_not_hold_up_publishes(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic's backlog is read in the background, the first time and each
    time the figure is stale: the publishes meanwhile use the last figure (0
    before the first) and wait for no broker round trip of that read; one
    read at a time."""
    client = await kafka(partitions=2, max_lag=20)
    await client.declare_model(unique_model)
    topic = queue_name(unique_model, ONLINE)
    release = asyncio.Event()
    reads: list[int] = []

    async def slow(topic: str) -> Any:
        reads.append(1)
        await release.wait()  # a read that never ends until told
        return _Backlog(3, 0, {})

    monkeypatch.setattr(client, "_topic_backlog", slow)
    for round_ in (1, 2):
        for i in range(3):
            await asyncio.wait_for(client.publish_request(unique_model, ONLINE, b"%d" % i), 10)
        assert len(reads) == round_
        release.set()
        await eventually(lambda: topic not in client._lag_reads, timeout=10)
        assert client._lag_cache[topic][1] == 3
        release.clear()
        at, ready = client._lag_cache[topic]
        client._lag_cache[topic] = (at - 60, ready)  # stale: read again


async def test_a_publish_a_backlog_read_saw_is_not_counted_twice(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that lands while the backlog is being read is in the read's
    figure: it is not counted again on top of it, however the read and the
    send interleave (the end offsets the read saw tell)."""
    client = await kafka(partitions=2, max_lag=20)
    await client.declare_model(unique_model)
    topic = queue_name(unique_model, ONLINE)
    release = asyncio.Event()
    real = client._topic_backlog

    async def after_the_sends(topic: str) -> Any:
        await release.wait()  # the read's offsets come after both sends landed
        return await real(topic)

    monkeypatch.setattr(client, "_topic_backlog", after_the_sends)
    for i in range(2):
        await client.publish_request(unique_model, ONLINE, b"%d" % i)
    release.set()
    await eventually(lambda: topic in client._lag_cache, timeout=10)
    assert client._lag_cache[topic][1] == 2
    assert client._waiting_estimate(topic) == 2
    await client.publish_request(unique_model, ONLINE, b"after the read")
    assert client._waiting_estimate(topic) == 3


# --------------------------------------------------------------------------- a killed worker

_WORKER = """
import asyncio, sys
from fleet.contract import Priority
from fleet.transport import connect

async def main():
    t = connect(sys.argv[1], session_timeout=float(sys.argv[3]))
    await t.connect()
    async def on_delivery(d):
        print("got", d.body.decode(), d.attempt, flush=True)
    await t.consume(sys.argv[2], Priority.ONLINE, on_delivery, prefetch=4)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _said(lines: list[tuple[float, str]], what: str) -> Callable[[], bool]:
    return lambda: any(s == what for _, s in lines)


async def _read_lines(proc: asyncio.subprocess.Process, lines: list[tuple[float, str]]) -> None:
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        lines.append((time.monotonic(), line.decode().strip()))


@pytest.mark.parametrize(("session_timeout", "bound"), [(6.0, 10.0), (2.0, 6.0)])
async def test_a_killed_workers_records_move_on_within_a_few_seconds(
    kafka: Connect, kafka_url: str, unique_model: str, session_timeout: float, bound: float
) -> None:
    """From a kill -9 of the worker holding a record to its delivery to
    another worker: the session timeout and a rebalance (the broker of the
    test tier allows sessions down to 1 s)."""
    client = await kafka(partitions=1)
    await client.declare_model(unique_model)
    procs: list[asyncio.subprocess.Process] = []
    outputs: list[list[tuple[float, str]]] = [[], []]
    readers = []
    env = {**os.environ, "FLEET_LOG_LEVEL": "WARNING"}
    try:
        for out in outputs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER,
                kafka_url,
                unique_model,
                str(session_timeout),
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            procs.append(proc)
            readers.append(asyncio.ensure_future(_read_lines(proc, out)))
            await eventually(_said(out, "ready"), timeout=40)
        await client.publish_request(unique_model, ONLINE, b"job")
        await eventually(lambda: any(s.startswith("got") for o in outputs for _, s in o), 30)
        owner = next(i for i, o in enumerate(outputs) if any(s.startswith("got") for _, s in o))
        other = outputs[1 - owner]
        killed = time.monotonic()
        procs[owner].send_signal(signal.SIGKILL)
        await eventually(lambda: any(s.startswith("got job") for _, s in other), timeout=30)
        at = next(t for t, s in other if s.startswith("got job"))
        gap = at - killed
        print(f"silence after a killed worker: {gap:.2f}s")
        assert session_timeout - 0.5 < gap < bound
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


# --------------------------------------------------------------------------- rebalances


async def test_a_record_handed_back_at_a_rebalance_keeps_its_attempt(
    kafka: Connect, unique_model: str
) -> None:
    """A consumer joining takes every partition away from the others for a
    moment (eager rebalance): a record in flight there is delivered again, but
    nobody failed it, so its attempt does not grow."""
    first = await kafka(partitions=1)
    await first.declare_model(unique_model)
    got: list[Delivery] = []
    await first.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    await first.publish_request(unique_model, ONLINE, b"slow")
    await eventually(lambda: len(got) == 1)
    second = await kafka(partitions=1)
    await second.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    await eventually(lambda: len(got) == 2, timeout=30)
    assert [(d.body, d.attempt) for d in got] == [(b"slow", 1), (b"slow", 1)]
    await got[1].ack()
