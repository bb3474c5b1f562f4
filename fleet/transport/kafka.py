"""``kafka://host:port[,host:port]``: the transport on Apache Kafka (aiokafka).

``kafka+ssl://``, ``kafka+sasl+ssl://`` and ``kafka+sasl://`` connect with TLS,
SASL or both (see :mod:`fleet.transport._kafka_security`).

Topics. ``fleet.<model>.online`` and ``fleet.<model>.batch`` with
``options.partitions`` partitions each, created by ``declare_model`` (and by
``consume``); ``fleet.dead-letter`` and ``fleet.heartbeats`` with one partition,
created on connect. The broker runs with topic auto-creation off, so a model
nobody declared is :class:`ModelNotFound` rather than a new empty topic.

Replies (``inbox=shared``, the default): one topic, ``fleet.replies``, with
``reply_partitions`` partitions (16), created like the others. An inbox is a
partition of it, picked at random when the inbox opens, and an address,
``fleet.inbox.<32 hex>``, whose first four hex digits name the partition
(:func:`shared_inbox`). A worker publishes a reply to that partition keyed by
the address; the client reads the partition from its end (assigned, no group:
Kafka has no exclusive consumer) and keeps the records with its key. A client
thus also reads the replies of the clients that share its partition, about
1/``reply_partitions`` of all, and in exchange: no topic per client, nothing
left behind when a client crashes, no right to create or delete topics, and
no metadata lookups per reply address. The topic does not come and go with
clients, so a publish that fails (an unknown topic, no leader) is an error to
retry, never a reply dropped as "inbox gone". The client resolves its position
at the end before ``open_inbox`` returns, so no reply to a request sent
afterwards can be skipped. Replies are kept an hour (``retention.ms``).

``inbox=topic`` keeps the older way: a topic of its own per inbox,
``fleet.inbox.<32 hex>`` with one partition, created by ``open_inbox`` and
deleted by ``close`` (a crashed client's stays; it needs the rights to create
and delete topics). A worker tells the two apart by the address (the shared
kind has ``0`` as its 13th hex digit, a uuid4 has ``4``) and serves both, so
clients of either kind can use the same workers; a reply to an own-topic
inbox whose topic is gone is dropped (logged at debug).

Consumer groups: one per request topic, named after the topic
(``fleet.<model>.online`` / ``fleet.<model>.batch``). Each ``consume`` call is
one consumer of one topic; a group per topic keeps the two priority classes'
rebalances apart (a worker joining the batch class does not stop online
traffic) and makes each group's lag exactly one topic's lag. Partitions cap the
parallelism of a group: a consumer beyond the partition count gets nothing, and
says so in :meth:`Consumer.idle_reason`.

Lag: end offset minus committed offset, summed over both topics' partitions;
a partition the group never committed counts from its log start (beginning
offset), not from zero. ``depth()`` splits it: ``in_flight`` is the part the
group has handed out and not committed (its consumers write the highest offset
they handed out into the commit metadata before handing records out, see
:mod:`fleet.transport._kafka_consumer`), ``ready`` the rest; ``backlog`` is the
lag. ``consumers`` is the larger member count of the two groups.
Backpressure: Kafka has no length limit, so ``publish_request`` refuses with
:class:`Overloaded` once the messages waiting in the topic it publishes to
(``ready``, read again in the background every half second, plus what this
transport published that the read did not see, by the end offsets it read:
its first publishes count from 0 until the first read ends;
a committed offset the broker does not return, as right after a restart, is
taken to be the last one read, not the log start)
reach ``min(options.max_lag, options.max_queue_length)``. Per topic, not per
model, so a batch backlog never refuses online requests. ``produce_rate`` gives
the growth of the end offsets per second, for the autoscaler.

Commits, attempts and dead letters: see :mod:`fleet.transport._kafka_consumer`.

Sizes: ``options.max_message_bytes`` (default: what a broker with default
settings takes, 1 MiB less :data:`RECORD_OVERHEAD`) is checked before sending
(:class:`LimitExceeded`); the producer's ``max_request_size`` and the
``max.message.bytes`` of every topic this transport creates are that plus the
overhead, so what passes the check the broker takes. A topic created elsewhere
with a lower limit refuses with :class:`LimitExceeded` too, never retriably.

Data path: requests and replies are sent, and read (the groups' records, the
inboxes, the heartbeats and notifications), on connections of the transport's
own (:mod:`fleet.transport._kafka_wire`, the Kafka protocol over an asyncio
``Protocol``): an idempotent producer with ``acks=all`` like aiokafka's, and
fetches whose records are handed on in the turn that read them. aiokafka
keeps the rest: topics, consumer groups (membership, heartbeats, rebalances;
a group consumer's partitions stay paused in aiokafka and are fetched by the
transport), commits and offsets, the probe. With SASL, or with the option
``data_path=aiokafka``, aiokafka does it all; the guarantees are the same.
Its connections reconnect when next used; one that breaks makes the
transport probe the broker, as aiokafka's do.

Reconnects: aiokafka reconnects by itself; a probe (a metadata request, each
known broker asked in turn until one answers) every ``options.reconnect_interval``
seconds, and at once after a call fails for a lost connection or a timeout or
one of this transport's connections breaks, notices the broker going away and
coming back (a broker that restarts in a second fails no call of ours).
A call that timed out fails alone (retriably): only a failed probe counts the
broker as gone, so a slow broker never causes what follows. Once it is back
the watcher re-creates the fixed topics and any missing inbox topic, makes each
group consumer give up the records it handed out and that are not acked (their
acks become no-ops; they are read again from the committed offset with an
attempt one higher, as on a broker that lost the consumer), and then calls the
reconnect listeners once, so clients re-send what is unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from fleet.contract import Priority
from fleet.errors import (
    ConfigError,
    InvalidArgument,
    LimitExceeded,
    ModelNotFound,
    NotAuthorized,
    Overloaded,
    Unavailable,
)
from fleet.eventloop import cancel_and_wait
from fleet.logging import get_logger
from fleet.redact import redact_url
from fleet.transport._kafka_common import (
    ATTEMPT_HEADER,
    attempt_headers,
    dead_letter_headers,
    parse_attempts,
)
from fleet.transport._kafka_consumer import GroupConsumer, TailConsumer
from fleet.transport._kafka_security import (
    PROTOCOLS,
    URL_PARAMS,
    KafkaSecurity,
    diagnose,
    raise_if_not_authorized,
)
from fleet.transport._kafka_start import start_client, stop_client
from fleet.transport._kafka_wire import Cluster
from fleet.transport._kafka_wire import Producer as WireProducer
from fleet.transport.base import (
    DEAD_LETTER,
    DEAD_LETTER_TAP,
    HEARTBEATS,
    REPLY_PREFIX,
    Capability,
    Consumer,
    DeadLetterTap,
    Depth,
    OnBytes,
    OnDelivery,
    ProduceRateReader,
    Resource,
    Transport,
    TransportOptions,
    check_destination,
    check_reply_address,
    check_size,
    new_reply_address,
    queue_name,
)
from fleet.transport.spec import TransportSpec

log = get_logger("fleet.transport.kafka")

T = TypeVar("T")

INBOX_PREFIX = REPLY_PREFIX
REPLIES = "fleet.replies"
"""The topic every client's replies go to (``inbox=shared``, the default)."""
_SHARED_MARK = "0"
"""The 13th hex digit of an inbox address on :data:`REPLIES` (a uuid4's is 4)."""
INBOX_KINDS = ("shared", "topic")
DATA_PATHS = ("own", "aiokafka")
RECORD_OVERHEAD = 4096
"""Bytes a record batch may add to a body (batch header, record framing, our
headers, the dead-letter headers): the producer's ``max_request_size`` and the
topics' ``max.message.bytes`` are ``max_message_bytes`` plus this."""
DEFAULT_MAX_MESSAGE_BYTES = (1 << 20) - RECORD_OVERHEAD
"""What a broker with default settings takes (``message.max.bytes`` is 1 MiB
and 12 bytes), with room for the overhead."""
DEAD_LETTER_READERS = "fleet.dead-letter-readers"
_INBOX_CONFIG = {"retention.ms": "3600000", "segment.ms": "600000"}
"""Replies are read within seconds: kept an hour, in segments of ten minutes
(retention deletes whole segments only)."""
_LAG_TTL = 0.5  # seconds a topic's lag is reused by publish_request
_REPLY_TOPIC_TTL = 30.0  # seconds a reply topic is believed to exist
_REPLY_TOPICS_KEPT = 1024  # past this many, the expired are forgotten
_PROBE_TIMEOUT = 2.0
_HEALTHY_PROBE_INTERVAL = 5.0  # seconds between probes of a broker that answers
_JOIN_TIMEOUT = 15.0
_FIRST_BYTE = b"1"
_OFFSET_ERRORS = (KafkaError, OSError, TimeoutError)
_CONNECTION_ERRORS = (KafkaConnectionError, NodeNotReadyError, OSError)
_NOT_ALLOWED = (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno)
"""Codes of a refused CreateTopics: fine where the topic exists already
(created beforehand by an operator)."""
_TIMEOUTS = (KafkaTimeoutError, RequestTimedOutError, TimeoutError)
"""A timed-out request fails that call only: a slow broker is not a lost one.
Whether the broker is really gone is for a probe to say (see ``_check_soon``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KafkaOptions(TransportOptions):
    """The common options, plus Kafka's own."""

    partitions: int = 8  # partitions per request topic
    max_lag: int = 10_000  # messages waiting past which publishing is refused (Overloaded)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # largest body; past it: LimitExceeded
    session_timeout: float = 6.0
    """Seconds the broker waits for a consumer's heartbeat before it moves the
    consumer's partitions to others: how long a killed worker's partitions
    stay silent. 6 s is the lowest a broker allows by default
    (``group.min.session.timeout.ms``); set it lower where the broker allows
    it. Heartbeats go every third of it, the longest interval Kafka's
    documentation advises."""
    replication_factor: int | None = None
    """Copies of every topic the fleet creates; default ``min(3, brokers)``."""
    inbox: str = "shared"
    """Where a client's replies arrive. ``shared``: a partition of the one topic
    ``fleet.replies``, filtered by the inbox's address (no topic per client,
    nothing left behind by a crashed one, no right to create or delete
    topics). ``topic``: a topic of its own, created when it opens and deleted
    when it closes (reads no one else's replies)."""
    reply_partitions: int = 16
    """Partitions of ``fleet.replies`` where the fleet creates it: a client reads
    the replies of the clients that share its partition, about 1/this of all."""
    min_insync_replicas: int | None = None
    """Copies that must have a record before the broker confirms it (the
    producer sends with ``acks=all``); default 2 where the replication factor
    is 3 or more, else the broker's default."""
    data_path: str = "own"
    """What sends requests and replies and fetches them. ``own``: the
    transport's own produce and fetch over the Kafka protocol
    (:mod:`fleet.transport._kafka_wire`), with aiokafka keeping topics, groups
    and offsets; with SASL, aiokafka does it all. ``aiokafka``: aiokafka
    does it all. Both give the same guarantees."""

    def __post_init__(self) -> None:
        TransportOptions.__post_init__(self)
        if self.session_timeout < 0.5:
            raise ConfigError("transport option session_timeout must be at least 0.5 s")
        if self.inbox not in INBOX_KINDS:
            raise ConfigError(f"transport option inbox={self.inbox!r} is not one of {INBOX_KINDS}")
        if self.data_path not in DATA_PATHS:
            msg = f"transport option data_path={self.data_path!r} is not one of {DATA_PATHS}"
            raise ConfigError(msg)
        if self.reply_partitions > 0x10000:
            raise ConfigError("transport option reply_partitions must be at most 65536")
        for key in ("replication_factor", "min_insync_replicas"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"transport option {key} must be at least 1")
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ConfigError(
                f"transport option min_insync_replicas={isr} is over replication_factor={rf}:"
                " no write could ever be confirmed"
            )

    def replicas(self, brokers: int) -> tuple[int, int | None]:
        """The replication factor and ``min.insync.replicas`` (None: the
        broker's default) of the topics created on a cluster of ``brokers``."""
        rf = self.replication_factor or max(1, min(3, brokers))
        isr = self.min_insync_replicas or (2 if rf >= 3 else None)
        return rf, isr

    COUNTS: ClassVar[tuple[str, ...]] = (
        *TransportOptions.COUNTS,
        "partitions",
        "max_lag",
        "reply_partitions",
    )


def shared_inbox(partition: int) -> str:
    """A new inbox address on partition ``partition`` of :data:`REPLIES`: the
    partition in its first four hex digits, :data:`_SHARED_MARK` as its 13th."""
    rand = uuid.uuid4().hex
    return f"{INBOX_PREFIX}{partition:04x}{rand[4:12]}{_SHARED_MARK}{rand[13:]}"


def shared_partition(address: str) -> int | None:
    """The partition of :data:`REPLIES` an inbox address reads, or None for an
    inbox that is a topic of its own."""
    digits = address[len(INBOX_PREFIX) :]
    return int(digits[:4], 16) if digits[12:13] == _SHARED_MARK else None


# The metadata's error for a topic the cluster does not have.
_UNKNOWN_TOPIC = 3


class _Backlog(NamedTuple):
    """A topic's backlog as one read saw it."""

    ready: int
    in_flight: int
    ends: dict[int, int]  # partition: end offset at the read


class KafkaTransport(Transport, ProduceRateReader, DeadLetterTap):
    scheme = "kafka"
    #: seconds a topic this transport has seen may be reported missing before
    #: it counts as gone: a broker just restarted answers "unknown topic", to
    #: sends and to metadata requests alike, until it has caught up
    missing_grace = 30.0
    capabilities = frozenset(
        {Capability.PRODUCE_RATE, Capability.LAG_COUNTS_IN_FLIGHT, Capability.DEAD_LETTER_TAP}
    )
    options: KafkaOptions

    def __init__(self, url: str, options: TransportOptions) -> None:
        super().__init__(url, KafkaOptions.extend(options))
        parts = urlsplit(url)
        hosts = parts.netloc.rpartition("@")[2]
        if parts.scheme not in PROTOCOLS or not hosts:
            raise ConfigError(
                f"Kafka URL {redact_url(url)!r} must look like kafka://host:port[,host:port]"
                " (or kafka+ssl://, kafka+sasl+ssl://, kafka+sasl://)"
            )
        self.security = KafkaSecurity.from_url(url)
        self.bootstrap: list[str] = [h for h in hosts.split(",") if h]
        self.client_id = f"fleet-{uuid.uuid4().hex[:8]}"
        self._admin: Any = None
        self._producer: Any = None
        self._producer_options: dict[str, Any] = {}
        self.wire: Cluster | None = None  # the data path's own connections (no SASL)
        self._replacing = False
        self._offsets: Any = None  # a consumer without a group, for offset look-ups
        self._connected = False
        self._closing = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._consumers: set[Consumer] = set()
        self._inboxes: dict[str, TailConsumer] = {}
        self._partitions_cache: dict[str, list[int]] = {}
        self._seen: set[str] = set()  # topics the metadata has shown
        self._missing_since: dict[str, float] = {}  # of those, reported unknown since
        self._lag_cache: dict[str, tuple[float, int]] = {}
        self._read_ends: dict[str, dict[int, int]] = {}  # end offsets the last read saw
        self._unread: dict[str, list[tuple[int, int]]] = {}  # (partition, offset) sent past them
        self._lag_reads: dict[str, asyncio.Task[None]] = {}  # backlog reads under way
        self._reply_topics: dict[str, float] = {}
        self._rates: dict[str, tuple[float, int]] = {}
        self._known_committed: dict[TopicPartition, Any] = {}
        self._checker: asyncio.Task[None] | None = None
        self._brokers = 1  # the cluster's size, as its metadata said at connect
        self._wake = asyncio.Event()  # the watcher's sleep, cut short

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def client_options(self) -> dict[str, Any]:
        """The servers and security settings every aiokafka client of this
        transport is built with."""
        return {"bootstrap_servers": self.bootstrap, **self.security.client_kwargs()}

    @property
    def max_message_bytes(self) -> int:
        return self.options.max_message_bytes

    @property
    def _topic_config(self) -> dict[str, str]:
        """Every topic's ``max.message.bytes`` (what the producer may send) and
        ``min.insync.replicas``."""
        config = {"max.message.bytes": str(self.options.max_message_bytes + RECORD_OVERHEAD)}
        isr = self.options.replicas(self._brokers)[1]
        if isr is not None:
            config["min.insync.replicas"] = str(isr)
        return config

    @property
    def _timeout_ms(self) -> int:
        return max(1000, int(self.options.publish_timeout * 1000))

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        if self._connected:
            return
        self._closing = self._closed = False
        common: dict[str, Any] = {
            **self.client_options,
            "client_id": self.client_id,
            "request_timeout_ms": self._timeout_ms,
            "retry_backoff_ms": 100,
        }
        self._producer_options = common
        try:
            admin = AIOKafkaAdminClient(**common)
            await start_client(
                admin, self.options.publish_timeout, stop="close", on_break=self.probe_soon
            )
            self._admin = admin
            self._brokers = max(1, len(admin._client.cluster.brokers()))
            if self.options.data_path == "own" and not self.security.sasl:
                self.wire = Cluster(
                    self.bootstrap,
                    client_id=self.client_id,
                    ssl_context=self.security.ssl_context(),
                    timeout=self.options.publish_timeout,
                    on_break=self.probe_soon,
                )
            self._producer = await self._new_producer()
            offsets = AIOKafkaConsumer(**common, group_id=None, enable_auto_commit=False)
            await start_client(offsets, self.options.publish_timeout, on_break=self.probe_soon)
            self._offsets = offsets
            await self._create_topics({DEAD_LETTER: 1, HEARTBEATS: 1}, self._topic_config)
            await self._create_topics({REPLIES: self.options.reply_partitions}, self._inbox_config)
        except BaseException as exc:
            await self._stop_clients()
            raise_if_not_authorized(exc, self.security, "connecting")
            if isinstance(exc, (*_OFFSET_ERRORS, Unavailable)):
                await diagnose(self.bootstrap[0], self.security)
                where = ",".join(self.bootstrap)
                raise Unavailable(f"Kafka at {where} unreachable: {exc!r}") from exc
            raise
        self._connected = True
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="kafka-watch")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        try:  # whatever fails on the way, no client is left open
            await cancel_and_wait(*(t for t in (self._watcher, self._checker) if t is not None))
            await cancel_and_wait(*self._lag_reads.values())
            await self._close_consumers()
        finally:
            self._connected = False
            await self._stop_clients()

    async def _close_consumers(self) -> None:
        for c in list(self._consumers):
            if isinstance(c, GroupConsumer):
                await c.shutdown(cancel_handlers=True)
            else:
                await c.cancel()
        self._consumers.clear()
        inboxes = [a for a in self._inboxes if shared_partition(a) is None]
        for tail in list(self._inboxes.values()):
            await tail.cancel()
        self._inboxes.clear()
        if inboxes and self._admin is not None and self._connected:
            try:
                await asyncio.wait_for(self._admin.delete_topics(inboxes), 3.0)
            except _OFFSET_ERRORS as exc:
                log.debug("inbox topics not deleted", topics=inboxes, error=repr(exc))

    async def _stop_clients(self) -> None:
        checker, self._checker = self._checker, None  # a probe must not use a closed client
        if checker is not None:
            await cancel_and_wait(checker)
        for client, stop in (
            (self._producer, "stop"),
            (self._offsets, "stop"),
            (self._admin, "close"),
        ):
            if client is not None:
                await stop_client(client, stop)
        self._producer = self._offsets = self._admin = None
        wire, self.wire = self.wire, None
        if wire is not None:
            await wire.close()

    def forget_consumer(self, consumer: Consumer) -> None:
        self._consumers.discard(consumer)

    def _check_open(self) -> None:
        if self._closing or self._admin is None:
            raise Unavailable("transport is closed")

    async def _call(self, what: str, aw: Awaitable[T]) -> T:
        """Await a broker call, bounded; broker failures become ``Unavailable``."""
        try:
            return await asyncio.wait_for(aw, self.options.publish_timeout)
        except _OFFSET_ERRORS as exc:
            raise_if_not_authorized(exc, self.security, what)
            self._check_soon(exc)
            raise Unavailable(f"Kafka {what} failed: {exc!r}") from exc

    def _check_soon(self, exc: BaseException) -> None:
        """A call failed: if it may mean the broker is gone, probe it now. Only
        a failed probe marks the broker down (and so leads to a restore)."""
        if isinstance(exc, (*_CONNECTION_ERRORS, *_TIMEOUTS)):
            self.probe_soon()

    def probe_soon(self) -> None:
        """Probe the broker now (unless a probe is under way): a call failed
        or a connection broke. Only a failed probe marks the broker down."""
        if self._closing or self._admin is None:
            return
        if self._checker is None or self._checker.done():
            self._checker = asyncio.get_running_loop().create_task(
                self._check(), name="kafka-check"
            )

    async def _check(self) -> None:
        if not await self._probe():
            self._suspect_down()

    def _suspect_down(self) -> None:
        if self._connected and not self._closing:
            log.warning("Kafka broker unreachable")
            self._connected = False
            self._wake.set()

    # ------------------------------------------------------------------ reconnects
    async def _probe(self) -> bool:
        """Whether the cluster answers: the heartbeat topic's metadata, without
        an error, from any broker, each known broker asked in turn until one
        gives it (one broker restarting, or not knowing its topics yet, is not
        the cluster gone)."""
        admin = self._admin
        if admin is None or self._closing:
            return False
        client = admin._client
        request = MetadataRequest([HEARTBEATS], allow_auto_topic_creation=False)
        for broker in sorted(b.nodeId for b in client.cluster.brokers()):
            try:
                answer = await asyncio.wait_for(client.send(broker, request), _PROBE_TIMEOUT)
            except _OFFSET_ERRORS:
                continue
            topics = answer.to_object()["topics"]
            if topics and all(t.get("error_code", 0) == 0 for t in topics):
                return True
        return False

    async def _watch(self) -> None:
        """Probe the broker: every ``reconnect_interval`` while it is away, every
        :data:`_HEALTHY_PROBE_INTERVAL` while it answers (a failing call probes
        at once, see :meth:`_check_soon`): an idle client asks for little."""
        while not self._closing:
            interval = self.options.reconnect_interval
            if self._connected:
                interval = max(interval, _HEALTHY_PROBE_INTERVAL)
            with contextlib.suppress(TimeoutError):  # woken early by _suspect_down
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if await self._probe():
                if not self._connected:
                    await self._restore()
            else:
                self._suspect_down()

    async def _restore(self) -> None:
        try:
            await self._create_topics({DEAD_LETTER: 1, HEARTBEATS: 1}, self._topic_config)
            await self._create_topics({REPLIES: self.options.reply_partitions}, self._inbox_config)
            for topic, tail in list(self._inboxes.items()):
                if (
                    shared_partition(topic) is None
                    and await self._partitions(topic, fresh=True) is None
                ):
                    await self._create_topics({topic: 1}, self._inbox_config)
                    await tail.reposition_at_end()
        except (*_OFFSET_ERRORS, Unavailable) as exc:
            log.info("broker back but not ready yet", error=repr(exc))
            return
        self._lag_cache.clear()
        for c in list(self._consumers):
            if isinstance(c, GroupConsumer):
                c.abandon_in_flight()
        self._connected = True
        log.info("reconnected to Kafka", bootstrap=self.bootstrap)
        await self._fire_reconnected()

    # ------------------------------------------------------------------ topology
    async def _create_topics(
        self, topics: dict[str, int], configs: dict[str, str] | None = None
    ) -> None:
        rf = self.options.replicas(self._brokers)[0]
        new = [
            NewTopic(name, n, rf, topic_configs=dict(configs or {})) for name, n in topics.items()
        ]
        resp = await self._call("create topics", self._admin.create_topics(new))
        for entry in resp.topic_errors:
            name, code = entry[0], entry[1]
            if code == 0:
                self._known(name, list(range(topics[name])))
            elif code == TopicAlreadyExistsError.errno:
                # it keeps the partitions it has; metadata will tell, once
                # it knows the topic (one made a moment ago by another client)
                if name not in self._partitions_cache:
                    await self._await_metadata(name)
            elif code == InvalidReplicationFactorError.errno:
                raise ConfigError(
                    f"cannot create topic {name!r} with {rf} replicas on {self._brokers}"
                    " broker(s): lower the transport option replication_factor"
                )
            elif code not in _NOT_ALLOWED:
                raise Unavailable(f"could not create topic {name!r}: {for_code(code).__name__}")
            elif await self._partitions(name, fresh=True) is None:
                raise NotAuthorized(
                    f"not allowed to create topic {name!r}: grant CreateTopics, or create it"
                    " beforehand (`fleet topology` prints how)"
                )

    async def _await_metadata(self, topic: str) -> None:
        """Wait until metadata shows ``topic``, which exists: the broker that
        answers metadata learns of a new topic a moment after the controller
        made it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.options.publish_timeout
        while True:
            with contextlib.suppress(Unavailable):  # shown, without a leader yet
                if await self._partitions(topic, fresh=True) is not None:
                    return
            if loop.time() > end:
                raise Unavailable(
                    f"topic {topic!r} exists but the broker's metadata has not shown it"
                    f" within {self.options.publish_timeout:g}s"
                )
            await asyncio.sleep(0.1)

    async def _partitions(self, topic: str, *, fresh: bool = False) -> list[int] | None:
        """The topic's partition ids, or None if the metadata does not know the
        topic. Metadata naming the topic with a passing error (no leader while
        one is elected) says it exists: that is :class:`Unavailable`."""
        if not fresh and topic in self._partitions_cache:
            return self._partitions_cache[topic]
        meta = await self._call("metadata", self._admin.describe_topics([topic]))
        return self._read_partitions(topic, meta)

    def _read_partitions(self, topic: str, meta: list[dict[str, Any]]) -> list[int] | None:
        """``_partitions`` of one metadata answer."""
        code = _UNKNOWN_TOPIC
        for t in meta:
            if t.get("topic") != topic:
                continue
            code = t.get("error_code", 0)
            if code == 0 and t.get("partitions"):
                return self._known(topic, sorted(p["partition"] for p in t["partitions"]))
        self._partitions_cache.pop(topic, None)
        if code not in (_UNKNOWN_TOPIC, 0) and for_code(code).retriable:
            raise Unavailable(f"topic {topic!r}: {for_code(code).__name__}; try again")
        return None

    def _known(self, topic: str, ids: list[int]) -> list[int]:
        """Note that ``topic`` exists, with partitions ``ids``."""
        self._partitions_cache[topic] = ids
        self._seen.add(topic)
        self._missing_since.pop(topic, None)
        return ids

    async def _ask_every_broker(self, topic: str) -> list[int] | None:
        """``_partitions`` as the first broker that knows ``topic`` tells it,
        asking each in turn; None if none does. One broker's metadata can lag
        the cluster's by a moment (a topic just created, a broker just
        started); a broker that cannot be asked is passed over, and one that
        names the topic without a leader makes it :class:`Unavailable`."""
        client = self._admin._client
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        passing: Unavailable | None = None  # the topic named, without a leader
        for broker in sorted(b.nodeId for b in client.cluster.brokers()):
            try:
                answer = await self._call("metadata", client.send(broker, request))
            except Unavailable:
                continue
            try:
                ids = self._read_partitions(topic, answer.to_object()["topics"])
            except Unavailable as exc:
                passing = exc
                continue
            if ids is not None:
                return ids
        if passing is not None:
            raise passing
        return None

    async def _require(self, topic: str, missing: str) -> list[int]:
        """The partition ids of ``topic``, which must exist. A topic this
        transport has seen is :class:`Unavailable` while it has been reported
        unknown for less than ``missing_grace`` seconds, then
        :class:`ModelNotFound`; one never seen is ModelNotFound once no broker
        knows it."""
        ids = await self._partitions(topic)
        if ids is not None:
            return ids
        if topic not in self._seen:
            if (ids := await self._ask_every_broker(topic)) is not None:
                return ids
            raise ModelNotFound(missing)
        now = time.monotonic()
        since = self._missing_since.setdefault(topic, now)
        if now - since < self.missing_grace:
            raise Unavailable(f"a broker did not know topic {topic!r}, which it had; try again")
        self._seen.discard(topic)
        del self._missing_since[topic]
        raise ModelNotFound(missing)

    async def declare_model(self, model: str) -> None:
        """Create the model's topics and wait until every partition has a
        leader: a consumer group formed before the new topics' metadata is
        complete assigns them no partitions. A request that fails on the way
        (it went to a broker just killed, which the cluster has not fenced
        yet) is tried again until ``publish_timeout``."""
        self._check_open()
        topics = [queue_name(model, p) for p in Priority]
        loop = asyncio.get_running_loop()
        end = loop.time() + self.options.publish_timeout
        created = False
        while True:
            try:
                if not created:
                    await self._create_topics(
                        {t: self.options.partitions for t in topics}, self._topic_config
                    )
                    created = True
                if all([await self._has_leaders(t) for t in topics]):
                    return
                failure: Unavailable | None = None
            except Unavailable as exc:
                failure = exc
            if loop.time() > end:
                raise failure or Unavailable(
                    f"topics {topics} have no partition leaders"
                    f" within {self.options.publish_timeout:g}s"
                )
            await asyncio.sleep(0.1)

    async def topology(self, models: Sequence[str]) -> list[Resource]:
        self._check_open()
        common = self._topic_config
        topics = [
            (DEAD_LETTER, 1, common, "dead letters"),
            (HEARTBEATS, 1, common, "worker heartbeats"),
            *(
                (queue_name(m, p), self.options.partitions, common, f"{p.label} requests for {m}")
                for m in models
                for p in Priority
            ),
            (
                REPLIES,
                self.options.reply_partitions,
                self._inbox_config,
                "replies to every client, keyed by inbox address",
            )
            if self.options.inbox == "shared"
            else (
                f"{INBOX_PREFIX}<32 hex digits>",
                1,
                self._inbox_config,
                "one per client process: created when it starts, deleted when it closes",
            ),
        ]
        return [self._topic_resource(*t) for t in topics]

    def _topic_resource(
        self, name: str, partitions: int, config: dict[str, str], note: str
    ) -> Resource:
        rf = self.options.replicas(self._brokers)[0]
        settings = {"partitions": str(partitions), "replication.factor": str(rf), **config}
        command = [
            "kafka-topics.sh",
            f"--bootstrap-server {','.join(self.bootstrap)}",
            f"--create --topic {name}",
            f"--partitions {partitions} --replication-factor {rf}",
            *(f"--config {k}={v}" for k, v in config.items()),
        ]
        return Resource(
            kind="topic", name=name, settings=settings, command=" ".join(command), note=note
        )

    async def _has_leaders(self, topic: str) -> bool:
        meta = await self._call("metadata", self._admin.describe_topics([topic]))
        for t in meta:
            if t.get("topic") == topic and t.get("error_code", 0) == 0:
                parts = t.get("partitions") or []
                return bool(parts) and all(
                    p.get("error_code", 0) == 0 and p.get("leader", -1) >= 0 for p in parts
                )
        return False

    # ------------------------------------------------------------------ producing
    async def _new_producer(self) -> Any:
        if self.wire is not None:
            wire = WireProducer(self.wire, timeout_ms=self._timeout_ms)
            await asyncio.wait_for(wire.start(), self.options.publish_timeout)
            return wire
        producer = AIOKafkaProducer(
            **self._producer_options,
            enable_idempotence=True,
            acks="all",
            max_request_size=self.options.max_message_bytes + RECORD_OVERHEAD,
        )
        await start_client(producer, self.options.publish_timeout, on_break=self.probe_soon)
        return producer

    async def _replace_producer(self) -> None:
        """After a broker restart the idempotent producer's sequence numbers may
        no longer match the broker's (OutOfOrderSequenceNumber): every later
        send would fail the same way, so start over with a new producer id."""
        if self._replacing:
            return
        self._replacing = True
        try:
            new = await self._new_producer()
        except _OFFSET_ERRORS as exc:
            log.warning("could not replace the Kafka producer", error=repr(exc))
            return
        finally:
            self._replacing = False
        old, self._producer = self._producer, new
        log.info("Kafka producer replaced after a sequence error")
        if old is not None:
            with contextlib.suppress(*_OFFSET_ERRORS):
                await old.stop()

    async def _send(
        self,
        topic: str,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        key: bytes | None = None,
    ) -> Any:
        """Send one message; its record metadata (partition, offset)."""
        producer, wait = self._producer, self.options.publish_timeout
        try:
            if isinstance(producer, WireProducer):  # one timer for all its sends' deadlines
                return await producer.send_and_wait(
                    topic, value, key=key, partition=partition, headers=headers, timeout=wait
                )
            async with asyncio.timeout(wait):  # no task, unlike wait_for
                return await producer.send_and_wait(
                    topic, value, key=key, partition=partition, headers=headers
                )
        except UnknownTopicOrPartitionError as exc:
            raise ModelNotFound(f"no topic {topic!r}") from exc
        except MessageSizeTooLargeError as exc:
            raise LimitExceeded(f"Kafka refused a message to {topic!r} as too large") from exc
        except _OFFSET_ERRORS as exc:
            raise_if_not_authorized(exc, self.security, f"sending to {topic!r}")
            self._check_soon(exc)
            if isinstance(exc, OutOfOrderSequenceNumber):
                await self._replace_producer()
            raise Unavailable(f"Kafka did not confirm a message to {topic!r}: {exc!r}") from exc
        except AttributeError as exc:  # the producer went away under us
            raise Unavailable("transport is closed") from exc

    async def publish_request(self, model: str, priority: Priority, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "request")
        self._check_open()
        topic = queue_name(model, priority)
        await self._require(topic, f"no worker has declared topic {topic!r}")
        waiting = self._waiting_estimate(topic)
        limit = min(self.options.max_lag, self.options.max_queue_length)
        if waiting >= limit:
            raise Overloaded(f"topic {topic!r} has {waiting} messages waiting (limit {limit})")
        try:
            sent = await self._send(topic, body, headers=[(ATTEMPT_HEADER, _FIRST_BYTE)])
        except (ModelNotFound, Unavailable) as exc:
            # A broker that does not know the topic (one just restarted, not
            # caught up yet, or the topic deleted: fleet never deletes a
            # model's topics) or a send to a deleted topic that timed out. The
            # send is Unavailable, to retry; the partitions are looked up
            # afresh next time, and _require tells a restart from a deletion.
            self._partitions_cache.pop(topic, None)
            if isinstance(exc, ModelNotFound):
                msg = f"a broker did not know topic {topic!r}; try again ({exc})"
                raise Unavailable(msg) from exc
            raise
        self._count_sent(topic, sent)

    def _count_sent(self, topic: str, sent: Any) -> None:
        """A message published to ``topic`` counts on top of the last backlog
        read unless that read saw it (its offset below the read's end offset
        of its partition): a send that lands while the backlog is read is in
        the figure, whichever of the two ends first."""
        partition = getattr(sent, "partition", -1)
        offset = getattr(sent, "offset", -1)
        if offset is None or offset < 0:
            offset = sys.maxsize  # not known: not seen by any read
        ends = self._read_ends.get(topic)
        if ends is None or offset >= ends.get(partition, 0):
            self._unread.setdefault(topic, []).append((partition, offset))

    def _waiting_estimate(self, topic: str) -> int:
        """The topic's backlog as last read, plus what this transport has
        published that the read did not see. The figure is read in the
        background (one read per topic at a time) when there is none or it is
        older than ``_LAG_TTL``: no publish waits on that read's round trips,
        and the publishes before the first read ends count from 0."""
        cached = self._lag_cache.get(topic)
        stale = cached is None or time.monotonic() - cached[0] > _LAG_TTL
        if stale and topic not in self._lag_reads:
            task = asyncio.get_running_loop().create_task(self._read_lag(topic))
            self._lag_reads[topic] = task
            task.add_done_callback(functools.partial(self._lag_read_done, topic))
        return (cached[1] if cached is not None else 0) + len(self._unread.get(topic, ()))

    def _lag_read_done(self, topic: str, task: asyncio.Task[None]) -> None:
        self._lag_reads.pop(topic, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("lag read failed", topic=topic, error=repr(exc))

    async def _read_lag(self, topic: str) -> None:
        now = time.monotonic()
        cached = self._lag_cache.get(topic)
        try:
            backlog = await self._call("lag", self._topic_backlog(topic))
        except (Unavailable, ModelNotFound) as exc:
            # The backlog is a guard, not a precondition: when it cannot be
            # read (partition leaders moving after a restart), the last
            # known figure stands until the next read, and the send itself
            # says whether the broker takes the message.
            log.warning("lag unreadable; using the last known", topic=topic, error=str(exc))
            self._lag_cache[topic] = (now, cached[1] if cached is not None else 0)
        else:
            self._lag_cache[topic] = (now, backlog.ready)
            ends = self._read_ends[topic] = backlog.ends
            unread = self._unread.get(topic, [])
            self._unread[topic] = [(p, o) for p, o in unread if o >= ends.get(p, 0)]

    async def dead_letter(self, record: Any, reason: str, attempt: int) -> None:
        headers = dead_letter_headers(record, reason, attempt)
        await self._send(DEAD_LETTER, bytes(record.value or b""), headers=headers)

    async def republish(self, record: Any, attempt: int) -> None:
        headers = attempt_headers(record, attempt)
        await self._send(record.topic, bytes(record.value or b""), headers=headers)

    # ------------------------------------------------------------------ client side
    async def open_inbox(self, on_reply: OnBytes) -> str:
        self._check_open()
        if self.options.inbox == "topic":
            address = new_reply_address()
            await self._create_topics({address: 1}, self._inbox_config)
            tail = TailConsumer(self, address, on_reply)
            partition = 0
        else:
            partitions = await self._partitions(REPLIES, fresh=True)
            if not partitions:
                raise Unavailable(f"no topic {REPLIES!r} for replies (`fleet topology`)")
            partition = random.choice(partitions)
            address = shared_inbox(partition)
            tail = TailConsumer(self, REPLIES, on_reply, key=address.encode())
        await self._start_tail("inbox", tail, [partition])
        self._inboxes[address] = tail
        return address

    @property
    def _inbox_config(self) -> dict[str, str]:
        return {**_INBOX_CONFIG, **self._topic_config}

    async def _start_tail(self, what: str, tail: TailConsumer, partitions: list[int]) -> None:
        try:
            await self._call(what, tail.start(partitions))
        except BaseException:
            await tail.cancel()
            raise

    # ------------------------------------------------------------------ worker side
    async def consume(
        self, model: str, priority: Priority, on_delivery: OnDelivery, *, prefetch: int
    ) -> Consumer:
        self._check_open()
        topic = queue_name(model, priority)
        await self._create_topics({topic: self.options.partitions}, self._topic_config)
        return await self._join(GroupConsumer(self, model, priority, topic, on_delivery, prefetch))

    async def _join(self, consumer: GroupConsumer) -> Consumer:
        try:
            await consumer.start(
                self.options.publish_timeout, _JOIN_TIMEOUT, self.options.session_timeout
            )
        except BaseException as exc:
            await consumer.shutdown()
            group = consumer.group
            raise_if_not_authorized(exc, self.security, f"joining consumer group {group!r}")
            if isinstance(exc, _OFFSET_ERRORS):
                raise Unavailable(f"could not join consumer group {group!r}: {exc!r}") from exc
            raise
        self._consumers.add(consumer)
        return consumer

    async def tap_dead_letters(self, on_delivery: OnDelivery, *, prefetch: int) -> Consumer:
        """The group ``fleet.dead-letter.jobs`` on the dead letters' topic (its
        first member starts at the topic's beginning); a tapped record handed
        back is published to the topic again, never dead-lettered twice."""
        self._check_open()
        return await self._join(
            GroupConsumer(
                self,
                "",
                Priority.BATCH,
                DEAD_LETTER,
                on_delivery,
                prefetch,
                group=DEAD_LETTER_TAP,
                delivery_limit=1 << 30,
            )
        )

    async def publish_reply(self, reply_to: str, body: bytes) -> None:
        check_reply_address(reply_to)
        check_size(body, self.max_message_bytes, "reply")
        self._check_open()
        partition = shared_partition(reply_to)
        if partition is not None:
            await self._publish_shared_reply(reply_to, partition, body)
            return
        topic = reply_to
        if not await self._reply_topic_exists(topic):
            log.debug("reply to an inbox that is gone; dropped", reply_to=reply_to)
            return
        try:
            await self._send(topic, body)
        except (ModelNotFound, Unavailable):
            self._reply_topics.pop(topic, None)
            if not await self._reply_topic_exists(topic):
                log.debug("reply to an inbox that is gone; dropped", reply_to=reply_to)
                return
            raise

    async def _publish_shared_reply(self, address: str, partition: int, body: bytes) -> None:
        """Publish to ``partition`` of :data:`REPLIES`, keyed by the inbox's
        address. Every failure is an error for the caller to retry (or to give
        the request back for): the topic does not come and go with clients, so
        an unknown topic or a missing leader is transient, never an inbox gone."""
        partitions = await self._partitions(REPLIES)
        if partitions is None or partition not in partitions:
            partitions = await self._partitions(REPLIES, fresh=True)
        if partitions is None:
            raise Unavailable(f"no topic {REPLIES!r} for replies")
        if partition not in partitions:
            raise InvalidArgument(
                f"reply address names partition {partition} of {REPLIES!r},"
                f" which has {len(partitions)}"
            )
        try:
            await self._send(REPLIES, body, partition=partition, key=address.encode())
        except ModelNotFound as exc:
            self._partitions_cache.pop(REPLIES, None)
            raise Unavailable(f"topic {REPLIES!r} not available: {exc}") from exc

    async def _reply_topic_exists(self, topic: str) -> bool:
        seen = self._reply_topics.get(topic)
        now = time.monotonic()
        if seen is not None and now - seen < _REPLY_TOPIC_TTL:
            return True
        exists = await self._partitions(topic, fresh=True) is not None
        self._partitions_cache.pop(topic, None)  # reply topics are tracked here alone
        if not exists:
            return False
        if len(self._reply_topics) >= _REPLY_TOPICS_KEPT:  # forget the expired
            self._reply_topics = {
                t: at for t, at in self._reply_topics.items() if now - at < _REPLY_TOPIC_TTL
            }
        self._reply_topics[topic] = now
        return True

    async def publish_heartbeat(self, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "heartbeat")
        self._check_open()
        await self._send(HEARTBEATS, body)

    async def subscribe_heartbeats(self, on_beat: OnBytes) -> Consumer:
        self._check_open()
        partitions = await self._partitions(HEARTBEATS) or [0]
        tail = TailConsumer(self, HEARTBEATS, on_beat)
        await self._start_tail("subscribe", tail, partitions)
        self._consumers.add(tail)
        return tail

    async def declare_notifications(self, destination: str) -> None:
        check_destination(destination)
        self._check_open()
        if await self._partitions(destination) is None:
            await self._create_topics({destination: 1}, self._topic_config)
            await self._await_metadata(destination)

    async def publish_notification(self, destination: str, key: str, body: bytes) -> None:
        check_size(body, self.max_message_bytes, "notification")
        await self.declare_notifications(destination)
        try:
            await self._send(destination, body, key=key.encode())
        except ModelNotFound as exc:  # deleted under us: created again next time
            self._partitions_cache.pop(destination, None)
            raise Unavailable(str(exc)) from exc

    async def subscribe_notifications(self, destination: str, on_message: OnBytes) -> Consumer:
        await self.declare_notifications(destination)
        partitions = await self._partitions(destination) or [0]
        tail = TailConsumer(self, destination, on_message)
        await self._start_tail("subscribe", tail, partitions)
        self._consumers.add(tail)
        return tail

    # ------------------------------------------------------------------ operators
    async def committed(
        self, group: str, tps: Sequence[TopicPartition]
    ) -> dict[TopicPartition, Any]:
        """The group's committed offsets (with metadata) of these partitions."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.options.publish_timeout
        while True:
            try:
                result: dict[TopicPartition, Any] = await self._admin.list_consumer_group_offsets(
                    group, partitions=list(tps)
                )
                return result
            except KafkaError as exc:
                # the coordinator may be loading (first group on a new broker, a restart)
                if not getattr(exc, "retriable", False) or loop.time() >= end:
                    raise
                await asyncio.sleep(0.1)

    async def group_members(self, group: str) -> int | None:
        try:
            responses = await asyncio.wait_for(
                self._admin.describe_consumer_groups([group]), self.options.publish_timeout
            )
        except _OFFSET_ERRORS:
            return None
        for resp in responses:
            for g in resp.groups:
                if g[1] == group and g[0] == 0:
                    return len(g[5])
        return None

    async def _topic_backlog(self, topic: str) -> _Backlog:
        """``(ready, in_flight)`` of one topic's group. Their sum is the lag:
        end offset minus committed offset, a partition never committed counting
        from its log start. ``in_flight`` is the part of it the group has handed
        out, as its consumers record in the commit metadata before they do."""
        partitions = await self._require(topic, f"no topic {topic!r}")
        tps = [TopicPartition(topic, p) for p in partitions]
        end = await self._offsets.end_offsets(tps)
        committed = await self.committed(topic, tps)
        base: dict[TopicPartition, int] = {}
        handed: dict[TopicPartition, int] = {}
        never = []
        for tp in tps:
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                self._known_committed[tp] = meta
            else:
                # right after a broker restart the read may come back empty:
                # that is "not known yet", not "nothing committed"
                meta = self._known_committed.get(tp)
            if meta is not None and meta.offset >= 0:
                base[tp] = meta.offset
                segments = parse_attempts(meta.metadata)
                if segments:
                    handed[tp] = segments[-1][0] + 1
            else:
                never.append(tp)
        if never:
            base.update(await self._offsets.beginning_offsets(never))
        ready = in_flight = 0
        for tp in tps:
            lag = max(0, end[tp] - base[tp])
            out = min(lag, max(0, handed.get(tp, base[tp]) - base[tp]))
            ready += lag - out
            in_flight += out
        return _Backlog(ready, in_flight, {tp.partition: end[tp] for tp in tps})

    async def depth(self, model: str) -> Depth:
        self._check_open()
        topics = [queue_name(model, p) for p in Priority]
        present = [t for t in topics if await self._partitions(t) is not None]
        if not present:
            raise ModelNotFound(f"model {model!r} has no topics")
        ready = in_flight = 0
        for t in present:
            backlog = await self._call("lag", self._topic_backlog(t))
            ready += backlog.ready
            in_flight += backlog.in_flight
        members = [await self.group_members(t) for t in present]
        known = [m for m in members if m is not None]
        return Depth(
            model=model,
            ready=ready,
            in_flight=in_flight,
            consumers=max(known) if known else None,
        )

    async def produce_rate(self, model: str) -> float | None:
        """Messages per second appended to the model's topics since the last
        call (end-offset growth); None on the first call."""
        self._check_open()
        total = 0
        for p in Priority:
            topic = queue_name(model, p)
            partitions = await self._partitions(topic)
            if partitions is None:
                continue
            tps = [TopicPartition(topic, i) for i in partitions]
            end = await self._call("offsets", self._offsets.end_offsets(tps))
            total += sum(end.values())
        now = time.monotonic()
        prev = self._rates.get(model)
        self._rates[model] = (now, total)
        if prev is None or now <= prev[0]:
            return None
        return max(0.0, (total - prev[1]) / (now - prev[0]))

    async def take_dead_letters(self, limit: int = 100) -> list[bytes]:
        self._check_open()
        partitions = await self._partitions(DEAD_LETTER) or [0]
        tps = [TopicPartition(DEAD_LETTER, p) for p in partitions]
        reader = AIOKafkaConsumer(
            **self.client_options,
            client_id=f"{self.client_id}-dlq",
            group_id=DEAD_LETTER_READERS,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=self._timeout_ms,
        )
        try:
            await self._call("dead letters", start_client(reader, None))
            return await self._call("dead letters", self._read_dead_letters(reader, tps, limit))
        finally:
            await stop_client(reader)

    async def _read_dead_letters(
        self, reader: Any, tps: list[TopicPartition], limit: int
    ) -> list[bytes]:
        reader.assign(tps)
        end = await reader.end_offsets(tps)
        out: list[bytes] = []
        last: dict[TopicPartition, int] = {}
        while len(out) < limit:
            positions = {tp: await reader.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps):
                break
            batch = await reader.getmany(timeout_ms=200, max_records=limit - len(out))
            for tp, records in batch.items():
                for rec in records:
                    out.append(bytes(rec.value or b""))
                    last[tp] = rec.offset
        if last:
            await reader.commit({tp: off + 1 for tp, off in last.items()})
        return out


SPEC = TransportSpec(
    name="kafka",
    schemes=tuple(PROTOCOLS),
    options=KafkaOptions,
    factory=KafkaTransport,
    url_params=URL_PARAMS,
)

__all__ = [
    "INBOX_PREFIX",
    "REPLIES",
    "SPEC",
    "KafkaOptions",
    "KafkaTransport",
    "shared_inbox",
    "shared_partition",
]
