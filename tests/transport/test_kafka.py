"""What only the Kafka transport has to get right: lag, commits, partitions as
the cap on parallelism, rebalances, attempts kept in commit metadata, the inbox
topic, and reconnecting after a broker restart."""

from __future__ import annotations

import asyncio
import gc
import os
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from fleet.contract import Priority
from fleet.errors import FleetError, ModelNotFound, Overloaded, Unavailable
from fleet.transport import Delivery, connect, queue_name
from fleet.transport.base import new_reply_address
from fleet.transport.kafka import REPLIES, KafkaTransport, shared_partition
from tests.conftest import missing
from tests.transport.kafka_support import (
    Connect,
    collector,
    eventually,
    joining_and_leaving_loses_nothing,
    lag_becomes,
)

pytestmark = pytest.mark.kafka

ONLINE = Priority.ONLINE


# --------------------------------------------------------------------------- lag


async def test_lag_of_a_group_that_never_committed_counts_from_log_start(
    kafka: Connect, admin: Any, unique_model: str
) -> None:
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    for i in range(5):
        await t.publish_request(unique_model, ONLINE, f"r{i}".encode())
    depth = await t.depth(unique_model)
    assert (depth.ready, depth.in_flight) == (5, 0)
    # move the log start past the first three records: the group never
    # committed, so its lag is what is left in the log, not the whole offset range
    tp = TopicPartition(queue_name(unique_model, ONLINE), 0)
    await admin.delete_records({tp: RecordsToDelete(before_offset=3)})
    await lag_becomes(t, unique_model, 2, timeout=10)


async def test_lag_is_zero_when_caught_up_and_commits_are_next_offsets(
    kafka: Connect, admin: Any, unique_model: str
) -> None:
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    for i in range(4):
        await t.publish_request(unique_model, ONLINE, f"r{i}".encode())
    got: list[Delivery] = []
    await t.consume(unique_model, ONLINE, collector(got), prefetch=10)
    await eventually(lambda: len(got) == 4)
    await lag_becomes(t, unique_model, 0)
    depth = await t.depth(unique_model)
    assert (depth.ready, depth.in_flight, depth.consumers) == (0, 0, 1)
    topic = queue_name(unique_model, ONLINE)
    offsets = await admin.list_consumer_group_offsets(topic)
    assert offsets[TopicPartition(topic, 0)].offset == 4  # the next offset to read


async def test_commit_waits_for_the_oldest_unacked_record(
    kafka: Connect, admin: Any, unique_model: str
) -> None:
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    for i in range(3):
        await t.publish_request(unique_model, ONLINE, f"r{i}".encode())
    got: list[Delivery] = []
    await t.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=10)
    await eventually(lambda: len(got) == 3, what=got and [(d.body, d.attempt) for d in got])
    await got[1].ack()
    await got[2].ack()
    await asyncio.sleep(0.5)
    depth = await t.depth(unique_model)
    # offset 0 is still open, so nothing is committed: all three are handed out
    assert (depth.ready, depth.in_flight) == (0, 3)
    await got[0].ack()
    await lag_becomes(t, unique_model, 0)


async def test_commits_go_on_the_data_path_and_aiokafka_commits_what_the_broker_refuses_there(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group consumer commits on the transport's own connection to the
    group's coordinator: aiokafka's commit is not called. Where the broker
    refuses such a commit (here: one in a generation the group is not in),
    aiokafka's commit does it, and the offsets are committed all the same;
    so are the next ones for a while (``WIRE_COMMIT_BACKOFF``), unless the
    coordinator or the generation changes."""
    from fleet.transport import _kafka_consumer
    from fleet.transport._kafka_consumer import GroupConsumer

    t = await kafka(partitions=1)
    assert t.wire is not None
    await t.declare_model(unique_model)
    got: list[Delivery] = []
    group = await t.consume(unique_model, ONLINE, collector(got), prefetch=10)
    assert isinstance(group, GroupConsumer)
    by_aiokafka: list[Any] = []
    aiokafka_commit = group._kafka.commit

    async def spied(offsets: Any) -> None:
        by_aiokafka.append(offsets)
        await aiokafka_commit(offsets)

    monkeypatch.setattr(group._kafka, "commit", spied)
    await t.publish_request(unique_model, ONLINE, b"r0")
    await eventually(lambda: len(got) == 1)
    await lag_becomes(t, unique_model, 0)
    assert by_aiokafka == []

    request = _kafka_consumer.offset_commit_request

    def stale(group: str, generation: int, member: str, offsets: Any) -> bytes:
        return request(group, generation + 1000, member, offsets)

    monkeypatch.setattr(_kafka_consumer, "offset_commit_request", stale)
    await t.publish_request(unique_model, ONLINE, b"r1")
    await eventually(lambda: len(got) == 2)
    await lag_becomes(t, unique_model, 0)
    assert by_aiokafka, "the refused commit was not made by aiokafka"
    # in the same generation, the next commits go to aiokafka at once, for a while
    on_wire: list[bytes] = []
    wire_commit = t.wire.commit

    async def spied_wire(node: int, body: bytes) -> dict[tuple[str, int], int]:
        on_wire.append(body)
        return await wire_commit(node, body)

    monkeypatch.setattr(t.wire, "commit", spied_wire)
    made = len(by_aiokafka)
    await t.publish_request(unique_model, ONLINE, b"r2")
    await eventually(lambda: len(got) == 3)
    await lag_becomes(t, unique_model, 0)
    assert len(by_aiokafka) > made and on_wire == []
    # once that while is over the data path is tried again, and takes them
    monkeypatch.setattr(_kafka_consumer, "offset_commit_request", request)
    monkeypatch.setattr(_kafka_consumer, "WIRE_COMMIT_BACKOFF", 0.0)
    made = len(by_aiokafka)
    await t.publish_request(unique_model, ONLINE, b"r3")
    await eventually(lambda: len(got) == 4)
    await lag_becomes(t, unique_model, 0)
    assert on_wire and len(by_aiokafka) == made
    assert [d.attempt for d in got] == [1, 1, 1, 1]


async def test_publish_past_max_lag_is_overloaded(kafka: Connect, unique_model: str) -> None:
    t = await kafka(partitions=2, max_lag=3)
    await t.declare_model(unique_model)
    for i in range(3):
        await t.publish_request(unique_model, ONLINE, f"r{i}".encode())
    with pytest.raises(Overloaded):
        await t.publish_request(unique_model, ONLINE, b"one too many")
    # the other priority class has its own backlog
    await t.publish_request(unique_model, Priority.BATCH, b"batch is fine")


async def test_unknown_model_is_model_not_found(kafka: Connect, unique_model: str) -> None:
    t = await kafka()
    with pytest.raises(ModelNotFound):
        await asyncio.wait_for(t.publish_request(unique_model, ONLINE, b"x"), 5)
    with pytest.raises(ModelNotFound):
        await t.depth(unique_model)


# --------------------------------------------------------------------------- partitions


async def test_extra_consumer_idles_and_the_others_get_everything(
    kafka: Connect, unique_model: str
) -> None:
    workers = [await kafka(partitions=2) for _ in range(3)]
    await workers[0].declare_model(unique_model)
    sinks: list[list[Delivery]] = [[], [], []]
    consumers = [
        await w.consume(unique_model, ONLINE, collector(sink), prefetch=10)
        for w, sink in zip(workers, sinks, strict=True)
    ]

    def settled() -> bool:
        return sum(c.idle_reason() is not None for c in consumers) == 1

    await eventually(settled, timeout=30)
    idle = next(i for i, c in enumerate(consumers) if c.idle_reason() is not None)
    reason = consumers[idle].idle_reason()
    assert reason is not None and "no partitions assigned" in reason and "2 partitions" in reason
    client = await kafka()
    for i in range(20):
        await client.publish_request(unique_model, ONLINE, f"r{i}".encode())
    await eventually(lambda: sum(len(s) for s in sinks) >= 20)
    await asyncio.sleep(0.5)
    assert sinks[idle] == []
    bodies = sorted(d.body for s in sinks for d in s)
    assert bodies == sorted(f"r{i}".encode() for i in range(20))


async def test_rebalance_when_a_consumer_joins_and_leaves_loses_nothing(
    kafka: Connect, unique_model: str
) -> None:
    first, second, client = [await kafka(partitions=4) for _ in range(3)]
    await joining_and_leaving_loses_nothing(first, second, client, unique_model)


async def test_a_paused_consumer_stays_in_its_group_and_keeps_its_partitions(
    kafka: Connect, unique_model: str
) -> None:
    """Pausing at the worker's bound must not leave the group: leaving and
    joining again would rebalance every member each time."""
    first, second, client = [await kafka(partitions=2) for _ in range(3)]
    await client.declare_model(unique_model)
    a: list[Delivery] = []
    b: list[Delivery] = []
    ca = await first.consume(unique_model, ONLINE, collector(a), prefetch=4)
    cb = await second.consume(unique_model, ONLINE, collector(b), prefetch=4)
    group = queue_name(unique_model, ONLINE)
    await eventually(lambda: ca.idle_reason() is None and cb.idle_reason() is None, timeout=30)

    await ca.pause()
    for i in range(20):
        await client.publish_request(unique_model, ONLINE, f"r{i}".encode())
    await eventually(lambda: len(b) >= 1)
    await asyncio.sleep(1.0)
    assert await client.group_members(group) == 2, "the paused member left its group"
    assert ca.idle_reason() is None, "the paused member lost its partition"
    assert a == [], "a paused consumer received"
    assert len(b) < 20, "its partition moved to the other member"

    await ca.resume()
    await eventually(lambda: len(a) + len(b) >= 20)
    assert sorted(d.body for d in a + b) == sorted(f"r{i}".encode() for i in range(20))
    assert all(d.attempt == 1 for d in a + b)


async def test_a_fetchs_records_of_many_partitions_wait_on_one_commit(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt counts of every partition a fetch brought records from are
    committed in one commit before any of them is handed out: one round trip
    to the group coordinator per fetch, not one per partition in turn."""
    from fleet.transport._kafka_consumer import GroupConsumer

    t, client = await kafka(partitions=8), await kafka(partitions=8)
    await client.declare_model(unique_model)
    got: list[Delivery] = []
    group = await t.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=64)
    assert isinstance(group, GroupConsumer)
    await eventually(lambda: len(group._parts) == 8, timeout=30)  # every partition set up
    await group.pause()
    for i in range(32):  # no key: spread over the partitions
        await client.publish_request(unique_model, ONLINE, f"r{i}".encode())
    fetches: list[set[TopicPartition]] = []
    commits: list[set[TopicPartition]] = []
    hand_out, commit = group._hand_out_claims, group._commit

    async def spied_hand_out(claims: list[Any]) -> None:
        fetches.append({part.tp for part, _before, _todo in claims})
        await hand_out(claims)

    async def spied_commit(parts: Any, **kw: Any) -> bool:
        parts = list(parts)
        commits.append({p.tp for p in parts})
        return await commit(parts, **kw)

    monkeypatch.setattr(group, "_hand_out_claims", spied_hand_out)
    monkeypatch.setattr(group, "_commit", spied_commit)
    await group.resume()
    await eventually(lambda: len(got) == 32)
    assert sorted(d.body for d in got) == sorted(f"r{i}".encode() for i in range(32))
    assert commits == fetches, (commits, fetches)  # no acks: hand-out commits only
    assert len(set().union(*fetches)) > 1  # 32 spread at random: all in one, about 1e-28


async def test_a_caught_up_partition_is_claimed_ahead_one_commit_for_many_records(
    kafka: Connect, unique_model: str
) -> None:
    """At everyday load a fetch brings a record or two: the hand-out commit of a
    partition whose fetch reached the log's end counts ``CLAIM_AHEAD`` offsets
    past it as handed out too, so the records that follow are handed out with
    no commit of their own. They are counted all the same: after a crash each
    comes back with its attempt one higher."""
    from fleet.transport._kafka_consumer import CLAIM_AHEAD, GroupConsumer

    crashed, client = await kafka(partitions=1), await kafka(partitions=1)
    await crashed.declare_model(unique_model)
    first: list[Delivery] = []
    group = await crashed.consume(unique_model, ONLINE, collector(first, ack=False), prefetch=64)
    assert isinstance(group, GroupConsumer)
    n = 20
    assert n < CLAIM_AHEAD
    for i in range(n):  # one at a time: the consumer is caught up each time
        await client.publish_request(unique_model, ONLINE, f"r{i}".encode())
        await eventually(lambda i=i: len(first) == i + 1)
    assert [d.attempt for d in first] == [1] * n
    assert group.claim_commits == 1, group.claim_commits  # one commit each, without the claim
    await crashed.close()  # goes away without acking

    second_worker = await kafka(partitions=1)
    second: list[Delivery] = []
    await second_worker.consume(unique_model, ONLINE, collector(second), prefetch=64)
    await eventually(lambda: len(second) == n, timeout=30)
    assert sorted(d.body for d in second) == sorted(f"r{i}".encode() for i in range(n))
    assert [d.attempt for d in second] == [2] * n


@pytest.mark.parametrize("start_over", ["reconnect", "rewind"])
async def test_a_fresh_start_counts_what_was_handed_out_not_what_was_claimed(
    kafka: Connect, unique_model: str, start_over: str
) -> None:
    """After a reconnect (or a rewind, when a hand-back keeps failing) the
    consumer reads its partition again from the committed offset, the records
    it handed out counted once more. What it had only claimed ahead was never
    handed out: a record that arrives there afterwards is a first delivery."""
    from fleet.transport._kafka_consumer import GroupConsumer

    worker, client = await kafka(partitions=1), await kafka(partitions=1)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    group = await worker.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    assert isinstance(group, GroupConsumer)
    await client.publish_request(unique_model, ONLINE, b"held")
    await eventually(lambda: len(got) == 1)
    (part,) = group._parts.values()
    assert part.claimed_upto > part.handed_upto  # caught up: its hand-out commit claimed ahead
    if start_over == "reconnect":
        group.abandon_in_flight()
    else:
        group.rewind(part, group.generation)
    await eventually(lambda: len(got) == 2)
    await client.publish_request(unique_model, ONLINE, b"new")
    await eventually(lambda: len(got) == 3)
    assert [(d.body, d.attempt) for d in got] == [(b"held", 1), (b"held", 2), (b"new", 1)]


async def test_a_record_whose_hand_out_commit_is_under_way_at_a_reconnect_comes_back_as_new(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record is handed to its handler only once its hand-out commit is
    done. A reconnect while that commit waits gives the record up before any
    handler saw it: read again, it is a first delivery, not a second."""
    from fleet.transport._kafka_consumer import GroupConsumer

    worker, client = await kafka(partitions=1), await kafka(partitions=1)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    group = await worker.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=4)
    assert isinstance(group, GroupConsumer)
    real_commit = group._commit
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_commit(parts: Any, **kwargs: Any) -> bool:
        if kwargs.get("count_handed", True) and not entered.is_set():
            entered.set()  # the first hand-out commit waits for the broker
            await release.wait()
        return await real_commit(parts, **kwargs)

    monkeypatch.setattr(group, "_commit", held_commit)
    await client.publish_request(unique_model, ONLINE, b"r")
    await asyncio.wait_for(entered.wait(), 30)
    group.abandon_in_flight()
    release.set()
    await eventually(lambda: len(got) == 1)
    assert [(d.body, d.attempt) for d in got] == [(b"r", 1)]


async def test_records_buffered_at_a_rebalance_are_read_again_not_claimed_after_it(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance starts while a record's hand-out commit is under way and
    the next record waits in the fetch buffer. The revoke gives the first
    record up unhanded; the next assignment reads the partition again from
    the committed offset. Had the fetch loop taken the buffered record during
    the rebalance and claimed it into the next assignment, that assignment's
    hand-out position would pass the first record, which would then be
    committed past without ever being handed out."""
    from fleet.transport._kafka_consumer import GroupConsumer

    worker, client = await kafka(partitions=1), await kafka(partitions=1)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    group = await worker.consume(unique_model, ONLINE, collector(got), prefetch=4)
    assert isinstance(group, GroupConsumer) and group._fetcher is not None
    fetcher = group._fetcher
    await eventually(lambda: len(group._parts) == 1, timeout=30)
    (tp,) = group._parts
    real_commit = group._commit
    handing, revoking = asyncio.Event(), asyncio.Event()
    release_hand_out, release_revoke = asyncio.Event(), asyncio.Event()

    async def held_commit(parts: Any, **kwargs: Any) -> bool:
        handed = kwargs.get("count_handed", True)
        if handed and not handing.is_set():
            handing.set()  # r0's hand-out commit waits for the broker
            await release_hand_out.wait()
        elif not handed:
            revoking.set()  # the revoke's commit waits too
            await release_revoke.wait()
        return await real_commit(parts, **kwargs)

    monkeypatch.setattr(group, "_commit", held_commit)
    await client.publish_request(unique_model, ONLINE, b"r0")
    await asyncio.wait_for(handing.wait(), 30)
    await client.publish_request(unique_model, ONLINE, b"r1")
    await eventually(lambda: fetcher._count == 1)  # r1 buffered
    revoke = asyncio.create_task(group.on_revoked({tp}))  # the rebalance begins
    await asyncio.sleep(0)
    release_hand_out.set()  # r0 is given up: its partition is being revoked
    await asyncio.wait_for(revoking.wait(), 30)
    # the fetch loop comes round and waits for the assignment
    await eventually(lambda: len(group._assignment_ready._waiters) > 0)  # type: ignore[attr-defined]
    release_revoke.set()
    await asyncio.wait_for(revoke, 30)
    await group.on_assigned({tp})  # and the partition stays with this consumer
    await eventually(lambda: len(got) >= 2, timeout=30)
    assert sorted(d.body for d in got) == [b"r0", b"r1"]
    await lag_becomes(client, unique_model, 0)


async def test_a_consumer_resumed_while_waiting_for_records_fetches_at_once(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker pauses its consumers when it holds as much as it may, and that
    can happen while the fetch loop waits for records. Resuming must resume the
    partitions then and there: left paused until the loop's wait ends, they
    fetch nothing meanwhile (at saturation the wait is 100 ms, and requests
    waited that long in the topic again and again). With the waits set to a
    minute, a record published after the resume is still taken long before."""
    from fleet.transport import _kafka_consumer
    from fleet.transport._kafka_consumer import GroupConsumer

    monkeypatch.setattr(_kafka_consumer, "FETCH_POLL_MS", 60_000)
    monkeypatch.setattr(_kafka_consumer, "FETCH_IDLE_POLL_MS", 60_000)
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    got: list[Delivery] = []
    group = await t.consume(unique_model, ONLINE, collector(got), prefetch=4)
    assert isinstance(group, GroupConsumer)
    await t.publish_request(unique_model, ONLINE, b"first")
    await eventually(lambda: len(got) == 1, timeout=20)  # the loop now waits a minute
    await group.pause()
    await asyncio.sleep(0.5)  # the fetcher sees the partitions paused
    await group.resume()
    await t.publish_request(unique_model, ONLINE, b"after the resume")
    await eventually(lambda: len(got) == 2, timeout=20)
    assert got[1].body == b"after the resume"


# --------------------------------------------------------------------------- attempts


@pytest.mark.shares("dead-letters")
async def test_unacked_record_is_delivered_again_with_a_higher_attempt(
    kafka: Connect, unique_model: str
) -> None:
    crashed = await kafka(partitions=1, delivery_limit=2)
    await crashed.declare_model(unique_model)
    first: list[Delivery] = []
    await crashed.consume(unique_model, ONLINE, collector(first, ack=False), prefetch=1)
    client = await kafka()
    await client.publish_request(unique_model, ONLINE, b"poison")
    await eventually(lambda: len(first) == 1)
    assert first[0].attempt == 1
    await crashed.close()  # goes away without acking

    second_worker = await kafka(delivery_limit=2)
    second: list[Delivery] = []
    await second_worker.consume(unique_model, ONLINE, collector(second, ack=False), prefetch=1)
    await eventually(lambda: len(second) == 1, timeout=30)
    assert second[0].body == b"poison"
    assert second[0].attempt == 2
    await second_worker.close()

    # a third delivery would pass the limit: it is dead-lettered instead
    third_worker = await kafka(delivery_limit=2)
    third: list[Delivery] = []
    await third_worker.consume(unique_model, ONLINE, collector(third), prefetch=1)
    await lag_becomes(third_worker, unique_model, 0, timeout=30)
    assert third == []
    letters: list[bytes] = []

    async def dead_lettered() -> None:
        while b"poison" not in letters:
            letters.extend(await third_worker.take_dead_letters(limit=10_000))
            await asyncio.sleep(0.1)

    await asyncio.wait_for(dead_lettered(), 20)


@pytest.mark.shares("dead-letters")
async def test_reject_moves_the_record_to_the_dead_letter_topic(
    kafka: Connect, unique_model: str
) -> None:
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    got: list[Delivery] = []
    await t.consume(unique_model, ONLINE, collector(got, ack=False), prefetch=1)
    body = f"reject-{unique_model}".encode()
    await t.publish_request(unique_model, ONLINE, body)
    await eventually(lambda: len(got) == 1)
    await got[0].reject()
    await lag_becomes(t, unique_model, 0)
    letters: list[bytes] = []

    async def dead_lettered() -> None:
        while body not in letters:
            letters.extend(await t.take_dead_letters(limit=10_000))
            await asyncio.sleep(0.1)

    await asyncio.wait_for(dead_lettered(), 20)
    # taken means gone: the reader group committed past it
    assert body not in await t.take_dead_letters(limit=10_000)


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize("inbox", ["shared", "topic"])
async def test_inbox_is_positioned_at_its_end_before_it_is_returned(
    kafka: Connect, kafka_url: str, inbox: str
) -> None:
    client, worker = await kafka(inbox=inbox), await kafka()
    replies: list[bytes] = []
    address = await client.open_inbox(replies.append)
    assert (shared_partition(address) is None) == (inbox == "topic")
    # written straight after open_inbox returns: must not be skipped
    await worker.publish_reply(address, b"first")
    await eventually(lambda: replies == [b"first"], timeout=10)
    # a second client's inbox is its own: it sees nothing of the first's
    others: list[bytes] = []
    other = await client.open_inbox(others.append)
    assert other != address
    await worker.publish_reply(address, b"second")
    await eventually(lambda: replies == [b"first", b"second"], timeout=10)
    assert others == []
    # raw producer: anyone who may write to the topic can address the inbox
    partition = shared_partition(address)
    topic, key = (address, None) if partition is None else (REPLIES, address.encode())
    producer = AIOKafkaProducer(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"third", key=key, partition=partition)
    finally:
        await producer.stop()
    await eventually(lambda: replies[-1:] == [b"third"], timeout=10)


@pytest.mark.exclusive
async def test_shared_inboxes_leave_nothing_behind_and_read_only_their_own(
    kafka: Connect, kafka_url: str
) -> None:
    """Inboxes on ``fleet.replies`` create no topic, and two that share a
    partition each get exactly their own replies."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_url.removeprefix("kafka://"))
    await admin.start()
    try:
        before = set(await admin.list_topics())
        client, worker = await kafka(), await kafka()
        got: dict[str, list[bytes]] = {}
        by_partition: dict[int, str] = {}
        pair: tuple[str, str] | None = None
        while pair is None:  # pigeonhole: at most partitions + 1 inboxes
            sink: list[bytes] = []
            address = await client.open_inbox(sink.append)
            got[address] = sink
            partition = shared_partition(address)
            assert partition is not None
            if partition in by_partition:
                pair = (by_partition[partition], address)
            by_partition[partition] = address
        for address in pair:
            await worker.publish_reply(address, address.encode())
        for address in pair:
            await eventually(lambda a=address: got[a] == [a.encode()], timeout=10)  # type: ignore[misc]
        assert all(got[a] == [] for a in got if a not in pair)
        reader = client._inboxes[pair[0]]  # type: ignore[attr-defined]
        # it reads the other's reply too, and keeps only its own
        await eventually(lambda: reader.read_records >= 2, timeout=10)
        assert got[pair[0]] == [pair[0].encode()]
        await client.close()
        assert not {t for t in await admin.list_topics() if t.startswith("fleet.inbox.")} - before
    finally:
        await admin.close()


async def test_a_worker_forgets_the_reply_topics_of_clients_long_gone(kafka: Connect) -> None:
    """The reply topics of ``inbox=topic`` clients are remembered 30 s each; a
    worker serving thousands of short-lived clients must not keep them all."""
    worker, client = await kafka(), await kafka(inbox="topic")
    address = await client.open_inbox(lambda _b: None)
    long_ago = time.monotonic() - 3600
    worker._reply_topics = {f"fleet.inbox.{i:032x}": long_ago for i in range(1024)}  # type: ignore[attr-defined]
    await worker.publish_reply(address, b"reply")
    assert set(worker._reply_topics) == {address}  # type: ignore[attr-defined]
    assert address not in worker._partitions_cache  # type: ignore[attr-defined]


async def test_declaring_a_model_rides_out_a_request_to_a_dead_broker(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until a cluster fences a killed broker, an admin request may go to it and
    fail; declaring a model (a worker's start) tries again within its timeout."""
    worker = await kafka()
    real = worker._has_leaders  # type: ignore[attr-defined]
    failures = [Unavailable("metadata failed: NodeNotReadyError")]

    async def flaky(topic: str) -> bool:
        if failures:
            raise failures.pop()
        return bool(await real(topic))

    monkeypatch.setattr(worker, "_has_leaders", flaky)
    await worker.declare_model(unique_model)
    assert failures == []


async def test_a_topic_a_broker_does_not_know_yet_is_unavailable_not_not_found(
    kafka: Connect, admin: Any, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker just restarted can answer, to a send and to a metadata request
    alike, that it does not know a topic the cluster has: the request is to be
    tried again, not refused as for a model nobody serves. Once the topic has
    been gone for ``missing_grace`` seconds, a publish is ModelNotFound."""
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    await t.publish_request(unique_model, ONLINE, b"r0")
    topic = queue_name(unique_model, ONLINE)

    async def unknown_topic(topic: str, *args: Any, **kwargs: Any) -> None:
        raise ModelNotFound(f"no topic {topic!r}")

    async def catching_up(topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": name, "error_code": 3, "partitions": []} for name in topics]

    with monkeypatch.context() as m:
        m.setattr(t, "_send", unknown_topic)
        m.setattr(t._admin, "describe_topics", catching_up)
        for body in (b"r1", b"r2", b"r3"):  # the send, then the metadata, refuse it
            with pytest.raises(Unavailable) as err:
                await t.publish_request(unique_model, ONLINE, body)
            assert err.value.retriable
    await t.publish_request(unique_model, ONLINE, b"r4")  # caught up: served again

    t.missing_grace = 0.5
    await admin.delete_topics([topic])
    end = time.monotonic() + 10
    while any(m.get("error_code", 0) != 3 for m in await admin.describe_topics([topic])):
        assert time.monotonic() < end, f"{topic} still listed"  # deleted when the cluster says so
        await asyncio.sleep(0.1)
    while True:  # Unavailable while it may be a broker catching up, then gone
        try:
            await t.publish_request(unique_model, ONLINE, b"r5")
        except ModelNotFound:
            break
        except Unavailable:
            assert time.monotonic() < end + 10, "a deleted topic never became ModelNotFound"
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a publish to a deleted topic succeeded")


async def test_a_topic_one_broker_does_not_know_yet_is_asked_of_every_broker(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's first publish to a model a worker has just declared can meet a
    broker whose metadata has not caught up with the new topic: before a topic
    it has never seen is ModelNotFound, the transport asks every broker, and one
    that knows the topic is enough. A topic no broker knows is still refused."""
    worker = await kafka(partitions=1)
    await worker.declare_model(unique_model)
    client = await kafka(partitions=1)
    asked: list[list[str]] = []

    async def lagging(topics: list[str]) -> list[dict[str, Any]]:
        asked.append(topics)
        return [{"topic": name, "error_code": 3, "partitions": []} for name in topics]

    monkeypatch.setattr(client._admin, "describe_topics", lagging)
    await client.publish_request(unique_model, ONLINE, b"first")
    assert asked == [[queue_name(unique_model, ONLINE)]]  # the random broker said unknown
    with pytest.raises(ModelNotFound):
        await client.publish_request(f"{unique_model}-nobody", ONLINE, b"x")


async def test_a_topic_whose_leader_is_moving_is_unavailable_never_not_found(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that names the topic with a passing error (no leader while one
    is elected) says the topic exists: a publish is Unavailable, however long
    it lasts, even from a client that has not published to it before."""
    t = await kafka(partitions=1)
    await t.declare_model(unique_model)
    t.missing_grace = 0.0
    t._partitions_cache.clear()

    async def electing(topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": name, "error_code": 5, "partitions": []} for name in topics]

    with monkeypatch.context() as m:
        m.setattr(t._admin, "describe_topics", electing)
        for body in (b"r1", b"r2"):
            with pytest.raises(Unavailable):
                await t.publish_request(unique_model, ONLINE, body)
    await t.publish_request(unique_model, ONLINE, b"r3")


async def test_a_reply_to_an_inbox_whose_leader_is_moving_is_retried_not_dropped(
    kafka: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inbox topic whose metadata names it with a passing error (no leader
    while one is elected) still exists: a reply to it is Unavailable, for the
    worker to retry, not dropped as a reply to an inbox gone."""
    client, worker = await kafka(inbox="topic"), await kafka()
    address = await client.open_inbox(lambda _b: None)

    async def electing(topics: list[str]) -> list[dict[str, Any]]:
        return [{"topic": name, "error_code": 5, "partitions": []} for name in topics]

    with monkeypatch.context() as m:
        m.setattr(worker._admin, "describe_topics", electing)
        with pytest.raises(Unavailable) as err:
            await worker.publish_reply(address, b"reply")
    assert err.value.retriable


async def test_a_failed_shared_reply_is_an_error_to_retry_not_a_drop(
    kafka: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown topic or a missing leader while publishing a reply is
    transient: the worker must retry or give the request back, so the error
    reaches it (the reply is not dropped as if the inbox were gone)."""
    client, worker = await kafka(), await kafka()
    address = await client.open_inbox(lambda _b: None)

    async def unknown_topic(*args: Any, **kwargs: Any) -> None:
        raise ModelNotFound("no topic 'fleet.replies'")

    monkeypatch.setattr(worker, "_send", unknown_topic)
    with pytest.raises(Unavailable) as err:
        await worker.publish_reply(address, b"reply")
    assert err.value.retriable


async def test_reply_to_a_closed_inbox_is_dropped(kafka: Connect) -> None:
    client, worker = await kafka(), await kafka()
    address = await client.open_inbox(lambda _b: None)
    await client.close()
    await asyncio.wait_for(worker.publish_reply(address, b"late"), 10)
    await asyncio.wait_for(worker.publish_reply(new_reply_address(), b"late"), 10)


async def test_every_heartbeat_subscriber_sees_every_beat(kafka: Connect) -> None:
    a, b, worker = await kafka(), await kafka(), await kafka()
    seen_a: list[bytes] = []
    seen_b: list[bytes] = []
    await a.subscribe_heartbeats(seen_a.append)
    await b.subscribe_heartbeats(seen_b.append)
    await worker.publish_heartbeat(b'{"beat": 1}')
    await eventually(lambda: b'{"beat": 1}' in seen_a and b'{"beat": 1}' in seen_b, timeout=10)


# --------------------------------------------------------------------------- metadata


async def test_no_client_asks_for_the_metadata_of_every_topic(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka refreshes the metadata of every topic in the cluster while a
    client tracks none; on a cluster of thousands of topics that is a large
    response, parsed in one step of the caller's event loop. Every client a
    transport runs must ask only for the topics it uses, also on the refresh
    that follows an error."""
    from aiokafka.client import AIOKafkaClient

    asked: list[tuple[AIOKafkaClient, list[str] | None]] = []
    made: list[AIOKafkaClient] = []
    real_update, real_init = AIOKafkaClient._metadata_update, AIOKafkaClient.__init__

    async def spy(self: AIOKafkaClient, cluster: Any, topics: Any) -> Any:
        asked.append((self, sorted(topics) if topics else None))
        return await real_update(self, cluster, topics)

    def init(self: AIOKafkaClient, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(AIOKafkaClient, "_metadata_update", spy)
    monkeypatch.setattr(AIOKafkaClient, "__init__", init)
    client, worker = await kafka(partitions=2), await kafka(partitions=2)
    await worker.declare_model(unique_model)
    await worker.consume(unique_model, ONLINE, collector([]), prefetch=4)
    await client.open_inbox(lambda body: None)
    await client.publish_request(unique_model, ONLINE, b"x")
    await client.depth(unique_model)
    # what a lost connection does: every client refreshes its metadata
    await asyncio.gather(*(c.force_metadata_update() for c in made))
    everything = [c for c, topics in asked if topics is None]
    assert not everything, f"{len(everything)} metadata requests for every topic"
    assert {c for c, _ in asked} == set(made)  # every client was made to refresh


# --------------------------------------------------------------------------- restart


@pytest.mark.faults
async def _retrying(publish: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    """``publish`` again after each retriable error, as a caller would, for ``timeout`` s."""
    end = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await publish()
            return
        except FleetError as exc:
            if not exc.retriable or asyncio.get_running_loop().time() > end:
                raise
            await asyncio.sleep(0.5)


@pytest.mark.exclusive
async def test_reconnect_listener_fires_after_a_broker_restart(
    kafka: Connect, unique_model: str
) -> None:
    cmd = os.environ.get("FLEET_TEST_KAFKA_RESTART")
    if not cmd:
        missing("FLEET_TEST_KAFKA_RESTART is not set: cannot restart the broker")
    assert cmd is not None
    client, worker = await kafka(partitions=2), await kafka(partitions=2)
    await worker.declare_model(unique_model)
    got: list[Delivery] = []
    await worker.consume(unique_model, ONLINE, collector(got), prefetch=4)
    replies: list[bytes] = []
    address = await client.open_inbox(replies.append)
    fired: list[int] = []
    client.add_reconnect_listener(lambda: fired.append(1))

    proc = await asyncio.create_subprocess_shell(
        cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(proc.wait(), 100) == 0

    await eventually(lambda: len(fired) == 1, timeout=30)
    assert client.connected
    # the inbox and the consumer work again, at the same address; a publish
    # while the restarted broker still elects its leaders fails retriably
    await _retrying(lambda: worker.publish_reply(address, b"after restart"))
    await _retrying(lambda: client.publish_request(unique_model, ONLINE, b"after restart"))
    # (at least once: a publish that timed out may have landed too)
    await eventually(lambda: set(replies) == {b"after restart"}, timeout=30)
    await eventually(lambda: {d.body for d in got} == {b"after restart"}, timeout=40)
    await asyncio.sleep(1.0)
    assert fired == [1]  # once


async def test_a_broken_connection_makes_the_transport_ask_the_broker_at_once(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that restarts between two probes fails no call of ours (aiokafka
    reconnects by itself), yet the consumers' in-flight records and the
    clients' unanswered requests must be dealt with. Every connection that
    breaks therefore has the transport probe the broker at once."""
    from aiokafka.conn import CloseReason

    from fleet.transport import kafka as kafka_transport
    from fleet.transport._kafka_consumer import GroupConsumer

    monkeypatch.setattr(kafka_transport, "_HEALTHY_PROBE_INTERVAL", 3600.0)  # no routine probe
    t = await kafka()
    assert isinstance(t, KafkaTransport)
    probed = asyncio.Event()

    async def probe() -> bool:
        probed.set()
        return True

    monkeypatch.setattr(t, "_probe", probe)
    await t.declare_model(unique_model)
    await t.consume(unique_model, ONLINE, collector([]), prefetch=4)
    group = next(c for c in t._consumers if isinstance(c, GroupConsumer))
    assert group._kafka is not None
    clients = (t._admin._client, t._offsets._client, group._kafka._client)
    for client in clients:
        probed.clear()
        await client.force_metadata_update()  # at least one connection open
        conns = [c for c in client._conns.values() if c.connected()]
        assert conns, client
        conns[0].close(reason=CloseReason.IDLE_DROP)  # aiokafka's own: no probe
        await asyncio.sleep(0.05)
        assert not probed.is_set()
        await client.force_metadata_update()
        conns = [c for c in client._conns.values() if c.connected()]
        conns[0].close(reason=CloseReason.CONNECTION_BROKEN)
        await asyncio.wait_for(probed.wait(), 30)
    # the data path's own connections: a close of ours is no break, a lost one is
    assert t.wire is not None
    await t.publish_request(unique_model, ONLINE, b"x")  # a produce connection open
    for conn in list(t.wire._conns.values()):
        probed.clear()
        conn.close()
        await asyncio.sleep(0.05)
        assert not probed.is_set()
    await t.publish_request(unique_model, ONLINE, b"x")
    probed.clear()
    conn = next(c for c in t.wire._conns.values() if not c.closed)
    conn.abort(ConnectionResetError("reset"))
    await asyncio.wait_for(probed.wait(), 30)
    assert t.connected


async def test_a_consumer_closed_while_a_failed_fetch_waits_out_its_backoff_closes(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the broker is away, each of aiokafka's fetches fails and then
    sleeps its retry backoff. aiokafka's ``stop()`` cancels that sleep and lets
    the cancellation out before it closes the consumer's connections; the
    transport's close must still end, with every client stopped. Here the
    fetch in flight fails on a broken connection, and its backoff is long
    enough to be under way when the transport closes."""
    from aiokafka.client import ConnectionGroup
    from aiokafka.conn import CloseReason

    from fleet.transport._kafka_consumer import GroupConsumer

    t = await kafka(partitions=2, data_path="aiokafka")  # aiokafka's fetches
    await t.declare_model(unique_model)
    await t.consume(unique_model, ONLINE, collector([]), prefetch=4)
    group = next(c for c in t._consumers if isinstance(c, GroupConsumer))
    assert group._kafka is not None
    consumer, fetcher = group._kafka, group._kafka._fetcher

    def fetching() -> bool:  # a fetch waits on the broker
        return any(
            not task.done() and task.get_coro().__qualname__ == "Fetcher._proc_fetch_request"
            for task in fetcher._pending_tasks
        )

    await eventually(fetching, timeout=30)
    failed = asyncio.Event()
    monkeypatch.setattr(fetcher, "_retry_backoff", 3600.0)
    monkeypatch.setattr(  # called just before the backoff's sleep
        fetcher, "_invalidate_preferred_read_replica_for_node", lambda *a: failed.set()
    )
    for (_, kind), conn in list(consumer._client._conns.items()):
        if kind == ConnectionGroup.DEFAULT:  # the fetches', not the group's
            conn.close(reason=CloseReason.CONNECTION_BROKEN)
    await asyncio.wait_for(failed.wait(), 30)
    await asyncio.sleep(0)  # into the sleep
    admin, producer = t._admin, t._producer
    assert admin is not None and producer is not None and t.wire is None
    closing = asyncio.ensure_future(t.close())
    await asyncio.wait({closing}, timeout=60)
    assert closing.done(), "the close did not end"
    assert not closing.cancelled(), "a cancellation not the caller's ended the close"
    assert closing.exception() is None
    for client in (consumer._client, admin._client, producer.client):
        assert not [c for c in client._conns.values() if c.connected()], client


async def test_a_transport_closed_while_its_own_fetches_wait_to_reconnect_closes(
    kafka: Connect, unique_model: str
) -> None:
    """The same on the transport's own fetches: a fetch that lost its
    connection waits ``reconnect_interval`` before it reconnects; a close
    meanwhile ends at once, with every connection closed."""
    from fleet.transport._kafka_consumer import GroupConsumer

    t = await kafka(partitions=2, reconnect_interval=3600.0)
    await t.declare_model(unique_model)
    await t.consume(unique_model, ONLINE, collector([]), prefetch=4)
    await t.open_inbox(lambda _b: None)
    group = next(c for c in t._consumers if isinstance(c, GroupConsumer))
    wire = t.wire
    assert wire is not None and group._fetcher is not None
    await eventually(lambda: group.fetches > 0 and len(wire._conns) >= 3, timeout=30)
    for (_, role), conn in list(wire._conns.items()):
        if role.startswith("fetch-"):
            conn.abort(ConnectionResetError("reset"))
    await asyncio.sleep(0.05)  # into the wait
    await asyncio.wait_for(t.close(), 30)
    assert wire.closed and not wire._conns


async def test_a_close_that_fails_on_the_way_still_stops_every_client(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.transport._kafka_consumer import GroupConsumer

    t = await kafka(partitions=2)
    await t.declare_model(unique_model)
    await t.consume(unique_model, ONLINE, collector([]), prefetch=4)
    group = next(c for c in t._consumers if isinstance(c, GroupConsumer))
    shutdown = group.shutdown

    async def failing(**kwargs: Any) -> None:
        await shutdown(**kwargs)
        raise RuntimeError("shutdown failed")

    monkeypatch.setattr(group, "shutdown", failing)
    admin, wire, offsets = t._admin, t.wire, t._offsets
    assert admin is not None and wire is not None and offsets is not None
    await t.publish_request(unique_model, ONLINE, b"x")  # a produce connection open
    with pytest.raises(RuntimeError, match="shutdown failed"):
        await t.close()
    for client in (admin._client, offsets._client):
        assert not [c for c in client._conns.values() if c.connected()], client
    assert wire.closed and not wire._conns
    assert not t.connected


async def test_a_probe_passes_over_a_broker_that_is_down(
    kafka: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One broker of a cluster restarting is not the cluster gone: the probe
    asks each known broker in turn until one answers. Here the cluster's
    metadata names a broker (id 0) on a port where nothing listens, ahead of
    the real one."""
    import socket

    from aiokafka.structs import BrokerMetadata

    t = await kafka()
    assert isinstance(t, KafkaTransport)
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = t._admin._client.cluster
    real = cluster.brokers()
    assert all(b.nodeId != 0 for b in real)
    dead = BrokerMetadata(0, "127.0.0.1", port, None)
    known = cluster.broker_metadata
    monkeypatch.setattr(cluster, "brokers", lambda: {dead, *real})
    monkeypatch.setattr(cluster, "broker_metadata", lambda i: dead if i == 0 else known(i))
    assert await t._probe()
    monkeypatch.setattr(cluster, "brokers", lambda: {dead})
    assert not await t._probe()


# --------------------------------------------------------------------------- cancellation


async def _unclosed_after(step: Callable[[], Awaitable[object]], delay: float) -> list[str]:
    """Run ``step``, cancel it after ``delay`` seconds, collect garbage, and
    return the resource warnings that followed (unclosed sockets, clients)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = asyncio.ensure_future(step())
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("step", ["connect", "open_inbox", "consume"])
async def test_cancelling_a_start_at_any_moment_leaves_no_socket_open(
    kafka_url: str, kafka: Connect, unique_model: str, step: str
) -> None:
    """aiokafka's bootstrap holds a connection nothing else owns: cancelling a
    start there leaked the socket. Cancel each start at every millisecond of
    its first 30 (where loopback's bootstrap and group join happen), then every
    5 ms up to 60, and require that nothing is left open, and that the
    transport still works afterwards."""
    ready = await kafka()
    await ready.declare_model(unique_model)
    leaks: dict[float, list[str]] = {}
    for ms in [*range(30), *range(30, 61, 5)]:
        delay = ms / 1000
        fresh = connect(kafka_url)
        assert isinstance(fresh, KafkaTransport)
        steps: dict[str, Callable[[], Awaitable[object]]] = {
            "connect": fresh.connect,
            "open_inbox": lambda: ready.open_inbox(lambda _b: None),
            "consume": lambda: ready.consume(unique_model, ONLINE, collector([]), prefetch=4),
        }
        found = await _unclosed_after(steps[step], delay)
        await fresh.close()
        if found:
            leaks[delay] = found
    assert not leaks, f"cancelled {step} left resources open: {leaks}"
    replies: list[bytes] = []
    address = await ready.open_inbox(replies.append)
    await ready.publish_reply(address, b"still works")
    await eventually(lambda: replies == [b"still works"])


async def test_a_second_stop_waits_until_the_consumer_has_left(
    kafka: Connect, unique_model: str
) -> None:
    """A drain finishing while the transport closes stops the same consumer
    twice at once: the second call must not return before the consumer has
    really left (else the transport closes around a half-stopped consumer
    whose socket nobody closes)."""
    t = await kafka()
    await t.declare_model(unique_model)
    group = await t.consume(unique_model, ONLINE, collector([]), prefetch=4)
    tail = await t.subscribe_heartbeats(lambda _b: None)
    pairs: tuple[tuple[Any, str], ...] = ((group, "shutdown"), (tail, "cancel"))
    for consumer, stop in pairs:
        first = asyncio.ensure_future(getattr(consumer, stop)())
        await asyncio.sleep(0)  # the first stop is under way
        await getattr(consumer, stop)()
        stopped = consumer._kafka._closed if stop == "shutdown" else consumer._wire._closed
        assert stopped, f"second {stop}() returned before the client stopped"
        await first
    assert t.wire is not None and not [k for k in t.wire._conns if k[1].startswith("fetch-")]


# --------------------------------------------------------------------------- idle


async def test_idle_consumers_poll_seldom_and_a_record_still_wakes_them_at_once(
    kafka: Connect, unique_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a fetch that brought nothing, a consumer's next one waits
    ``FETCH_IDLE_POLL_MS``; a record that arrives meanwhile ends that wait.
    With the wait set to a minute, an idle group consumer and tail consumer
    (an inbox on a topic of its own: nothing else writes there) each fetch a
    few times in two seconds, not twenty, and records published then are
    taken long before the minute is up."""
    from fleet.transport import _kafka_consumer
    from fleet.transport._kafka_consumer import GroupConsumer

    monkeypatch.setattr(_kafka_consumer, "FETCH_IDLE_POLL_MS", 60_000)
    t = await kafka(partitions=1, inbox="topic")
    await t.declare_model(unique_model)
    got: list[Delivery] = []
    replies: list[bytes] = []
    group = await t.consume(unique_model, ONLINE, collector(got), prefetch=4)
    address = await t.open_inbox(replies.append)
    tail = t._inboxes[address]
    assert isinstance(group, GroupConsumer)
    before = (group.fetches, tail.fetches)
    await asyncio.sleep(2.0)
    polls = (group.fetches - before[0], tail.fetches - before[1])
    assert max(polls) <= 2, polls  # 100 ms polls would make about twenty each
    await t.publish_request(unique_model, ONLINE, b"wake up")
    await t.publish_reply(address, b"reply")
    await eventually(lambda: len(got) == 1 and replies == [b"reply"], timeout=20)
