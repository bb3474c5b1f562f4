"""The Kafka protocol's produce and fetch (``fleet.transport._kafka_wire``)
against a real broker: sends of one turn in one request, keys, headers and
offsets, sends kept in call order while the first wait for metadata (and
no other partition's held up by them), tails positioned at the end, pause
and resume, a fetch buffer that fills and makes room again, a lost
connection on either side, unknown topics, and a response nobody asked for."""

from __future__ import annotations

import asyncio
import io
import struct
import types
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any, cast

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.fetch import FetchRequest_v7, FetchResponse_v7
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from fleet import eventloop
from fleet.transport._kafka_wire import (
    FETCH,
    METADATA,
    QUIET_S,
    Cluster,
    Connection,
    Fetcher,
    Producer,
    Reader,
    Tail,
    Topic,
    TopicUnknown,
    _Session,
    metadata_request,
    offset_commit_errors,
    offset_commit_request,
    parse_metadata,
    string,
)
from tests.conftest import BROKERS
from tests.transport.kafka_support import eventually

pytestmark = BROKERS["kafka"].mark


@pytest.fixture
async def topic(admin: AIOKafkaAdminClient) -> AsyncIterator[str]:
    """A new topic with three partitions."""
    name = f"wire-test-{uuid.uuid4().hex[:10]}"
    await admin.create_topics([NewTopic(name, 3, 1)])
    yield name
    await admin.delete_topics([name])


@pytest.fixture
async def cluster(kafka_url: str) -> AsyncIterator[Cluster]:
    breaks: list[int] = []
    c = Cluster(
        [kafka_url.removeprefix("kafka://")],
        client_id="wire-test",
        ssl_context=None,
        timeout=10.0,
        on_break=lambda: breaks.append(1),
    )
    c.breaks = breaks  # type: ignore[attr-defined]
    yield c
    await c.close()


async def _producer(cluster: Cluster) -> Producer:
    producer = Producer(cluster, timeout_ms=10_000)
    await producer.start()
    return producer


async def _tail(cluster: Cluster, topic: str, got: list[Any], parts: list[int]) -> Tail:
    tail = Tail(cluster, topic, parts, got.append, max_wait_ms=500, retry_interval=0.1)
    await tail.start()
    return tail


async def test_sends_of_one_turn_behind_the_first_go_in_one_request_in_order(
    cluster: Cluster, topic: str
) -> None:
    """The first send of the turn finds the connection quiet and goes at once;
    the other nineteen, made while it is in flight, go in one request."""
    producer = await _producer(cluster)
    got: list[Any] = []
    await _tail(cluster, topic, got, [0, 1, 2])
    before = producer.requests
    sent = await asyncio.gather(
        *(
            producer.send(topic, b"v%d" % i, key=b"k", partition=1, headers=[("h", b"%d" % i)])
            for i in range(20)
        )
    )
    assert producer.requests - before == 2
    assert [s.offset for s in sent] == list(range(sent[0].offset, sent[0].offset + 20))
    assert {s.partition for s in sent} == {1}
    await eventually(lambda: len(got) == 20)
    assert [r.value for r in got] == [b"v%d" % i for i in range(20)]
    assert [r.headers for r in got] == [[("h", b"%d" % i)] for i in range(20)]
    assert {r.key for r in got} == {b"k"}
    assert [r.offset for r in got] == [s.offset for s in sent]


async def _first_send_held_in_metadata(
    cluster: Cluster, topic: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Producer, asyncio.Future[Any], asyncio.Event]:
    """A producer with its connection open whose send to partition 0 waits
    for the topic's metadata until the event is set; the metadata is known
    again meanwhile (by another way), so later sends need not wait."""
    producer = await _producer(cluster)
    await producer.send(topic, b"warm", partition=0)  # a produce connection is open
    cluster.forget(topic)
    gate = asyncio.Event()
    lookup = cluster.topic

    async def slow_lookup(name: str) -> Any:
        await gate.wait()
        return await lookup(name)

    monkeypatch.setattr(cluster, "topic", slow_lookup)
    first = asyncio.ensure_future(producer.send(topic, b"first", partition=0))
    await asyncio.sleep(0)  # the first send now waits for the topic's metadata
    await cluster.refresh([topic])
    return producer, first, gate


async def test_a_send_that_waits_for_metadata_keeps_its_place_before_later_sends(
    cluster: Cluster, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, first, gate = await _first_send_held_in_metadata(cluster, topic, monkeypatch)
    second = asyncio.ensure_future(producer.send(topic, b"second", partition=0))
    await asyncio.sleep(0.2)  # room for the second send to go out on its own
    gate.set()
    sent = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert sent[0].offset < sent[1].offset


async def test_a_send_that_waits_holds_up_no_send_to_another_partition(
    cluster: Cluster, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, first, gate = await _first_send_held_in_metadata(cluster, topic, monkeypatch)
    other = await asyncio.wait_for(producer.send(topic, b"other", partition=1), 10)
    assert other.partition == 1 and not first.done()
    gate.set()
    assert (await asyncio.wait_for(first, 10)).partition == 0


async def test_a_send_that_times_out_while_it_waits_is_never_written(
    cluster: Cluster, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer, first, gate = await _first_send_held_in_metadata(cluster, topic, monkeypatch)
    # queued behind the first, which waits on the gate; the send's own deadline
    # ends it (asyncio.wait's bound raises nothing, so it cannot stand in for it)
    late = asyncio.ensure_future(producer.send(topic, b"late", partition=0, timeout=0.2))
    await asyncio.wait({late}, timeout=10)
    assert late.done() and isinstance(late.exception(), TimeoutError)
    gate.set()
    sent = await asyncio.wait_for(first, 10)
    after = await asyncio.wait_for(producer.send(topic, b"after", partition=0, timeout=10), 10)
    assert after.offset == sent.offset + 1  # nothing of "late" between them


async def test_a_tail_starts_at_the_end_and_keeps_its_place_while_paused(
    cluster: Cluster, topic: str
) -> None:
    producer = await _producer(cluster)
    await producer.send(topic, b"before", partition=0)
    got: list[Any] = []
    tail = await _tail(cluster, topic, got, [0])
    tail.pause()
    await producer.send(topic, b"while paused", partition=0)
    await asyncio.sleep(0.7)  # a fetch under way when paused may bring it: both are fine
    tail.resume()
    await producer.send(topic, b"after", partition=0)
    await eventually(lambda: [r.value for r in got][-1:] == [b"after"])
    assert [r.value for r in got] == [b"while paused", b"after"]


async def test_a_full_fetch_buffer_stops_fetching_until_a_take_makes_room(
    cluster: Cluster, topic: str
) -> None:
    producer = await _producer(cluster)
    await asyncio.gather(*(producer.send(topic, b"r%d" % i, partition=0) for i in range(6)))
    fetcher = Fetcher(cluster, topic, max_wait_ms=200, retry_interval=0.1, buffer_limit=4)
    await fetcher.assign({0: None})  # from the start of the partition
    try:
        assert await fetcher.wait(5000)
        await eventually(lambda: fetcher.tail._paused)  # full: no more fetches
        fetches = fetcher.tail.fetches
        await asyncio.gather(*(producer.send(topic, b"r%d" % i, partition=0) for i in range(6, 12)))
        await asyncio.sleep(0.5)
        assert fetcher.tail.fetches == fetches  # the later six wait for room
        taken: list[bytes] = []
        while len(taken) < 12:
            assert await fetcher.wait(5000)
            taken += [r.value for rs in fetcher.take(3).values() for r in rs]
        assert taken == [b"r%d" % i for i in range(12)]
        assert not fetcher.tail._paused  # room again: fetching goes on
    finally:
        await fetcher.stop()


class _HeldConnection:
    """A produce connection that keeps what is sent on it, quiet when told."""

    def __init__(self) -> None:
        self.idle = False
        self.sent: list[Any] = []
        self.asked: list[float] = []

    def quiet(self, for_s: float) -> bool:
        self.asked.append(for_s)
        return self.idle

    def send(self, api_key: int, version: int, body: bytes, on_response: Any) -> None:
        self.sent.append(on_response)


async def test_a_connection_idle_again_takes_the_sends_gathered_for_it_first() -> None:
    """A send waits behind a request in flight; the response comes in, and a
    send in that same turn goes out at once: with the one that waited, ahead
    of it, in one request."""
    conn = _HeldConnection()
    cluster = types.SimpleNamespace(
        topics={"t": Topic({0: 1})}, open_connection=lambda _leader, _role: conn
    )
    producer = Producer(cast(Cluster, cluster), timeout_ms=1000)
    producer._stale = False  # a producer id is known
    first = _sent_in_this_turn(producer, b"1")
    assert conn.sent == []  # gathered: a request is in flight
    conn.idle = True
    second = _sent_in_this_turn(producer, b"2")
    (on_response,) = conn.sent
    (batch,) = on_response.args[0]
    assert batch[:2] == ("t", 0) and [value for _k, value, _h, _f in batch[2]] == [b"1", b"2"]
    await asyncio.sleep(0)  # the end of the turn: nothing is left to send
    assert len(conn.sent) == 1 and producer.requests == 1
    assert set(conn.asked) == {QUIET_S}
    first.close()
    second.close()


def _sent_in_this_turn(producer: Producer, value: bytes) -> Coroutine[Any, Any, Any]:
    """A send run here up to where it waits for its answer."""
    send = producer.send("t", value, partition=0)
    send.send(None)
    return send


async def test_a_send_after_its_connection_broke_is_sent_again_with_a_new_producer_id(
    cluster: Cluster, topic: str
) -> None:
    producer = await _producer(cluster)
    await producer.send(topic, b"one", partition=2)
    first_id = producer._pid
    conn = next(c for (_, role), c in cluster._conns.items() if role == "produce")
    sending = asyncio.ensure_future(producer.send(topic, b"two", partition=2))
    await asyncio.sleep(0)  # queued; the flush runs in the next turn
    conn.abort(ConnectionResetError("reset"))  # its batch's fate unknown
    sent = await asyncio.wait_for(sending, 20)
    assert sent.partition == 2
    assert producer._pid != first_id  # sequences restart under a new id: no gap
    assert cluster.breaks  # type: ignore[attr-defined]
    got: list[Any] = []
    await _tail(cluster, topic, got, [2])
    third = await producer.send(topic, b"three", partition=2)
    await eventually(lambda: len(got) == 1)
    assert got[0].offset == third.offset


async def test_a_tail_whose_connection_broke_reads_on_from_where_it_was(
    cluster: Cluster, topic: str
) -> None:
    producer = await _producer(cluster)
    got: list[Any] = []
    tail = await _tail(cluster, topic, got, [0])
    await producer.send(topic, b"a", partition=0)
    await eventually(lambda: len(got) == 1)
    fetching = [c for (_, role), c in cluster._conns.items() if role.startswith("fetch-")]
    assert fetching
    fetching[0].abort(ConnectionResetError("reset"))
    await producer.send(topic, b"b", partition=0)
    await eventually(lambda: len(got) == 2)
    assert [r.value for r in got] == [b"a", b"b"]
    await tail.stop()
    assert not [k for k in cluster._conns if k[1].startswith("fetch-")]


async def test_an_unknown_topic_or_partition_fails_after_a_short_grace(
    cluster: Cluster, topic: str
) -> None:
    producer = await _producer(cluster)
    with pytest.raises(TopicUnknown):
        await asyncio.wait_for(producer.send(f"{topic}-nope", b"x"), 5)
    with pytest.raises(TopicUnknown):
        await asyncio.wait_for(producer.send(topic, b"x", partition=7), 5)


async def test_a_response_to_no_request_ends_the_connection_and_fails_what_waits(
    kafka_url: str,
) -> None:
    host, port = kafka_url.removeprefix("kafka://").split(":")
    conn = await Connection.open(host, int(port), client_id="wire-test")
    waiting = conn.call(METADATA, 4, metadata_request([]))  # the frame below comes first
    conn.data_received(b"\x00\x00\x00\x04\x7f\xff\xff\xff")  # correlation id nobody used
    with pytest.raises(KafkaConnectionError):
        await waiting
    assert conn.closed
    await conn.wait_closed()


def _fetch_response(session_id: int, *partitions: bytes, error: int = 0) -> bytes:
    """A Fetch v7 response of topic ``t`` naming these partitions."""
    head = struct.pack(">ihii", 0, error, session_id, 1)  # throttle, error, session, one topic
    return b"".join((head, string("t"), struct.pack(">i", len(partitions)), *partitions))


def test_a_fetch_response_is_read_partition_by_partition() -> None:
    """Each partition's head (with aborted transactions to skip), its high
    watermark and its records, at the offsets the batch gives them."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, value in enumerate([b"a", b"b", b"c"]):
        builder.append(i, None, None, value, [])
    batch = struct.pack(">q", 5) + bytes(builder.build())[8:]  # base offset 5
    body = _fetch_response(
        7,
        struct.pack(">ihqqqii", 0, 0, 3, 3, 0, -1, -1),  # no transactions, no records
        struct.pack(">ihqqqi", 1, 0, 8, 8, 0, 2)
        + bytes(32)  # two aborted transactions (producer id, first offset)
        + struct.pack(">i", len(batch))
        + batch,
        struct.pack(">ihqqqii", 2, 0, 4, 4, 0, 0, 0),  # an empty list, empty records
    )
    got: list[Any] = []
    tail = Tail(None, "t", [0, 1, 2], got.append)  # type: ignore[arg-type]
    tail.positions = {0: 3, 1: 6, 2: 4}  # the record at 5 was read before
    session = _Session()
    framed = Reader(struct.pack(">i", 17) + body)  # as a connection hands it on
    framed.pos = 4  # past the correlation id
    assert tail._read(framed, {}, session, True)
    assert tail.highwater == {0: 3, 1: 8, 2: 4}
    assert [(r.partition, r.offset, r.value) for r in got] == [(1, 6, b"b"), (1, 7, b"c")]
    assert tail.positions == {0: 3, 1: 8, 2: 4}
    assert (session.id, session.epoch) == (7, 1)  # the broker's session: incremental from now


def test_a_fetch_session_names_only_what_moved_and_starts_over_when_it_must() -> None:
    session = _Session()
    positions = {0: 10, 1: 20, 2: 30}
    assert session.request([0, 1, 2], positions) == ([0, 1, 2], True)
    session.answered(True, 0)  # the broker made no session: every fetch is full
    assert session.request([0, 1, 2], positions) == ([0, 1, 2], True)
    session.answered(True, 99)
    assert (session.id, session.epoch) == (99, 1)
    assert session.request([0, 1, 2], positions) == ([], False)  # nothing moved
    session.answered(False, 99)
    positions[1] = 21
    assert session.request([0, 1, 2], positions) == ([1], False)
    session.answered(False, 99)
    assert session.epoch == 3
    positions[3] = 40  # another leader's: not this session's
    assert session.request([0, 1, 2], positions) == ([], False)
    session.answered(False, 99)
    assert session.request([0, 1, 2, 3], positions) == ([0, 1, 2, 3], True)  # one joined: in full
    assert (session.id, session.epoch) == (99, 0)  # ending session 99, starting anew
    session.answered(True, 99)
    assert session.request([0, 2, 3], positions) == ([0, 2, 3], True)  # one left: in full
    session.answered(True, 100)
    session.epoch = 0x7FFFFFFF
    session.answered(False, 100)
    assert session.epoch == 1  # after the last epoch comes 1, not 0 (a full fetch's)


@pytest.mark.parametrize("error", [70, 71])
def test_a_lost_fetch_session_is_a_full_fetch_next_and_no_error(error: int) -> None:
    tail = Tail(None, "t", [0], lambda _r: None)  # type: ignore[arg-type]
    tail.positions = {0: 3}
    session = _Session(id=5, epoch=9, sent={0: 3})
    assert tail._read(Reader(_fetch_response(0, error=error)), {}, session, False)
    assert session.request([0], tail.positions) == ([0], True)
    refused = _Session(id=5, epoch=9, sent={0: 3})
    assert not tail._read(Reader(_fetch_response(0, error=29)), {}, refused, False)  # an ACL
    assert refused.epoch == 0


def test_a_fetch_request_is_the_protocols_own() -> None:
    """Byte for byte aiokafka's encoding of the same Fetch v7, full and incremental."""
    sent: list[bytes] = []
    conn = types.SimpleNamespace(send=lambda _api, _version, body, _on: sent.append(body))
    cluster = types.SimpleNamespace(open_connection=lambda _leader, _role: conn)
    tail = Tail(cluster, "t", [0, 1], lambda _r: None, max_wait_ms=500)  # type: ignore[arg-type]
    tail._leaders, tail.positions = {0: 1, 1: 1}, {0: 10, 1: 20}
    tail._fetch(1)
    tail._sessions[1].answered(True, 42)
    tail.positions[1] = 21
    tail._fetch(1)
    tail._sessions[1].answered(False, 42)
    tail._fetch(1)  # nothing moved since: no partition named
    parts = [(0, 10, -1, 16 << 20), (1, 20, -1, 16 << 20)]
    expected = [
        FetchRequest_v7(-1, 500, 1, 16 << 20, 0, 0, 0, [("t", parts)], []),
        FetchRequest_v7(-1, 500, 1, 16 << 20, 0, 42, 1, [("t", [(1, 21, -1, 16 << 20)])], []),
        FetchRequest_v7(-1, 500, 1, 16 << 20, 0, 42, 2, [], []),
    ]
    assert sent == [bytes(e.encode()) for e in expected]


async def test_a_fetch_session_names_only_partitions_with_news_and_outlives_its_loss(
    cluster: Cluster, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real broker: after the first, full fetch of the topic's three
    partitions, a response names only the partition a record went to, and
    the next request only that partition; a session the broker no longer
    knows is started anew, nothing missed and nothing read twice."""
    seen: list[tuple[Any, Any]] = []  # (request, response) of each fetch, decoded
    send = Connection.send

    def spy(self: Connection, api: int, version: int, body: bytes, on_response: Any) -> None:
        if api != FETCH:
            return send(self, api, version, body, on_response)
        request = FetchRequest_v7.SCHEMA.decode(io.BytesIO(body))

        def answered(r: Any) -> None:
            if isinstance(r, Reader):
                seen.append((request, FetchResponse_v7.SCHEMA.decode(io.BytesIO(r.buf[4:]))))
            on_response(r)

        return send(self, api, version, body, answered)

    monkeypatch.setattr(Connection, "send", spy)
    producer = await _producer(cluster)
    got: list[Any] = []
    tail = await _tail(cluster, topic, got, [0, 1, 2])
    await eventually(lambda: len(seen) >= 1)  # the full fetch (names them all), answered
    first = (await producer.send(topic, b"a", partition=1)).offset
    await eventually(lambda: len(got) == 1)
    await producer.send(topic, b"b", partition=1)
    await eventually(lambda: len(got) == 2)

    requests = [[p[0] for _t, parts in rq[7] for p in parts] for rq, _ in seen]
    responses = [[p[0] for _t, parts in rs[3] for p in parts] for _, rs in seen]
    assert seen[0][0][5:7] == (0, 0) and requests[0] == [0, 1, 2]  # a full fetch, a new session
    session_id = seen[0][1][2]
    assert session_id != 0
    with_records = [
        i for i, (_, rs) in enumerate(seen) if any(p[-1] for _t, ps in rs[3] for p in ps)
    ]
    assert [responses[i] for i in with_records] == [[1], [1]]  # only the partition with news
    after = with_records[0] + 1
    assert requests[after] == [1]  # only the one that moved, at its new position
    assert seen[after][0][7][0][1][0][1] == first + 1
    assert all(rq[5] == session_id for rq, _ in seen[1:])
    (session,) = tail._sessions.values()
    session.id = 0x7FFF0000  # a session the broker never made
    await eventually(lambda: any(rs[1] == 70 for _, rs in seen))  # FETCH_SESSION_ID_NOT_FOUND
    await producer.send(topic, b"c", partition=2)
    await eventually(lambda: len(got) == 3)
    assert [r.value for r in got] == [b"a", b"b", b"c"]
    lost = next(i for i, (_, rs) in enumerate(seen) if rs[1] == 70)
    assert seen[lost + 1][0][5:7] == (0x7FFF0000, 0)  # in full, ending the unknown session
    assert sorted(p[0] for _t, parts in seen[lost + 1][0][7] for p in parts) == [0, 1, 2]
    await tail.stop()


def test_metadata_is_read_field_by_field() -> None:
    body = bytes.fromhex(
        "00000000"  # throttle
        "00000001"
        "00000001"
        "0009"
        "3132372e302e302e31"
        "00002384"
        "ffff"  # broker 1
        "ffff"
        "00000001"  # cluster id, controller
        "00000001"
        "0000"
        "0001"
        "74"
        "00"  # topic "t"
        "00000002"
        "0000"
        "00000000"
        "00000001"
        "00000001"
        "00000001"
        "00000001"
        "00000001"
        "0000"
        "00000001"
        "ffffffff"
        "00000000"
        "00000000"  # no leader now
    )
    brokers, topics = parse_metadata(Reader(body))
    assert brokers == {1: ("127.0.0.1", 9092)}
    assert topics["t"].partitions == {0: 1, 1: -1}  # type: ignore[union-attr]


def test_an_offset_commit_is_the_protocols_own_and_its_refusals_are_read_back() -> None:
    """OffsetCommit v2, byte for byte as aiokafka's protocol classes encode
    it; of its response, only the partitions with an error come back."""
    from aiokafka.protocol.commit import OffsetCommitRequest_v2, OffsetCommitResponse_v2

    offsets = {("a", 0): (5, "fa1:9=1"), ("b", 2): (7, ""), ("a", 1): (0, "m")}
    ours = offset_commit_request("g", 3, "member-1", offsets)
    theirs = OffsetCommitRequest_v2(
        "g", 3, "member-1", -1, [("a", [(0, 5, "fa1:9=1"), (1, 0, "m")]), ("b", [(2, 7, "")])]
    ).encode()
    assert ours == theirs
    response = OffsetCommitResponse_v2([("a", [(0, 0), (1, 22)]), ("b", [(2, 0)])]).encode()
    assert offset_commit_errors(Reader(response)) == {("a", 1): 22}
    assert offset_commit_errors(Reader(OffsetCommitResponse_v2([]).encode())) == {}


async def test_an_offset_commit_outside_any_group_generation_is_taken_and_read_back(
    cluster: Cluster, admin: AIOKafkaAdminClient, topic: str
) -> None:
    """A commit for a group with no members (generation -1, no member id) is
    the broker's plain offset store: taken, and read back with its metadata."""
    from aiokafka import TopicPartition
    from aiokafka.protocol.coordination import FindCoordinatorRequest_v0

    group = f"wire-commit-{uuid.uuid4().hex[:8]}"
    await cluster.refresh([topic])
    r = await cluster.call(None, 10, 0, string(group))  # FindCoordinator v0
    found = FindCoordinatorRequest_v0.RESPONSE_TYPE.decode(r.buf[r.pos :])
    assert found.error_code == 0, found
    body = offset_commit_request(group, -1, "", {(topic, 1): (3, "fa1:4=1")})
    assert await cluster.commit(found.coordinator_id, body) == {}
    committed = await admin.list_consumer_group_offsets(group)
    assert committed[TopicPartition(topic, 1)] == (3, "fa1:4=1")


async def test_a_broker_without_a_version_it_needs_is_a_config_error_naming_the_way_out(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.errors import ConfigError
    from fleet.transport import _kafka_wire

    monkeypatch.setitem(_kafka_wire.VERSIONS, _kafka_wire.PRODUCE, 99)
    with pytest.raises(ConfigError, match=r"does not take Produce v99.*data_path=aiokafka"):
        await cluster.refresh([])
    assert not cluster._conns  # the connection it opened is closed again


async def test_a_send_and_a_tail_work_on_uvloop(kafka_url: str, topic: str) -> None:
    """uvloop's transports are no ``asyncio.Transport`` subclass: the
    connections take them all the same (``fleet worker --event-loop uvloop``)."""

    async def round_trip() -> list[bytes]:
        c = Cluster(
            [kafka_url.removeprefix("kafka://")],
            client_id="wire-test",
            ssl_context=None,
            timeout=10.0,
            on_break=lambda: None,
        )
        try:
            got: list[Any] = []
            await _tail(c, topic, got, [0])
            await (await _producer(c)).send(topic, b"on uvloop", partition=0)
            await eventually(lambda: len(got) == 1)
            return [r.value for r in got]
        finally:
            await c.close()

    assert await asyncio.to_thread(eventloop.run, round_trip(), "uvloop") == [b"on uvloop"]
