"""The Kafka protocol's produce and fetch, over an asyncio ``Protocol``.

The Kafka transport's data path: requests and replies are sent and the replies
tailed on these connections instead of aiokafka's. A response is parsed in
``data_received`` and its sender's future resolved (or a fetch's records
handed on and the next fetch sent) in the same turn of the event loop that
read it: no task per connection, per request or per fetch, and sends made in
one turn go out in one produce request per broker. aiokafka keeps what is not
on a request's path (topics, groups, offsets, the probe).

What it speaks, every request in a version without tagged fields that
brokers from 2.1 on take (Kafka 4.0 dropped only older ones): Metadata v4,
Produce v3, Fetch v7 (in fetch sessions: after a first full fetch, a request
names only the partitions whose position moved and a response only those
with news, not every partition of the topic each time), ListOffsets v1,
InitProducerId v0 and OffsetCommit v2 (a group consumer's commits, with the
generation aiokafka's coordinator joined; aiokafka commits again where the
broker refuses one). Each broker is
asked at its first connection (ApiVersions); one that takes none of a
request's versions is a :class:`ConfigError` naming ``data_path=aiokafka``.
Record batches (v2, CRC-32C) are encoded and read by aiokafka's C record
builder and reader.

The producer is idempotent with ``acks=all`` like aiokafka's with
``enable_idempotence=True``: a producer id from the broker and a sequence
number per partition on every batch. A batch whose outcome is not known (an
error, a lost connection) makes the producer take a new id before its next
batch, so no sequence ever gaps. Retriable errors (a leader moving, a broker
restarting, a lost connection) are retried after ``RETRY_BACKOFF`` with fresh
metadata until the caller gives up, and a topic the metadata does not list
for ``UNKNOWN_GRACE`` (one just created may take a moment to show); the
others raise aiokafka's error for their code, so callers handle both
clients' errors alike.

No SASL: a transport with SASL keeps aiokafka's clients on every path.
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    DuplicateSequenceNumber,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from fleet.deadlines import Deadlines
from fleet.errors import ConfigError
from fleet.logging import get_logger

log = get_logger(__name__)

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 1, 2, 3, 18, 22
OFFSET_COMMIT = 8
VERSIONS = {
    PRODUCE: 3,
    FETCH: 7,
    LIST_OFFSETS: 1,
    METADATA: 4,
    INIT_PRODUCER_ID: 0,
    OFFSET_COMMIT: 2,
}
"""The version of each request this module speaks; each broker is asked
(ApiVersions) whether it takes them when first connected to."""
_NAMES = {
    PRODUCE: "Produce",
    FETCH: "Fetch",
    LIST_OFFSETS: "ListOffsets",
    METADATA: "Metadata",
    OFFSET_COMMIT: "OffsetCommit",
}
RETRY_BACKOFF = 0.1  # seconds between tries of a send that met a retriable error
UNKNOWN_GRACE = 2.0  # seconds a send waits for a topic its metadata does not list
LATEST = -1  # ListOffsets' timestamp for the end of a partition

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_HEADER = struct.Struct(">ihhi")  # size, api key, api version, correlation id
_PARTITION_FETCH = struct.Struct(">iqqi")  # partition, offset, log start (-1), max bytes
# a fetch response's partition, up to its aborted transactions: partition,
# error, high watermark, last stable offset, log start offset, aborted
# transactions (-1: none)
_PARTITION_FETCHED = struct.Struct(">ihqqqi")
_FETCHED_HEAD = struct.Struct(">ihi")  # throttle, error, fetch session id
_COMMIT_PARTITION = struct.Struct(">iq")  # partition, offset (its metadata follows)
_NO_TRANSACTION = _I16.pack(-1)

Headers = Sequence[tuple[str, bytes | None]]
OnResponse = Callable[["Reader | BaseException"], None]


def string(s: str) -> bytes:
    raw = s.encode()
    return _I16.pack(len(raw)) + raw


class Reader:
    """Reads a response's fields in order."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def i8(self) -> int:
        self.pos += 1
        return self.buf[self.pos - 1] - (256 if self.buf[self.pos - 1] > 127 else 0)

    def i16(self) -> int:
        (v,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def i32(self) -> int:
        (v,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def i64(self) -> int:
        (v,) = _I64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        self.pos += n
        return self.buf[self.pos - n : self.pos].decode()

    def bytes_(self) -> bytes | None:
        n = self.i32()
        if n < 0:
            return None
        self.pos += n
        return self.buf[self.pos - n : self.pos]


class Connection(asyncio.Protocol):
    """One connection to one broker: requests sent, responses matched to them
    in order (a broker answers a connection's requests in the order sent)."""

    def __init__(self, client_id: str, on_lost: Callable[[Connection], None] | None) -> None:
        self._client_id = string(client_id)
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: deque[tuple[int, OnResponse]] = deque()
        self._next_id = 0
        self._last_send = 0.0  # time.monotonic() of the last request sent
        self.closed = False
        self.expected_close = False
        self._gone = asyncio.get_running_loop().create_future()  # the socket closed

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        on_lost: Callable[[Connection], None] | None = None,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: cls(client_id, on_lost),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host if ssl_context is not None else None,
                ),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise KafkaConnectionError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass)
        self._transport = cast(asyncio.Transport, transport)

    def quiet(self, for_s: float) -> bool:
        """Whether no request sent on it awaits its response, and none was
        sent in the last ``for_s`` seconds."""
        return not self._pending and time.monotonic() - self._last_send > for_s

    def send(self, api_key: int, version: int, body: bytes, on_response: OnResponse) -> None:
        """Send a request; ``on_response`` gets its response's body (after the
        correlation id) or the error that ended the connection."""
        if self.closed or self._transport is None:
            on_response(KafkaConnectionError("connection closed"))
            return
        self._next_id = (self._next_id + 1) & 0x7FFFFFFF
        size = 8 + len(self._client_id) + len(body)
        head = _HEADER.pack(size, api_key, version, self._next_id)
        self._transport.write(b"".join((head, self._client_id, body)))
        self._pending.append((self._next_id, on_response))
        self._last_send = time.monotonic()

    def call(self, api_key: int, version: int, body: bytes) -> asyncio.Future[Reader]:
        future: asyncio.Future[Reader] = asyncio.get_running_loop().create_future()

        def done(result: Reader | BaseException) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.send(api_key, version, body, done)
        return future

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _I32.unpack_from(buf, pos)
            if end - pos - 4 < size:
                break
            frame = bytes(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
            if not self._deliver(frame):
                return
        if pos:
            del buf[:pos]

    def _deliver(self, frame: bytes) -> bool:
        (correlation,) = _I32.unpack_from(frame, 0)
        if not self._pending or self._pending[0][0] != correlation:
            self.abort(KafkaConnectionError(f"response to an unknown request {correlation}"))
            return False
        _, on_response = self._pending.popleft()
        reader = Reader(frame)
        reader.pos = 4
        try:
            on_response(reader)
        except Exception:
            log.exception("Kafka response handler failed")
        return True

    def abort(self, exc: BaseException) -> None:
        self._end(exc)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close; :meth:`wait_closed` waits until the socket is."""
        self.expected_close = True
        self._end(None)
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        if self._transport is not None:
            await asyncio.wait({self._gone}, timeout=timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._gone.done():
            self._gone.set_result(None)
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        """Fail what waits for a response, once."""
        if self.closed:
            return
        self.closed = True
        error = KafkaConnectionError(f"connection lost: {exc!r}")
        pending, self._pending = self._pending, deque()
        for _, on_response in pending:
            try:
                on_response(error)
            except Exception:
                log.exception("Kafka response handler failed")
        if self._on_lost is not None and not self.expected_close:
            self._on_lost(self)


class Broker(NamedTuple):
    host: str
    port: int


@dataclass
class Topic:
    partitions: dict[int, int]  # partition -> leader node (-1: none now)
    live: list[int] = field(default_factory=list)  # the partitions with a leader

    def __post_init__(self) -> None:
        self.live = [p for p, leader in self.partitions.items() if leader >= 0]


def metadata_request(topics: Sequence[str]) -> bytes:
    return b"".join(
        (_I32.pack(len(topics)), *(string(t) for t in topics), b"\x00")  # no auto-creation
    )


def parse_metadata(r: Reader) -> tuple[dict[int, Broker], dict[str, Topic | int]]:
    """Brokers by node id, and each topic's partitions' leaders (or its error code)."""
    r.i32()  # throttle
    brokers: dict[int, Broker] = {}
    for _ in range(r.i32()):
        node, host, port = r.i32(), r.string(), r.i32()
        r.string()  # rack
        brokers[node] = Broker(host or "", port)
    r.string()  # cluster id
    r.i32()  # controller
    topics: dict[str, Topic | int] = {}
    for _ in range(r.i32()):
        error, name = r.i16(), r.string() or ""
        r.i8()  # internal
        leaders: dict[int, int] = {}
        for _ in range(r.i32()):
            r.i16()  # partition error (leader -1 says the same)
            partition, leader = r.i32(), r.i32()
            for _ in range(2):  # replicas, in-sync replicas
                n = r.i32()
                r.pos += 4 * n
            leaders[partition] = leader
        topics[name] = error if error else Topic(leaders)
    return brokers, topics


def offset_commit_request(
    group: str, generation: int, member: str, offsets: Mapping[tuple[str, int], tuple[int, str]]
) -> bytes:
    """OffsetCommit v2 of ``offsets`` (offset and metadata by topic and
    partition) for ``member`` of ``group`` in ``generation``; the broker keeps
    them as long as its own retention says."""
    by_topic: dict[str, list[bytes]] = {}
    for (topic, partition), (offset, meta) in offsets.items():
        entry = _COMMIT_PARTITION.pack(partition, offset) + string(meta)
        by_topic.setdefault(topic, []).append(entry)
    parts = [string(group), _I32.pack(generation), string(member), _I64.pack(-1)]
    parts.append(_I32.pack(len(by_topic)))
    for topic, entries in by_topic.items():
        parts += (string(topic), _I32.pack(len(entries)), *entries)
    return b"".join(parts)


def offset_commit_errors(r: Reader) -> dict[tuple[str, int], int]:
    """The partitions an OffsetCommit v2 response says were not committed,
    with their error codes."""
    errors: dict[tuple[str, int], int] = {}
    for _ in range(r.i32()):
        topic = r.string() or ""
        for _ in range(r.i32()):
            partition, error = r.i32(), r.i16()
            if error:
                errors[(topic, partition)] = error
    return errors


class Cluster:
    """What the data path knows of the cluster: its brokers, the leaders of
    the topics it uses, and its connections, one per broker and role (a
    broker answers one request of a connection at a time, so a fetch waiting
    for records must not hold up the sends behind it)."""

    def __init__(
        self,
        bootstrap: Sequence[str],
        *,
        client_id: str,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        on_break: Callable[[], None] | None = None,
    ) -> None:
        self.bootstrap = [_split(b) for b in bootstrap]
        self.client_id = client_id
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.on_break = on_break
        self.brokers: dict[int, Broker] = {}
        self.topics: dict[str, Topic] = {}
        self._conns: dict[tuple[Broker, str], Connection] = {}
        self._opening: dict[tuple[Broker, str], asyncio.Future[Connection]] = {}
        self._checked: set[Broker] = set()  # brokers whose versions were checked
        self.closed = False

    def _lost(self, conn: Connection) -> None:
        if self.on_break is not None and not self.closed:
            self.on_break()

    def open_connection(self, node: int, role: str) -> Connection | None:
        """The open connection of ``role`` to broker ``node``, if there is one:
        the hot paths' lookup, with no coroutine."""
        broker = self.brokers.get(node)
        conn = self._conns.get((broker, role)) if broker is not None else None
        return conn if conn is not None and not conn.closed else None

    async def connection(self, where: Broker | int, role: str) -> Connection:
        broker = where if isinstance(where, Broker) else self.brokers.get(where)
        if broker is None:
            raise KafkaConnectionError(f"no address known for broker {where}")
        key = (broker, role)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        if self.closed:
            raise KafkaConnectionError("closed")
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(self._open(key))
            self._opening[key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)

    async def _open(self, key: tuple[Broker, str]) -> Connection:
        """Open the connection for ``key`` and keep it (so that whoever closes
        the role or the cluster closes it, also when its opener gave up)."""
        broker = key[0]
        conn = await Connection.open(
            broker.host,
            broker.port,
            client_id=self.client_id,
            ssl_context=self.ssl_context,
            timeout=self.timeout,
            on_lost=self._lost,
        )
        if self.closed:
            await close_all([conn])
            raise KafkaConnectionError("closed")
        if broker not in self._checked:
            try:
                await self._check_versions(conn, broker)
            except BaseException:
                await close_all([conn])
                raise
            self._checked.add(broker)
        self._conns[key] = conn
        return conn

    async def _check_versions(self, conn: Connection, broker: Broker) -> None:
        """A broker that does not take a request in the version this module
        speaks is a :class:`ConfigError` that names the way out."""
        r = await asyncio.wait_for(conn.call(API_VERSIONS, 0, b""), self.timeout)
        error = r.i16()
        ranges: dict[int, tuple[int, int]] = {}
        for _ in range(r.i32()):
            api, low, high = r.i16(), r.i16(), r.i16()
            ranges[api] = (low, high)
        if error:
            raise for_code(error)(f"ApiVersions from {broker.host}:{broker.port}")
        for api, version in VERSIONS.items():
            low, high = ranges.get(api, (1, 0))
            if not low <= version <= high:
                name = _NAMES.get(api, "InitProducerId")
                raise ConfigError(
                    f"the Kafka broker at {broker.host}:{broker.port} does not take {name}"
                    f" v{version} (it takes v{low}-v{high}); the transport option"
                    " data_path=aiokafka leaves every request to aiokafka"
                )

    async def drop(self, role: str | None = None) -> None:
        """Close the connections of ``role`` (every one: None), also those
        being opened."""
        openings = [t for k, t in self._opening.items() if role is None or k[1] == role]
        for opening in openings:
            opening.cancel()
        await asyncio.gather(*openings, return_exceptions=True)
        keys = [k for k in self._conns if role is None or k[1] == role]
        await close_all([self._conns.pop(k) for k in keys])

    async def call(self, where: Broker | int | None, api: int, version: int, body: bytes) -> Reader:
        """One request on the role ``meta`` connection of ``where`` (any broker
        that answers when ``None``), within the timeout."""
        if where is not None:
            conn = await self.connection(where, "meta")
            return await asyncio.wait_for(conn.call(api, version, body), self.timeout)
        error: BaseException = KafkaConnectionError("no broker known")
        for broker in [*self.brokers.values(), *self.bootstrap]:
            try:
                conn = await self.connection(broker, "meta")
                return await asyncio.wait_for(conn.call(api, version, body), self.timeout)
            except (KafkaConnectionError, TimeoutError) as exc:
                error = exc
        raise error

    async def commit(self, coordinator: int, body: bytes) -> dict[tuple[str, int], int]:
        """One OffsetCommit (``body``: :func:`offset_commit_request`) on the
        ``meta`` connection of the group's coordinator, within the timeout:
        the partitions it refused, with their error codes. A lost connection
        or the timeout raises."""
        conn = await self.connection(coordinator, "meta")
        async with asyncio.timeout(self.timeout):  # no task, unlike wait_for
            return offset_commit_errors(await conn.call(OFFSET_COMMIT, 2, body))

    async def refresh(self, topics: Sequence[str]) -> None:
        """Read the brokers and these topics' leaders afresh."""
        r = await self.call(None, METADATA, 4, metadata_request(topics))
        brokers, found = parse_metadata(r)
        if brokers:
            self.brokers = brokers
        for name, topic in found.items():
            if isinstance(topic, Topic):
                self.topics[name] = topic
            else:
                self.topics.pop(name, None)
                if topic == UnknownTopicOrPartitionError.errno:
                    raise TopicUnknown(f"topic {name!r}")
                raise for_code(topic)(f"topic {name!r}")

    async def topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            await self.refresh([name])
            topic = self.topics.get(name)
            if topic is None:
                raise TopicUnknown(f"topic {name!r}")
        return topic

    def forget(self, name: str) -> None:
        self.topics.pop(name, None)

    async def close(self) -> None:
        self.closed = True
        await self.drop()


async def close_all(conns: Sequence[Connection]) -> None:
    for conn in conns:
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn in conns))


def _split(address: str) -> Broker:
    host, _, port = address.rpartition(":")
    return Broker(host.strip("[]") or "localhost", int(port or 9092))


class Sent(NamedTuple):
    """Where a record was written (``offset`` -1: a duplicate the broker
    already had, offset not told)."""

    topic: str
    partition: int
    offset: int


_Record = tuple[bytes | None, bytes, Headers, "asyncio.Future[Sent]"]
_Batch = tuple[str, int, list[_Record]]
_DUPLICATE = DuplicateSequenceNumber.errno


class TopicUnknown(UnknownTopicOrPartitionError):  # type: ignore[misc]
    """The metadata does not list the topic (or the partition): not retried."""

    retriable = False


async def retrying(
    step: Callable[[], Awaitable[None]],
    within: float,
    *,
    unknown_too: bool = False,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """``await step()``, again after ``RETRY_BACKOFF`` while it fails
    retriably (``unknown_too``: also on a topic the metadata does not list),
    for up to ``within`` seconds or until ``stop()``."""
    deadline = time.monotonic() + within
    while True:
        try:
            await step()
            return
        except KafkaError as exc:
            again = _retriable(exc) or (unknown_too and isinstance(exc, TopicUnknown))
            if not again or time.monotonic() > deadline or stop():
                raise
        await asyncio.sleep(RETRY_BACKOFF)


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, (KafkaConnectionError, TimeoutError)) or (
        isinstance(exc, KafkaError) and bool(exc.retriable)
    )


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


QUIET_S = 0.001
"""How long a produce connection has sent nothing before a send goes out at
once rather than at the end of the turn. At everyday rates that spares a
round of the loop per send; under load sends come closer together than
this, and each turn's sends keep going out as one request."""


class Producer:
    """An idempotent producer with ``acks=all``: ``send`` resolves once every
    in-sync replica has the record. A send to a broker whose connection is
    quiet (no produce request in flight, none sent in the last
    :data:`QUIET_S`) goes out at once; other sends gather until the end of
    the turn of the event loop, and go out as one produce request per
    broker, a record batch per partition.
    Records reach a partition in the order their sends were called, also
    while the first of them wait for metadata or a connection."""

    def __init__(self, cluster: Cluster, *, timeout_ms: int) -> None:
        self.cluster = cluster
        self.timeout_ms = timeout_ms
        self._pid = -1
        self._epoch = -1
        self._stale = True  # take a (new) producer id before the next batch
        self._id_lock = asyncio.Lock()
        self._seq: dict[tuple[str, int], int] = {}
        self._queue: dict[Connection, dict[tuple[str, int], list[_Record]]] = {}
        self._flush_soon = False
        # per partition asked for (None: any), the sends waiting to learn where their record goes
        self._backlogs: dict[tuple[str, int | None], deque[_Record]] = {}
        self._routers: set[asyncio.Future[None]] = set()
        # one timer for every send's deadline, not a loop timer (and a
        # cancel) per send as asyncio.timeout would make
        self._deadlines = Deadlines()
        self._sending = 0  # sends not yet ended
        self.requests = 0  # produce requests sent

    async def start(self) -> None:
        await self._producer_id()

    async def _producer_id(self) -> None:
        async with self._id_lock:
            if self._stale:  # a coordinator still loading answers with a retriable error
                await retrying(self._take_id, self.cluster.timeout)

    async def _take_id(self) -> None:
        body = _NO_TRANSACTION + _I32.pack(60000)  # transaction timeout, unused
        r = await self.cluster.call(None, INIT_PRODUCER_ID, 0, body)
        r.i32()  # throttle
        error = r.i16()
        if error:
            raise for_code(error)("no producer id")
        self._pid, self._epoch = r.i64(), r.i16()
        self._seq.clear()
        self._stale = False

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> Sent:
        """Send one record; retriable failures are tried again until the
        caller gives up (cancels) or ``timeout`` seconds have passed
        (:class:`TimeoutError`). A send that times out may still have
        reached the broker, as one cancelled may."""
        deadline = None if timeout is None else time.monotonic() + timeout
        unknown_since: float | None = None
        self._sending += 1
        try:
            while True:
                try:
                    return await self._send_once(
                        topic, value, key, partition, headers or [], deadline
                    )
                except TopicUnknown:
                    # a topic just created: its metadata may take a moment to reach every broker
                    now = time.monotonic()
                    unknown_since = now if unknown_since is None else unknown_since
                    if now - unknown_since >= UNKNOWN_GRACE or self.cluster.closed:
                        raise
                except KafkaError as exc:
                    if not _retriable(exc) or self.cluster.closed:
                        raise
                    log.debug("Kafka send failed; retrying", topic=topic, error=repr(exc))
                except TimeoutError:
                    if self.cluster.closed or _past(deadline):  # ours: no retry
                        raise
                self.cluster.forget(topic)
                await self._back_off(deadline)
        finally:
            self._sending -= 1

    @staticmethod
    async def _back_off(deadline: float | None) -> None:
        """Wait before trying again; :class:`TimeoutError` once ``deadline`` is past."""
        left = RETRY_BACKOFF if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        await asyncio.sleep(min(RETRY_BACKOFF, left))
        if _past(deadline):
            raise TimeoutError

    send_and_wait = send  # aiokafka's name for it

    async def stop(self) -> None:
        """Stop routing sends that wait for metadata or a connection (they are
        cancelled); the cluster's connections are closed with the cluster."""
        routers, self._routers = self._routers, set()
        for router in routers:
            router.cancel()
        await asyncio.gather(*routers, return_exceptions=True)
        # the deadlines keep running: a send in a produce request under way
        # still fails at its deadline if no answer comes (a producer replaced
        # after a sequence error leaves the cluster's connections open)

    async def _send_once(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int | None,
        headers: Headers,
        deadline: float | None,
    ) -> Sent:
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        if deadline is not None:  # fails the future at the deadline, wherever the send is
            self._deadlines.add(deadline, future, self._sending)
        record = (key, value, headers, future)
        backlog = self._backlogs.get((topic, partition))
        route = None if backlog is not None else self._route(topic, partition)
        if route is not None:
            self._enqueue(route, topic, record)
        elif backlog is not None:  # behind earlier sends to the partition: keep their order
            backlog.append(record)
        else:  # metadata, a producer id or a connection to wait for first
            self._backlogs[topic, partition] = deque([record])
            router = asyncio.ensure_future(self._route_backlog(topic, partition))
            self._routers.add(router)
            router.add_done_callback(self._routers.discard)
        return await future

    async def _route_backlog(self, topic: str, partition: int | None) -> None:
        """Route the waiting sends to a partition (or to any partition of the
        topic: ``None``) one after another, in the order they were made; those
        that need no wait go in the same turn. Other partitions' sends do not
        wait for these."""
        backlog = self._backlogs[topic, partition]
        try:
            while backlog:
                record = backlog[0]
                future = record[3]
                if not future.done():  # its sender may have given up
                    try:
                        route = self._route(topic, partition)
                        route = route or await self._route_slowly(topic, partition)
                    except Exception as exc:  # the sender decides whether to retry
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        self._enqueue(route, topic, record)
                backlog.popleft()
        finally:
            del self._backlogs[topic, partition]
            for _, _, _, future in backlog:
                future.cancel()  # only when stopped

    def _route(self, topic: str, partition: int | None) -> tuple[Connection, int] | None:
        """Where a record goes, when that is known without waiting."""
        meta = self.cluster.topics.get(topic)
        if meta is None or self._stale:
            return None
        partition = self._partition(meta, topic, partition)
        conn = self.cluster.open_connection(meta.partitions[partition], "produce")
        return None if conn is None else (conn, partition)

    async def _route_slowly(self, topic: str, partition: int | None) -> tuple[Connection, int]:
        meta = self.cluster.topics.get(topic) or await self.cluster.topic(topic)
        partition = self._partition(meta, topic, partition)
        if self._stale:
            await self._producer_id()
        return await self.cluster.connection(meta.partitions[partition], "produce"), partition

    @staticmethod
    def _partition(meta: Topic, topic: str, partition: int | None) -> int:
        if partition is None:
            partition = random.choice(meta.live or list(meta.partitions))
        leader = meta.partitions.get(partition)
        if leader is None:
            raise TopicUnknown(f"no partition {partition} of {topic!r}")
        if leader < 0:
            raise for_code(5)(f"no leader for partition {partition} of {topic!r}")
        return partition

    def _enqueue(self, route: tuple[Connection, int], topic: str, record: _Record) -> None:
        conn, partition = route
        parts = self._queue.setdefault(conn, {})
        parts.setdefault((topic, partition), []).append(record)
        if conn.quiet(QUIET_S):  # nothing to gather behind: out now, with what waits for it
            del self._queue[conn]
            self._produce(conn, parts)
        elif not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        queue, self._queue = self._queue, {}
        for conn, parts in queue.items():
            self._produce(conn, parts)

    def _produce(self, conn: Connection, parts: dict[tuple[str, int], list[_Record]]) -> None:
        """One produce request on ``conn``: a record batch per partition."""
        by_topic: dict[str, list[bytes]] = {}
        batches: list[_Batch] = []
        for (topic, partition), records in parts.items():
            records = [r for r in records if not r[3].done()]  # not given up on
            if not records:
                continue
            batch = self._batch(topic, partition, records)
            by_topic.setdefault(topic, []).append(
                _I32.pack(partition) + _I32.pack(len(batch)) + batch
            )
            batches.append((topic, partition, records))
        if not batches:
            return
        body = [_NO_TRANSACTION, _I16.pack(-1), _I32.pack(self.timeout_ms)]
        body.append(_I32.pack(len(by_topic)))
        for topic, encoded in by_topic.items():
            body += [string(topic), _I32.pack(len(encoded)), *encoded]
        self.requests += 1
        conn.send(PRODUCE, 3, b"".join(body), functools.partial(self._produced, batches))

    def _batch(self, topic: str, partition: int, records: list[_Record]) -> bytes:
        seq = self._seq.get((topic, partition), 0)
        builder = DefaultRecordBatchBuilder(2, 0, 0, self._pid, self._epoch, seq, 1 << 30)
        for i, (key, value, headers, _) in enumerate(records):
            builder.append(i, None, key, value, headers)
        self._seq[(topic, partition)] = (seq + len(records)) & 0x7FFFFFFF
        return bytes(builder.build())

    def _produced(
        self, batches: list[tuple[str, int, list[_Record]]], r: Reader | BaseException
    ) -> None:
        outcome: dict[tuple[str, int], tuple[int, int]] = {}
        if not isinstance(r, BaseException):
            for _ in range(r.i32()):
                topic = r.string() or ""
                for _ in range(r.i32()):
                    partition, error, base = r.i32(), r.i16(), r.i64()
                    r.i64()  # log append time
                    outcome[(topic, partition)] = (error, base)
        for topic, partition, records in batches:
            error, base = outcome.get((topic, partition), (-1, -1))
            if error in (0, _DUPLICATE):
                for i, (_, _, _, future) in enumerate(records):
                    if not future.done():
                        future.set_result(Sent(topic, partition, base + i if error == 0 else -1))
                continue
            self._stale = True  # this batch's fate is not known: new id, sequences from 0
            for _, _, _, future in records:
                if not future.done():
                    exc = r if isinstance(r, BaseException) else for_code(error)(topic)
                    future.set_exception(exc)


OFFSET_OUT_OF_RANGE = 1
# a fetch session the broker no longer holds, or a request out of its order:
# fetch in full again, in a new session
_SESSION_LOST = frozenset((70, 71))  # FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH
_LAST_EPOCH = 0x7FFFFFFF
_NOT_AUTHORIZED = frozenset(
    e.errno
    for e in (
        TopicAuthorizationFailedError,
        GroupAuthorizationFailedError,
        ClusterAuthorizationFailedError,
    )
)
EARLIEST = -2  # ListOffsets' timestamp for the start of a partition


@dataclass(slots=True)
class _Session:
    """A fetch session with one broker (Kafka's KIP-227). Epoch 0: the next
    fetch is a full one, naming every partition (and, with an ``id``, ending
    that session and starting a new one); after it, each fetch names only the
    partitions whose position is not the one the broker holds (``sent``), and
    its response only those with records or a new high watermark."""

    id: int = 0
    epoch: int = 0
    sent: dict[int, int] = field(default_factory=dict)  # partition -> position the broker holds

    def request(self, parts: list[int], positions: dict[int, int]) -> tuple[list[int], bool]:
        """The partitions of ``parts`` the next fetch names, and whether it is a
        full one (also when a partition joined or left the session); ``sent``
        then holds what the broker will hold. ``positions`` may hold others'."""
        sent = self.sent
        if self.epoch and sent.keys() == set(parts):
            # the positions that moved: one set difference, not a look-up each
            listed = [p for p, _ in positions.items() - sent.items() if p in sent]
            for p in listed:
                sent[p] = positions[p]
            return listed, False
        self.epoch = 0
        self.sent = {p: positions[p] for p in parts}
        return parts, True

    def answered(self, full: bool, session_id: int) -> None:
        """A fetch went through: the next one is the session's next (or a full
        one, where the broker made no session)."""
        if full:
            self.id, self.epoch = session_id, 1 if session_id else 0
        else:
            self.epoch = 1 if self.epoch == _LAST_EPOCH else self.epoch + 1


@dataclass(slots=True)
class Record:
    """A fetched record, with what aiokafka's consumer records have."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


class Tail:
    """Reads partitions of one topic from positions on, without a group: each
    record is handed to ``on_record`` in the turn its fetch's response was
    read, and the next fetch (a long poll of up to ``max_wait_ms``) is sent in
    that same turn. One connection per leader of its own. A partition whose
    position is not known (or no longer in the log) starts at ``reset``:
    :data:`LATEST` (its end) or :data:`EARLIEST`."""

    def __init__(
        self,
        cluster: Cluster,
        topic: str,
        partitions: Sequence[int],
        on_record: Callable[[Record], None],
        *,
        max_wait_ms: int = 500,
        max_bytes: int = 16 << 20,
        retry_interval: float = 1.0,
        reset: int = LATEST,
        after_fetch: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.after_fetch = after_fetch  # called once a response's records are handed on
        self.topic = topic
        self.partitions = list(partitions)
        self.on_record = on_record
        self.max_wait_ms = max_wait_ms
        self.max_bytes = max_bytes
        self.retry_interval = retry_interval
        self.reset = reset
        self.positions: dict[int, int] = {}
        self.highwater: dict[int, int] = {}
        self.fetches = 0
        self._role = f"fetch-{id(self):x}"
        self._busy: set[int] = set()  # leaders with a fetch (or its recovery) under way
        self._leaders: dict[int, int] = {}
        self._epochs: dict[int, int] = {}  # one more at each seek: older fetches are void
        self._sessions: dict[int, _Session] = {}  # leader -> its fetch session
        self._paused = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.seek_to_end() if self.reset == LATEST else await self.assign({})
        self._fetch_all()

    async def seek_to_end(self) -> None:
        """Position every partition at its end as the broker has it now."""
        await self._retrying(self._positions_at, self.partitions, LATEST)

    async def assign(self, positions: dict[int, int | None]) -> None:
        """Read these partitions too, from these positions (None: ``reset``)."""
        for p in positions:
            if p not in self.partitions:
                self.partitions.append(p)
        for p, offset in positions.items():
            if offset is not None:
                self.seek(p, offset)
        unknown = [p for p in self.partitions if p not in self.positions]
        try:
            await self._retrying(self._positions_at, unknown, self.reset)
        except (KafkaError, TimeoutError) as exc:  # looked up again until it works
            log.warning("partitions not positioned yet", topic=self.topic, error=repr(exc))
            self._recover(-1, self.retry_interval)
            return
        self._fetch_all()

    def revoke(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            if p in self.partitions:
                self.partitions.remove(p)
            self.positions.pop(p, None)
            self._leaders.pop(p, None)
            self._epochs[p] = self._epochs.get(p, 0) + 1

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on; a fetch under way for it is void."""
        self.positions[partition] = offset
        self._epochs[partition] = self._epochs.get(partition, 0) + 1

    async def _retrying(self, step: Callable[..., Any], *args: Any) -> None:
        """A topic just created may be unknown to its broker for a moment."""
        await retrying(
            functools.partial(step, *args),
            self.cluster.timeout,
            unknown_too=True,
            stop=lambda: self._closed,
        )

    async def _positions_at(self, partitions: Sequence[int], timestamp: int) -> None:
        await self._learn_leaders()
        found: dict[int, int] = {}
        for leader in {self._leaders[p] for p in partitions}:
            mine = [p for p in partitions if self._leaders[p] == leader]
            found.update(await self._list_offsets(leader, mine, timestamp))
        for p, offset in found.items():
            self.seek(p, offset)

    async def _list_offsets(self, leader: int, parts: list[int], timestamp: int) -> dict[int, int]:
        body = b"".join(
            (
                _I32.pack(-1),
                _I32.pack(1),
                string(self.topic),
                _I32.pack(len(parts)),
                *(_I32.pack(p) + _I64.pack(timestamp) for p in parts),
            )
        )
        r = await self.cluster.call(leader, LIST_OFFSETS, 1, body)
        found: dict[int, int] = {}
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                partition, error = r.i32(), r.i16()
                r.i64()  # timestamp
                offset = r.i64()
                if error:
                    raise for_code(error)(f"offset of partition {partition} of {self.topic!r}")
                found[partition] = offset
        return found

    async def _learn_leaders(self) -> None:
        self.cluster.forget(self.topic)
        meta = await self.cluster.topic(self.topic)
        for p in self.partitions:
            leader = meta.partitions.get(p, -1)
            if leader < 0:
                raise for_code(5)(f"no leader for partition {p} of {self.topic!r}")
            self._leaders[p] = leader

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._fetch_all()

    def _fetch_all(self) -> None:
        for leader in set(self._leaders.values()):
            if leader not in self._busy:
                self._fetch(leader)

    def _fetch(self, leader: int) -> None:
        if self._closed or self._paused:
            return
        conn = self.cluster.open_connection(leader, self._role)
        if conn is None:
            self._recover(leader, 0.0)
            return
        parts = [p for p, n in self._leaders.items() if n == leader and p in self.positions]
        if not parts:
            return
        session = self._sessions.get(leader)
        if session is None:
            session = self._sessions[leader] = _Session()
        listed, full = session.request(parts, self.positions)
        head = _FETCH_HEAD.pack(
            -1, self.max_wait_ms, 1, self.max_bytes, 0, session.id, session.epoch
        )
        size = self.max_bytes
        if listed:
            topics = (_I32.pack(1), string(self.topic), _I32.pack(len(listed)))
            fetch = [_PARTITION_FETCH.pack(p, self.positions[p], -1, size) for p in listed]
            body = b"".join((head, *topics, *fetch, _NOTHING_FORGOTTEN))
        else:
            body = head + _NO_TOPICS  # the session's partitions, as the broker holds them
        self._busy.add(leader)
        self.fetches += 1
        epochs = self._epochs.copy()
        conn.send(FETCH, 7, body, lambda r: self._fetched(leader, epochs, full, r))

    def _fetched(
        self, leader: int, epochs: dict[int, int], full: bool, r: Reader | BaseException
    ) -> None:
        if self._closed:
            self._busy.discard(leader)
            return
        if isinstance(r, BaseException):
            log.debug("fetch failed; retrying", topic=self.topic, error=repr(r))
            self._recover(leader, self.retry_interval)
            return
        ok = self._read(r, epochs, self._sessions[leader], full)
        if self.after_fetch is not None:  # the leader counts as busy: no fetch sent from there
            try:
                self.after_fetch()
            except Exception:
                log.exception("fetch handler failed", topic=self.topic)
        if not ok:
            self._recover(leader, self.retry_interval)
            return
        self._busy.discard(leader)
        self._fetch(leader)

    def _read(self, r: Reader, epochs: dict[int, int], session: _Session, full: bool) -> bool:
        """Hand on the records of a fetch's response; False when a partition
        needs its leader or position looked up again."""
        _throttle, error, session_id = _FETCHED_HEAD.unpack_from(r.buf, r.pos)
        r.pos += _FETCHED_HEAD.size
        if error:
            session.epoch = 0  # the next fetch is a full one, in a new session
            if error in _SESSION_LOST:
                log.debug("fetch session lost; fetching in full", topic=self.topic, error=error)
                return True
            log.debug("fetch refused", topic=self.topic, error=error)
            return False
        session.answered(full, session_id)
        ok = True
        head = _PARTITION_FETCHED  # one unpack per partition the response names
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                partition, error, highwater, _, _, aborted = head.unpack_from(r.buf, r.pos)
                pos = r.pos + head.size + 16 * max(0, aborted)
                (size,) = _I32.unpack_from(r.buf, pos)  # the records', read in place
                r.pos = pos + 4 + max(0, size)
                records = r.buf[pos + 4 : r.pos] if size > 0 else None
                if epochs.get(partition, 0) != self._epochs.get(partition, 0):
                    continue  # sought or revoked meanwhile
                if error == OFFSET_OUT_OF_RANGE:
                    self.positions.pop(partition, None)
                    ok = False
                elif error in _NOT_AUTHORIZED:
                    log.error("fetch refused by the broker's ACLs; retrying", topic=self.topic)
                    ok = False
                elif error:
                    log.debug("fetch refused", topic=self.topic, error=error)
                    ok = False
                else:
                    self.highwater[partition] = highwater
                    if records:
                        self._hand_on(partition, records)
        return ok

    def _hand_on(self, partition: int, records: bytes) -> None:
        position = self.positions[partition]
        epoch = self._epochs.get(partition, 0)
        batches = MemoryRecords(records)
        while (batch := batches.next_batch()) is not None:
            if not getattr(batch, "is_control_batch", False):
                for rec in batch:
                    if rec.offset < position:
                        continue
                    record = Record(
                        self.topic,
                        partition,
                        rec.offset,
                        rec.timestamp,
                        rec.key,
                        rec.value,
                        rec.headers,
                    )
                    try:
                        self.on_record(record)
                    except Exception:
                        log.exception("record handler failed", topic=self.topic)
                    if self._epochs.get(partition, 0) != epoch:
                        return  # the handler sought elsewhere (or revoked it)
            position = max(position, batch.next_offset)
        self.positions[partition] = position

    def _recover(self, leader: int, delay: float) -> None:
        """Reconnect (and look the leaders and lost positions up again) in a
        task, then fetch again (in full: the broker's session may be gone)."""
        for session in self._sessions.values():
            session.epoch = 0
        self._busy.add(leader)
        task = asyncio.get_running_loop().create_task(self._reconnect(leader, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconnect(self, old: int, delay: float) -> None:
        await asyncio.sleep(delay)
        self._busy.discard(old)
        try:
            if delay:
                lost = [p for p in self.partitions if p not in self.positions]
                await self._learn_leaders()
                if lost:  # whose records expired: from ``reset``
                    await self._positions_at(lost, self.reset)
            for leader in set(self._leaders.values()):
                await self.cluster.connection(leader, self._role)
        except (KafkaError, TimeoutError) as exc:
            log.debug("reconnect failed; retrying", topic=self.topic, error=repr(exc))
            self._recover(old, self.retry_interval)
            return
        self._fetch_all()

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cluster.drop(self._role)


# replica, max wait, min bytes, max bytes, isolation, fetch session id and epoch
_FETCH_HEAD = struct.Struct(">iiiibii")
_NO_TOPICS = _I32.pack(0) + _I32.pack(0)  # no partitions named, none forgotten
_NOTHING_FORGOTTEN = _I32.pack(0)


class Fetcher:
    """A :class:`Tail` from the start of each partition (or the positions its
    owner sets) into a buffer, the way aiokafka's consumer hands records out:
    fetching goes on ahead while the buffer holds fewer than
    ``buffer_limit`` records and the owner has not paused it. Once a fetch's
    records are in, ``on_fetched`` may :meth:`take` them in that same turn;
    what it leaves ends a :meth:`wait`."""

    def __init__(
        self,
        cluster: Cluster,
        topic: str,
        *,
        max_wait_ms: int,
        retry_interval: float,
        buffer_limit: int = 1024,
        on_fetched: Callable[[], None] | None = None,
    ) -> None:
        self.tail = Tail(
            cluster,
            topic,
            [],
            self._add,
            max_wait_ms=max_wait_ms,
            retry_interval=retry_interval,
            reset=EARLIEST,
            after_fetch=self._fetched,
        )
        self.buffer_limit = buffer_limit
        self.on_fetched = on_fetched
        self._buffer: dict[int, deque[Record]] = {}
        self._count = 0
        self._held = False  # paused by the owner
        self._full = False  # paused by a full buffer
        self._waiter: asyncio.Future[None] | None = None

    def _add(self, record: Record) -> None:
        self._buffer.setdefault(record.partition, deque()).append(record)
        self._count += 1
        if self._count >= self.buffer_limit and not self._full:
            self._full = True
            self.tail.pause()

    def _fetched(self) -> None:
        if self._count and self.on_fetched is not None:
            self.on_fetched()
        if self._count:
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def assign(self, positions: dict[int, int | None]) -> None:
        await self.tail.assign(positions)

    def revoke(self, partitions: Sequence[int]) -> None:
        self.tail.revoke(partitions)
        for p in partitions:
            self._count -= len(self._buffer.pop(p, ()))
        self._refill()

    def seek(self, partition: int, offset: int) -> None:
        self._count -= len(self._buffer.pop(partition, ()))
        self.tail.seek(partition, offset)
        self._refill()

    def highwater(self, partition: int) -> int | None:
        return self.tail.highwater.get(partition)

    def pause(self) -> None:
        self._held = True
        self.tail.pause()

    def resume(self) -> None:
        self._held = False
        self._refill()

    def _refill(self) -> None:
        if self._full and self._count < self.buffer_limit // 2:
            self._full = False
        if not self._held and not self._full:
            self.tail.resume()

    async def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for records when none is buffered; whether
        any is now."""
        if not self._count and timeout_ms > 0:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout_ms / 1000, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._count > 0

    def take(self, max_records: int) -> dict[int, list[Record]]:
        """Up to ``max_records`` buffered records, by partition, now."""
        out: dict[int, list[Record]] = {}
        room = max_records
        for p, queue in self._buffer.items():
            if not queue:
                continue
            if room <= 0:
                break
            if len(queue) <= room:
                out[p] = taken = list(queue)
                queue.clear()
            else:
                out[p] = taken = [queue.popleft() for _ in range(room)]
            room -= len(taken)
        self._count -= max_records - room
        if self._full:  # else the tail fetches already: nothing to resume
            self._refill()
        return out

    async def stop(self) -> None:
        await self.tail.stop()
