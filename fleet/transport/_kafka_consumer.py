"""The worker side of the Kafka transport: a group consumer that hands out
records as :class:`Delivery` objects and commits what was acked, and a tail
consumer (no group) for inboxes and heartbeats.

Fetching. Where the transport has its own connections (no SASL), records are
fetched by :class:`fleet.transport._kafka_wire.Fetcher` (group consumers) and
:class:`fleet.transport._kafka_wire.Tail` (tail consumers); aiokafka's
consumer keeps the group, with its partitions paused, and is polled now and
then for its coordinator's errors. A fetch's records are handed out in the
turn that read them when nothing stands in the way (the fetch loop handing
out, a hold, no room, an assignment being set up, records not yet claimed);
else the fetch loop hands them out. Without those connections aiokafka's
``getmany`` fetches, with the same hand-out.

Commits. Each partition keeps, per assignment, the offsets handed out and not
yet committed in order. ``ack`` marks one done; the committed offset is the
highest *contiguous* done offset + 1, so a slow record holds back the commit of
later ones (they are delivered again after a crash; processing is idempotent
and the client drops duplicate replies by id). A committer task commits soon
after acks (``COMMIT_LINGER``), only partitions this consumer still owns.
Where the transport has its own connections, a commit goes on them to the
group's coordinator, in the generation aiokafka's coordinator joined; one
the broker refuses there is made again by aiokafka's commit, whose errors
and retries stand.

Attempts. Kafka keeps no delivery count, and a record read again after a crash
or a rebalance is the very same record, so a header cannot count redeliveries.
The count lives in the metadata string of the group's committed offset: before
records are handed out, the consumer commits its current offset again with
``fa1:<upto>=<count>,...``, meaning "offsets from the committed one up to
``upto`` have been handed out ``count`` times". A consumer that is assigned the
partition later (another worker, or this one after a rebalance) reads it and
hands those records out with ``attempt = count + 1``; past ``delivery_limit``
they go to the dead-letter topic instead. The header ``fleet-attempt`` carries
the attempt a record was *published* with (1 from clients); it is the base the
count is added to. So ``attempt`` is: how many times this consumer group has
handed the record out, counting this time, as far as the committed metadata
knows. It can undercount when the metadata commit itself fails (best effort).
That commit is one round trip to the group coordinator per fetch, however
many partitions the fetch brought records from (0.5-1.0 ms p50, 1.7-3.9 ms
p99 at 1,000 records/s on one loopback broker, about one record per fetch);
while it is under way, aiokafka's fetcher is already fetching the partition's
next records.

Claims. At everyday load a fetch brings a record or two, and that round trip
would be on every record's path. So when a partition's fetch reached the end
of its log, its hand-out commit counts ``CLAIM_AHEAD`` offsets past the last
record as handed out too, and the records that arrive next are handed out
with no commit of their own until one passes the claim: one commit per
``CLAIM_AHEAD`` records. The price is paid after a crash only: records that
arrived within the claim and were never handed out come back with their
attempt one higher than their deliveries (at most one per crash). A backlog
is never claimed ahead (it would count records that exist and wait), so a
crash loop on a record at the head of a backlog counts no more records than
those handed out with it. Acks' commits carry the claim; a revoke's drops it,
and so does the first commit after a reconnect or a rewind, which count again
only what was handed out.
A rebalance takes partitions from consumers that are alive: the revoke
commits the counts as they were before this assignment handed anything out,
so a record its worker was still busy with is delivered to the new owner with
the attempt it had (a crash never reaches the revoke, so it is counted). From
the revoke until the next assignment is set up, no fetched record is handed
out or held: the next assignment reads its partitions from their committed
offsets, and a record of the old one claimed into it would skip the ones
before it.

Hand-backs. ``requeue`` publishes the record again at the end of its topic
with the ``fleet-attempt`` header one higher (past ``delivery_limit``: to the
dead letters), then marks the original offset done, so the partition's
commit moves on at once. ``reject`` publishes to the dead letters. Either
publish is retried; if it keeps failing, the partition is rewound to its
committed offset and what this consumer handed out from it and did not ack
is read again with its attempt counted: a record is never left unsettled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
)

from fleet.contract import Priority
from fleet.eventloop import cancel_and_wait
from fleet.logging import get_logger
from fleet.transport._kafka_common import (
    ConsumerHost,
    format_attempts,
    header_attempt,
    parse_attempts,
)
from fleet.transport._kafka_security import AUTHORIZATION_ERRORS
from fleet.transport._kafka_start import start_client, stop_client
from fleet.transport._kafka_wire import Fetcher, Tail, offset_commit_request
from fleet.transport.base import Consumer, Delivery, OnBytes, OnDelivery

log = get_logger("fleet.transport.kafka")

_MAX_SEGMENTS = 32
_HAND_BACK_TRIES = 3
REVOKE_GRACE = 1.0  # seconds a revoke waits for in-flight records to be acked
DRAIN_TIMEOUT = 30.0  # seconds a cancelled consumer stays in its group for late acks
POLL_MS = 200
# How long one getmany waits for records. Under load a closed loop of 256
# requests in flight on one worker saw fetches whose records came only at the
# end of the wait (p90 of the call 1 s with a 1,000 ms wait, and 270-1,200
# req/s); a 100 ms wait bounded that stall (3,300-4,500 req/s in the same
# runs) for a few more idle wake-ups (an idle worker 1.9% of a core, against
# 1.4%). The cause was found later: a worker holding as much as it may pauses
# its consumers, and resume() left the partitions paused until this loop came
# round, so a getmany under way fetched nothing for the rest of its wait.
# resume() now resumes them at once; the short wait stays as a bound.
FETCH_POLL_MS = 100
# How long one getmany waits after one that returned nothing (and the consumer
# was not full or paused meanwhile). A record that arrives ends the wait at
# once: the fetcher wakes its waiters when a fetch brings records, whatever the
# timeout. The stall above came under load only, so an idle consumer polls
# ten times less often.
FETCH_IDLE_POLL_MS = 1000
# How long the broker holds an empty fetch. A record that arrives meanwhile
# ends the wait at once (fetch.min.bytes is 1), so this costs no latency; a
# short hold only sends an idle consumer's fetches more often. The cost of a
# long one: a fetch from a new position (a rewind) waits for the held fetch to
# come back; at 2,000 ms the test of a worker joining and leaving a group under
# load took 17 s, against 9 s at 500 and 1,000 ms. With 1,000 ms and
# FETCH_IDLE_POLL_MS an idle worker uses 1.2-1.6% of a core, against 2.3-2.9%
# with 500 ms and polls of 100 ms.
FETCH_MAX_WAIT_MS = 1000
# how often aiokafka's fetch routine wakes, unprompted, over partitions it never fetches
PAUSED_FETCHER_WAKE_MS = 30_000
# How long acks wait to be committed, so that one commit carries many. Under
# load each batch's hand-out commit carries them sooner; the commits of acks
# alone would otherwise queue at the group coordinator ahead of the hand-out
# commits that records wait on. A crash reads again at most the records acked
# in this window: recomputed, and their duplicate replies dropped by id.
COMMIT_LINGER = 0.5
# How many offsets past its last record the hand-out commit of a caught-up
# partition counts as handed out (see "Claims" above).
CLAIM_AHEAD = 64
# How long a group consumer whose commit on the data path failed (refused, or
# its coordinator unanswering) leaves its commits to aiokafka, unless the
# group's coordinator or generation changes first.
WIRE_COMMIT_BACKOFF = 30.0


def _next_wait(batch: dict[Any, Any]) -> int:
    """How long the next getmany waits, after one that returned ``batch``."""
    return FETCH_POLL_MS if batch else FETCH_IDLE_POLL_MS


@dataclass(eq=False, slots=True)
class _Partition:
    """What one consumer knows of one partition during one assignment."""

    tp: TopicPartition
    next_commit: int | None  # committed offset to write next; None: not known yet
    prior: list[tuple[int, int]]  # delivery counts read at assignment
    pending: dict[int, bool] = field(default_factory=dict)  # handed out: offset -> done
    handed_upto: int = -1
    given_upto: int = -1  # of those, the last that reached a handler or the dead letters
    claim_upto: int = -1  # counted as handed out in the commits from now on
    claimed_upto: int = -1  # of those, in a commit that succeeded
    live: bool = True  # acks and commits count
    void: bool = False  # rewound: its open deliveries no longer count as outstanding
    open: bool = True  # more records may be handed out
    dirty: bool = False

    def prior_count(self, offset: int) -> int:
        for upto, count in self.prior:
            if offset <= upto:
                return count
        return 0

    def metadata(self, *, count_handed: bool = True, count_claim: bool = True) -> str:
        """Delivery counts of offsets from ``next_commit`` on, as of now;
        without ``count_handed``, as if this assignment handed nothing out;
        without ``count_claim``, counting only what reached a handler (not
        what it claimed ahead, nor records whose hand-out commit is still
        under way)."""
        handed = -1
        if count_handed:
            handed = max(self.handed_upto, self.claim_upto) if count_claim else self.given_upto
        segs: list[tuple[int, int]] = []
        lo = -1
        for upto, count in self.prior:
            if lo < handed:
                segs.append((min(upto, handed), count + 1))
            if upto > handed:
                segs.append((upto, count))
            lo = upto
        if handed > lo:
            segs.append((handed, 1))
        start = self.next_commit or 0
        merged: list[tuple[int, int]] = []
        for upto, count in segs:
            if upto < start:
                continue
            if merged and merged[-1][1] == count:
                merged[-1] = (upto, count)
            else:
                merged.append((upto, count))
        while len(merged) > _MAX_SEGMENTS:  # keep it short: merge, keeping the higher count
            a, b = merged[0], merged[1]
            merged[:2] = [(b[0], max(a[1], b[1]))]
        return format_attempts(merged)

    def counts_so_far(self) -> list[tuple[int, int]]:
        """The delivery counts a fresh start of this partition begins with (a
        reconnect or a rewind): what reached a handler counted once more, what
        was only claimed ahead, or not yet dispatched, not (the fresh start's
        first commit drops the claim from the group's metadata)."""
        return parse_attempts(self.metadata(count_claim=False))

    def mark_done(self, offset: int) -> bool:
        if not self.live or offset not in self.pending:
            return False
        self.pending[offset] = True
        advanced = False
        while self.pending:
            first = next(iter(self.pending))
            if not self.pending[first]:
                break
            del self.pending[first]
            self.next_commit = first + 1
            advanced = True
        if advanced:
            self.dirty = True
        return advanced


_Claim = tuple[_Partition, int, list[tuple[Any, int]]]
"""A partition, where it stood before, and its records claimed, with their attempts."""


class KafkaDelivery(Delivery):
    def __init__(
        self, consumer: GroupConsumer, part: _Partition, record: Any, attempt: int
    ) -> None:
        self.body = bytes(record.value or b"")
        self.model = consumer.model
        self.priority = consumer.priority
        self.attempt = attempt
        self.record = record
        self._consumer = consumer
        self._part = part
        self._generation = consumer.generation
        self._settled = False

    async def ack(self) -> None:
        self._settle()

    async def reject(self) -> None:
        """Dead-letter it. A dead-letter publish that keeps failing hands the
        record back instead (:meth:`requeue`), never leaving it unsettled."""
        if self._settled:
            return
        if not self._part.live:  # a revoked partition's records go to their new owner
            self._settle()
            return
        self._settled = True
        await self._consumer.hand_back(self, dead="rejected")

    async def requeue(self) -> None:
        """Publish the record again at the end of its topic with the attempt
        one higher (past ``delivery_limit``: to the dead letters), then mark
        this offset done. Kafka cannot redeliver one record: seeking back would
        deliver every later record of the partition again too (work in
        flight, counted as a failed attempt), while a copy touches only this
        one and never holds the partition's commit back. If the publish keeps
        failing, the partition is rewound to its committed offset instead."""
        if self._settled:
            return
        if not self._part.live:
            self._settle()
            return
        self._settled = True
        dead = "delivery-limit" if self.attempt >= self._limit else None
        await self._consumer.hand_back(self, dead=dead)

    @property
    def part(self) -> _Partition:
        return self._part

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def _limit(self) -> int:
        return self._consumer.delivery_limit

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        self.mark_settled()

    def mark_settled(self) -> None:
        self._consumer.settled(self._part, self.record.offset, self._generation)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: GroupConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._consumer.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._consumer.on_assigned(set(assigned))


class GroupConsumer(Consumer):
    """One member of the consumer group of one request topic."""

    def __init__(
        self,
        transport: ConsumerHost,
        model: str,
        priority: Priority,
        topic: str,
        on_delivery: OnDelivery,
        prefetch: int,
        *,
        group: str | None = None,
        delivery_limit: int | None = None,
    ) -> None:
        self.transport = transport
        self.model = model
        self.priority = priority
        self.topic = topic
        self.group = group or topic
        self.delivery_limit = delivery_limit or transport.options.delivery_limit
        self.on_delivery = on_delivery
        self.prefetch = max(1, prefetch)
        self.outstanding = 0
        self.fetches = 0  # getmany calls (idle wake-ups too)
        self.claim_commits = 0  # commits made before a hand-out
        self.generation = 0  # one more after each reconnect: older deliveries are void
        self._parts: dict[TopicPartition, _Partition] = {}
        self._kafka: Any = None
        self._fetcher: Fetcher | None = None  # the transport's own fetches, where it has them
        self._next_poll = 0.0  # when _step_wire next polls aiokafka's consumer
        self._handing = False  # records being handed out: wait for it
        self._loop_task: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._dirty = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._assigned_once = asyncio.Event()
        # an authorization error before the first assignment: the group is
        # refused to us, and start() raises it rather than waiting on
        self._refused: KafkaError | None = None
        self._refusal = asyncio.Event()
        # clear from a revoke until the assignment listener is done: aiokafka
        # may fetch for new partitions while the listener still runs
        self._assignment_ready = asyncio.Event()
        self._idle_reason: str | None = None
        self._stopping = False
        self._held = False  # paused: stay in the group, fetch nothing
        self._shutdown_task: asyncio.Task[None] | None = None
        # the coordinator and generation a commit on the data path failed in, and when
        self._wire_failed: tuple[int, int, float] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(
        self, start_timeout: float, join_timeout: float, session_timeout: float
    ) -> None:
        session_ms = int(session_timeout * 1000)
        self._kafka = AIOKafkaConsumer(
            **self.transport.client_options,
            client_id=f"{self.transport.client_id}-{self.topic}",
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # a member that dies is noticed after the session timeout, so its
            # partitions stay silent that long: keep it short (see
            # KafkaOptions.session_timeout); stop() leaves the group at once
            # (LeaveGroup), so a clean exit costs no timeout
            heartbeat_interval_ms=max(100, session_ms // 3),
            session_timeout_ms=session_ms,
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            retry_backoff_ms=100,
            # a group formed while a new topic's metadata was still empty is
            # re-balanced once the metadata shows its partitions
            metadata_max_age_ms=3_000,
            # on the own data path aiokafka's partitions stay paused, and its
            # fetch routine, woken by every event it waits for (a resume, an
            # assignment, a position lookup), need not also wake 5 times a second
            consumer_timeout_ms=200 if self.transport.wire is None else PAUSED_FETCHER_WAKE_MS,
        )
        await start_client(self._kafka, start_timeout, on_break=self.transport.probe_soon)
        if self.transport.wire is not None:
            self._fetcher = Fetcher(
                self.transport.wire,
                self.topic,
                max_wait_ms=FETCH_MAX_WAIT_MS,
                retry_interval=self.transport.options.reconnect_interval,
                on_fetched=self._take_now,
            )
        self._kafka.subscribe([self.topic], listener=_Listener(self))
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._run(), name=f"kafka-consume-{self.topic}")
        self._committer = loop.create_task(self._commit_loop(), name=f"kafka-commit-{self.topic}")
        waits = [loop.create_task(e.wait()) for e in (self._assigned_once, self._refusal)]
        try:
            await asyncio.wait(waits, timeout=join_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if self._refused is not None:
            raise self._refused

    def idle_reason(self) -> str | None:
        return self._idle_reason

    async def pause(self) -> None:
        """Fetch nothing more, but stay in the group with the partitions
        assigned: unlike leaving, this costs no rebalance."""
        self._held = True
        if self._fetcher is not None:
            self._fetcher.pause()
        elif self._kafka is not None and not self._stopping:
            self._kafka.pause(*self._kafka.assignment())

    async def resume(self) -> None:
        """Fetch again, at once: the partitions are resumed here, not when the
        fetch loop next comes round (it may be inside a wait for records that
        paused partitions never bring)."""
        self._held = False
        if self._kafka is not None and not self._stopping and self.outstanding < self.prefetch:
            if self._fetcher is not None:
                self._fetcher.resume()
            else:
                self._kafka.resume(*self._kafka.paused())
        self._room.set()

    async def cancel(self) -> None:
        """Stop fetching. Records handed out may still be acked: the consumer
        stays in its group until they are (at most ``DRAIN_TIMEOUT``)."""
        if self._stopping:
            return
        self._stopping = True
        await self._stop_loop()
        if self.outstanding == 0:
            await self.shutdown()
        else:
            self._finisher = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wait_settled(), DRAIN_TIMEOUT)
        await self.shutdown()

    async def _wait_settled(self) -> None:
        while self.outstanding > 0:
            self._room.clear()
            await self._room.wait()

    async def _stop_loop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            await cancel_and_wait(task)

    async def shutdown(self, *, cancel_handlers: bool = False) -> None:
        """Commit what is done and leave the group. Idempotent, and every caller
        returns only once it is done: the work runs in a task of its own, so a
        second caller (the transport closing while a drain is finishing) waits
        for it rather than going on while the consumer is still in its group,
        and cancelling a caller does not leave it half done."""
        if cancel_handlers:
            handlers = list(self._tasks)
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        if self._shutdown_task is None:
            self._stopping = True
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self._shutdown(), name=f"kafka-shutdown-{self.topic}"
            )
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        await self._stop_loop()
        finisher = self._finisher
        if finisher is not None and finisher is not asyncio.current_task():
            finisher.cancel()
        if self._committer is not None:
            await cancel_and_wait(self._committer)
        try:
            await asyncio.wait_for(self._commit(list(self._parts.values())), 5.0)
        except TimeoutError:
            log.warning("final commit timed out", topic=self.topic)
        for part in self._parts.values():
            part.live = False
        self._parts.clear()
        if self._fetcher is not None:
            await self._fetcher.stop()
        if self._kafka is not None:
            await stop_client(self._kafka)
        self.transport.forget_consumer(self)

    # ------------------------------------------------------------------ rebalance
    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._assignment_ready.clear()
        parts = [p for tp, p in self._parts.items() if tp in revoked]
        for p in parts:
            p.open = False  # hand out nothing more from it
        loop = asyncio.get_running_loop()
        end = loop.time() + REVOKE_GRACE
        # give in-flight records a moment to be acked, so the new owner does not
        # compute them again; what is not done by then is abandoned to it
        while any(not all(p.pending.values()) for p in parts) and loop.time() < end:
            await asyncio.sleep(0.02)
        # this consumer is alive and gives them back: what it still holds was
        # not failed, so the new owner delivers it with the attempt it had
        await self._commit(parts, count_handed=False)
        for p in parts:
            p.live = False
            self._parts.pop(p.tp, None)
        if self._fetcher is not None:
            self._fetcher.revoke([tp.partition for tp in revoked if tp.topic == self.topic])
        if parts:
            log.info(
                "partitions revoked", topic=self.topic, partitions=[p.tp.partition for p in parts]
            )

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        mine = sorted((tp for tp in assigned if tp.topic == self.topic), key=lambda t: t.partition)
        if self._fetcher is not None and self._kafka is not None:
            self._kafka.pause(*assigned)  # the transport's own fetches read them
        committed: dict[TopicPartition, Any] = {}
        if mine:
            try:
                committed = await self.transport.committed(self.group, mine)
            except Exception as exc:  # counts start afresh; never block the assignment
                log.warning("could not read committed offsets", topic=self.topic, error=repr(exc))
        for tp in mine:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            prior = parse_attempts(meta.metadata if meta is not None else None)
            self._parts[tp] = _Partition(tp=tp, next_commit=offset, prior=prior)
        if self._fetcher is not None and mine:
            await self._fetcher.assign({tp.partition: self._parts[tp].next_commit for tp in mine})
        if mine:
            if self._idle_reason is not None:
                log.info("partitions assigned again", topic=self.topic)
            self._idle_reason = None
        else:
            total = len(self._kafka.partitions_for_topic(self.topic) or ()) if self._kafka else 0
            members = await self.transport.group_members(self.group)
            who = f"{members} consumers" if members is not None else "more consumers"
            reason = f"no partitions assigned: {who} for {total} partitions of {self.topic}"
            if self._idle_reason is None:
                log.warning("consumer idle", topic=self.topic, reason=reason)
            self._idle_reason = reason
        self._assignment_ready.set()
        self._assigned_once.set()

    def abandon_in_flight(self) -> None:
        """After a lost connection: what was handed out and not acked is given
        up (its acks become no-ops) and read again from the committed offset,
        with an attempt one higher, as a broker that lost the consumer would."""
        if self._stopping or self._kafka is None:
            return
        self.generation += 1
        self.outstanding = 0
        self._room.set()
        owned = self._kafka.assignment()
        for tp, old in list(self._parts.items()):
            if tp not in owned or old.next_commit is None or not old.pending:
                continue  # nothing handed out is open there
            old.open = old.live = False
            self._parts[tp] = _Partition(
                tp=tp, next_commit=old.next_commit, prior=old.counts_so_far()
            )
            self._seek(tp, old.next_commit)
            log.info("abandoned in-flight records", topic=self.topic, partition=tp.partition)

    # ------------------------------------------------------------------ fetching
    async def _run(self) -> None:
        wait_ms = FETCH_POLL_MS
        while not self._stopping:
            try:
                if self._fetcher is not None:
                    wait_ms = await self._step_wire(self._fetcher, wait_ms)
                else:
                    wait_ms = await self._step(self._kafka, wait_ms)
            except asyncio.CancelledError:
                raise
            except ConsumerStoppedError:
                return
            except AUTHORIZATION_ERRORS as exc:
                if not self._assigned_once.is_set():  # refused from the start: start() raises
                    self._refused = exc
                    self._refusal.set()
                    return
                # granted before, revoked now: an operator may grant it again
                log.error(
                    "fetch refused by the broker's ACLs; retrying",
                    topic=self.topic,
                    error=repr(exc),
                )
                await asyncio.sleep(self.transport.options.reconnect_interval)
            except KafkaError as exc:
                log.warning("fetch failed; retrying", topic=self.topic, error=repr(exc))
                await asyncio.sleep(self.transport.options.reconnect_interval)
            except Exception:
                log.exception("consumer loop failed; retrying", topic=self.topic)
                await asyncio.sleep(self.transport.options.reconnect_interval)

    async def _step(self, kafka: Any, wait_ms: int) -> int:
        """One round of the fetch loop on aiokafka's fetches: the next wait."""
        assigned = list(kafka.assignment())
        if self._held or self.outstanding >= self.prefetch:
            # full or paused: keep polling (group liveness) but fetch nothing
            if assigned:
                kafka.pause(*assigned)
            await kafka.getmany(timeout_ms=0)
            await self._wait_for_room()
            return FETCH_POLL_MS
        paused = list(kafka.paused())
        if paused:
            kafka.resume(*paused)
        room = self.prefetch - self.outstanding
        batch = await kafka.getmany(timeout_ms=wait_ms, max_records=room)
        self.fetches += 1
        fetched = {tp: records for tp, records in batch.items() if records}
        if fetched and self._held:  # paused during the fetch: read them later
            self._put_back(fetched)
        elif fetched:
            await self._hand_out(fetched)
        return _next_wait(batch)

    async def _step_wire(self, fetcher: Fetcher, wait_ms: int) -> int:
        """One round of the fetch loop on the transport's own fetches (which
        go on ahead in the background): aiokafka's consumer only keeps the
        group, its partitions always paused, and is polled now and then for
        the errors its coordinator raises and for the group's liveness."""
        kafka = self._kafka
        now = asyncio.get_running_loop().time()
        if now >= self._next_poll:
            self._next_poll = now + FETCH_IDLE_POLL_MS / 1000  # at most this often
            if unpaused := kafka.assignment() - kafka.paused():  # new since the last poll
                kafka.pause(*unpaused)
            await kafka.getmany(timeout_ms=0)
        if self._held or self.outstanding >= self.prefetch:
            fetcher.pause()
            await self._wait_for_room()
            return FETCH_POLL_MS
        fetcher.resume()
        if self._handing:  # a hand-out task commits first: it wakes this loop when done
            await self._wait_for_room()
            return FETCH_POLL_MS
        if not self._assignment_ready.is_set():  # no coroutine per round when it is
            await self._await_assignment()
            return FETCH_POLL_MS
        if not await fetcher.wait(wait_ms):
            self.fetches += 1
            return FETCH_IDLE_POLL_MS
        if (
            self._handing
            or self._held
            or self.outstanding >= self.prefetch
            or not self._assignment_ready.is_set()
        ):
            return FETCH_POLL_MS  # changed during the wait: the next round sees to it
        self.fetches += 1
        batch = fetcher.take(self.prefetch - self.outstanding)
        await self._hand_out({TopicPartition(self.topic, p): rs for p, rs in batch.items()})
        return FETCH_POLL_MS

    async def _await_assignment(self) -> None:
        """Wait a moment for a rebalance to end (from the revoke until the
        next assignment is set up). The fetch loop
        on the transport's own fetches takes no records meanwhile: those of
        the assignment that is ending, claimed into the next one, would move
        its hand-out position past the records it reads again from the
        committed offset, and the commit would pass those without their ever
        being handed out. (aiokafka's ``getmany`` returns none of an ending
        assignment, and is polled meanwhile: it raises the group's errors.)"""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._assignment_ready.wait(), POLL_MS / 1000)

    async def _wait_for_room(self) -> None:
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), POLL_MS / 1000)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        if self._fetcher is not None:
            self._fetcher.seek(tp.partition, offset)
        else:
            self._kafka.seek(tp, offset)

    async def _hand_out(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Hand out one fetch's records, every partition's counts committed
        first in one commit (not one per partition, each a round trip to the
        group coordinator that the later partitions' records would wait on).
        Records fetched while a rebalance began are put back (see
        :meth:`_await_assignment`), never held until it ends and claimed then."""
        if not self._assignment_ready.is_set():
            self._put_back(fetched)
            return
        self._handing = True
        try:
            claims = [c for tp, records in fetched.items() if (c := self._claim(tp, records))]
            if claims:
                await self._hand_out_claims(claims)
        finally:
            self._handing = False

    def _put_back(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Read these records again later: each partition still assigned is
        sought back to its first one. Such records are of the current
        assignment: aiokafka returns none while a reassignment is under way,
        and the transport's own fetch loop takes none then."""
        owned = self._kafka.assignment() if self._kafka is not None else ()
        for tp, records in fetched.items():
            if tp in owned:
                self._seek(tp, records[0].offset)

    async def _hand_out_claims(self, claims: list[_Claim]) -> None:
        self._handing = True
        try:
            # record that these were handed out before handing them out
            # (attempt counts), unless an earlier commit claimed them already
            unclaimed = [part for part, _before, _todo in claims if self._unclaimed(part)]
            if unclaimed:
                for part in unclaimed:
                    part.claim_upto = part.handed_upto + self._ahead(part)
                self.claim_commits += 1
                if await self._commit(unclaimed):
                    for part in unclaimed:
                        if part.live:
                            part.claimed_upto = max(part.claimed_upto, part.claim_upto)
            for part, before, todo in claims:
                for rec, attempt in self._start(part, before, todo):
                    await self._over_limit(part, rec, attempt)
        finally:
            self._handing = False
            self._room.set()  # the loop may take what came meanwhile

    @staticmethod
    def _unclaimed(part: _Partition) -> bool:
        return part.handed_upto > part.claimed_upto

    def _take_now(self) -> None:
        """Hand out a fetch's records in the turn they arrived (no task, no
        wake-up of the fetch loop), unless something stands in the way: a
        hand-out under way, a hold, no room, an assignment being set up.
        Records not claimed yet are handed out by a task, after their commit."""
        fetcher = self._fetcher
        if (
            fetcher is None
            or self._handing
            or self._held
            or self._stopping
            or self.outstanding >= self.prefetch
            or not self._assignment_ready.is_set()
        ):
            return  # the fetch loop takes them
        batch = fetcher.take(self.prefetch - self.outstanding)
        self.fetches += 1
        claims = [
            c
            for p, records in batch.items()
            if (c := self._claim(TopicPartition(self.topic, p), records))
        ]
        if any(self._unclaimed(part) for part, _before, _todo in claims):
            self._handing = True
            self._spawn(self._hand_out_claims(claims))
            return
        for part, before, todo in claims:
            for rec, attempt in self._start(part, before, todo):
                self._spawn(self._over_limit(part, rec, attempt))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ahead(self, part: _Partition) -> int:
        """How far past its last record a partition's hand-out commit claims:
        ``CLAIM_AHEAD`` if the fetch reached the log's end (what it claims does
        not exist yet), else 0 (a backlog is never counted before it is read)."""
        kafka = self._kafka
        if kafka is None or part.tp not in kafka.assignment():
            return 0  # moved meanwhile: the commit skips it anyway
        if self._fetcher is not None:
            end = self._fetcher.highwater(part.tp.partition)
        else:
            end = kafka.highwater(part.tp)
        return CLAIM_AHEAD if end is not None and end <= part.handed_upto + 1 else 0

    def _claim(self, tp: TopicPartition, records: list[Any]) -> _Claim | None:
        """Mark a partition's new records handed out: the partition, where it
        stood before, and each record with its attempt; ``None``: none to hand out."""
        part = self._parts.get(tp)
        if part is None and tp in self._kafka.assignment():
            self._seek(tp, records[0].offset)  # not set up yet: read them again
            return None
        if part is None or not part.open:
            return None  # revoked meanwhile: the new owner reads these again
        before = part.handed_upto
        todo: list[tuple[Any, int]] = []
        for rec in records:
            if rec.offset <= part.handed_upto:
                continue
            if part.next_commit is None:
                part.next_commit = rec.offset
            part.pending[rec.offset] = False
            part.handed_upto = rec.offset
            todo.append((rec, header_attempt(rec.headers) + part.prior_count(rec.offset)))
        return (part, before, todo) if todo else None

    def _start(
        self, part: _Partition, before: int, todo: list[tuple[Any, int]]
    ) -> list[tuple[Any, int]]:
        """Start a handler for each claimed record (once its count is
        committed); the records past the delivery limit are returned, for the
        caller to dead-letter (:meth:`_over_limit`)."""
        if not part.open:  # revoked while committing: none of these was handed out
            part.handed_upto = before
            for rec, _attempt in todo:
                part.pending.pop(rec.offset, None)
            return []
        part.given_upto = todo[-1][0].offset
        limit = self.delivery_limit
        over: list[tuple[Any, int]] = []
        for rec, attempt in todo:
            if attempt > limit:
                over.append((rec, attempt))
                continue
            self.outstanding += 1
            self._spawn(self._deliver(KafkaDelivery(self, part, rec, attempt)))
        return over

    async def _over_limit(self, part: _Partition, rec: Any, attempt: int) -> None:
        log.warning(
            "delivery limit reached; dead-lettering",
            topic=self.topic,
            partition=part.tp.partition,
            offset=rec.offset,
            attempt=attempt,
        )
        try:
            await self.transport.dead_letter(rec, "delivery-limit", attempt)
        except Exception as exc:
            log.warning("dead-lettering failed", topic=self.topic, error=repr(exc))
            return  # left pending: read again after a rebalance or restart
        if part.mark_done(rec.offset):
            self._dirty.set()

    async def _deliver(self, delivery: KafkaDelivery) -> None:
        try:
            await self.on_delivery(delivery)
        except Exception:
            log.exception("delivery handler failed", topic=self.topic)

    def settled(self, part: _Partition, offset: int, generation: int) -> None:
        if generation == self.generation and not part.void:
            self.outstanding -= 1
            self._room.set()
        if part.mark_done(offset):
            self._dirty.set()

    async def hand_back(self, delivery: KafkaDelivery, *, dead: str | None) -> None:
        """Publish ``delivery``'s record to the dead letters (``dead``: why) or again
        to its topic with the attempt one higher, retrying; then settle it.
        If that keeps failing, its partition is rewound (:meth:`rewind`)."""
        record, attempt = delivery.record, delivery.attempt
        last: Exception | None = None
        for i in range(_HAND_BACK_TRIES):
            if i:
                await asyncio.sleep(self.transport.options.reconnect_interval)
            try:
                if dead is not None:
                    await self.transport.dead_letter(record, dead, attempt)
                else:
                    await self.transport.republish(record, attempt + 1)
            except Exception as exc:
                last = exc
                continue
            delivery.mark_settled()
            return
        log.warning(
            "could not hand a record back; rewinding its partition",
            topic=self.topic,
            partition=record.partition,
            offset=record.offset,
            error=repr(last),
        )
        self.rewind(delivery.part, delivery.generation)

    def rewind(self, old: _Partition, generation: int) -> None:
        """Give up what was handed out from one partition and not acked (its
        acks become no-ops) and read it again from the committed offset, with
        an attempt one higher, as after a lost consumer."""
        if self._stopping or self._kafka is None or generation != self.generation:
            return
        tp = old.tp
        if self._parts.get(tp) is not old or tp not in self._kafka.assignment():
            return  # revoked or rewound meanwhile: its owner reads it again
        if old.next_commit is None:
            return
        self.outstanding -= sum(1 for done in old.pending.values() if not done)
        old.void = True
        old.open = old.live = False
        self._room.set()
        self._parts[tp] = _Partition(tp=tp, next_commit=old.next_commit, prior=old.counts_so_far())
        self._seek(tp, old.next_commit)
        log.info("rewound a partition", topic=self.topic, partition=tp.partition)

    # ------------------------------------------------------------------ commits
    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COMMIT_LINGER)
            self._dirty.clear()
            await self._commit([p for p in self._parts.values() if p.dirty])

    async def _commit(self, parts: Iterable[_Partition], *, count_handed: bool = True) -> bool:
        offsets = {
            p.tp: (p.next_commit, p.metadata(count_handed=count_handed))
            for p in parts
            if p.live and p.next_commit is not None
        }
        if not offsets or self._kafka is None:
            return True
        async with self._commit_lock:
            owned = self._kafka.assignment()
            offsets = {tp: v for tp, v in offsets.items() if tp in owned}
            if not offsets:
                return False
            try:
                if not await self._commit_on_wire(offsets):
                    await self._kafka.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                log.info("commit skipped: partitions moved", topic=self.topic, error=repr(exc))
                return False
            except KafkaError as exc:
                log.warning("commit failed", topic=self.topic, error=repr(exc))
                for tp in offsets:
                    part = self._parts.get(tp)
                    if part is not None:
                        part.dirty = True
                return False
        for tp, (offset, _meta) in offsets.items():
            part = self._parts.get(tp)
            if part is not None and part.next_commit == offset:
                part.dirty = False  # unless an ack moved it on meanwhile
        return True

    async def _commit_on_wire(self, offsets: dict[TopicPartition, tuple[int, str]]) -> bool:
        """Commit ``offsets`` on the transport's own connection to the group's
        coordinator, in the generation aiokafka's coordinator joined: True
        when the broker took every one. Else False, and aiokafka's commit does
        it, with its coordinator lookup, retries and errors: without those
        connections, while the coordinator or the generation is not known, and
        on any error (a commit of the same offsets twice is harmless), and
        then for ``WIRE_COMMIT_BACKOFF`` seconds unless the coordinator or
        the generation changes."""
        wire = self.transport.wire
        coordinator = getattr(self._kafka, "_coordinator", None)
        if wire is None or coordinator is None:
            return False
        node, generation, member = (
            coordinator.coordinator_id,
            coordinator.generation,
            coordinator.member_id,
        )
        if node is None or generation < 0 or not member:
            return False
        failed = self._wire_failed
        if failed is not None and failed[:2] == (node, generation):
            if time.monotonic() - failed[2] < WIRE_COMMIT_BACKOFF:
                return False
        by_partition = {(tp.topic, tp.partition): v for tp, v in offsets.items()}
        body = offset_commit_request(self.group, generation, member, by_partition)
        try:
            taken = not await wire.commit(node, body)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("commit on the data path failed; aiokafka commits", error=repr(exc))
            taken = False
        if not taken:
            # aiokafka's commits alone for a while, or until the coordinator
            # or the generation changes: a coordinator that does not answer
            # costs one timeout per commit, not two
            self._wire_failed = (node, generation, time.monotonic())
        return taken


class TailConsumer(Consumer):
    """Reads every partition of one topic from its end, without a group: an
    inbox, or the heartbeats every subscriber sees."""

    def __init__(
        self, transport: ConsumerHost, topic: str, on_bytes: OnBytes, *, key: bytes | None = None
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.on_bytes = on_bytes
        self.key = key  # only records with this key (an inbox on a shared topic)
        self.read_records = 0  # every record fetched, kept or not
        self._polls = 0  # getmany calls (idle wake-ups too)
        self.read_bytes = 0
        self.kept_bytes = 0  # of the records handed on
        self._wire: Tail | None = None  # the transport's own fetches, where it has them
        self._kafka: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._cancel_task: asyncio.Task[None] | None = None

    async def start(self, partitions: Sequence[int]) -> None:
        wire = self.transport.wire
        if wire is not None:
            self._wire = Tail(
                wire,
                self.topic,
                partitions,
                self._record,
                max_wait_ms=FETCH_IDLE_POLL_MS,  # a record ends the wait at once
                retry_interval=self.transport.options.reconnect_interval,
            )
            await self._wire.start()
            return
        self._kafka = AIOKafkaConsumer(
            **self.transport.client_options,
            client_id=f"{self.transport.client_id}-tail",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            retry_backoff_ms=100,
        )
        await start_client(self._kafka, None, on_break=self.transport.probe_soon)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._kafka.assign(tps)
        await self.reposition_at_end()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"kafka-tail-{self.topic}"
        )

    @property
    def fetches(self) -> int:
        """Fetches sent (idle wake-ups too)."""
        return self._wire.fetches if self._wire is not None else self._polls

    async def pause(self) -> None:
        """Read nothing until :meth:`resume`; the position is kept, so nothing
        published meanwhile is missed."""
        if self._wire is not None:
            self._wire.pause()
            return
        self._kafka.pause(*self._kafka.assignment())

    async def resume(self) -> None:
        if self._wire is not None:
            self._wire.resume()
            return
        self._kafka.resume(*self._kafka.paused())

    async def reposition_at_end(self) -> None:
        """Seek to the end and resolve the position now, so that nothing
        published after this returns is skipped."""
        if self._wire is not None:
            await self._wire.seek_to_end()
            return
        tps = list(self._kafka.assignment())
        await self._kafka.seek_to_end(*tps)
        for tp in tps:
            await self._kafka.position(tp)

    def _record(self, rec: Any) -> None:
        self.read_records += 1
        self.read_bytes += len(rec.value or b"") + len(rec.key or b"")
        if self.key is not None and rec.key != self.key:
            return
        self.kept_bytes += len(rec.value or b"") + len(rec.key or b"")
        try:
            self.on_bytes(bytes(rec.value or b""))
        except Exception:
            log.exception("subscriber callback failed", topic=self.topic)

    async def _run(self) -> None:
        wait_ms = FETCH_POLL_MS
        while not self._closed:
            try:
                batch = await self._kafka.getmany(timeout_ms=wait_ms)
                self._polls += 1
                wait_ms = _next_wait(batch)
            except asyncio.CancelledError:
                raise
            except ConsumerStoppedError:
                return
            except KafkaError as exc:
                log.debug("tail fetch failed; retrying", topic=self.topic, error=repr(exc))
                await asyncio.sleep(self.transport.options.reconnect_interval)
                continue
            for records in batch.values():
                for rec in records:
                    self._record(rec)

    async def cancel(self) -> None:
        """Stop and leave. Every caller returns only once that is done (see
        :meth:`GroupConsumer.shutdown`)."""
        if self._cancel_task is None:
            self._closed = True
            self._cancel_task = asyncio.get_running_loop().create_task(
                self._cancel(), name=f"kafka-tail-stop-{self.topic}"
            )
        await asyncio.shield(self._cancel_task)

    async def _cancel(self) -> None:
        if self._wire is not None:
            await self._wire.stop()
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._kafka is not None:
            await stop_client(self._kafka)
        self.transport.forget_consumer(self)


__all__ = ["GroupConsumer", "KafkaDelivery", "TailConsumer"]
