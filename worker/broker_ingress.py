"""The broker ingress: deliveries in, replies out, each message settled once.

For every broker message: decode → drop what expired → route each request to
its model version's pipeline → (the pipeline batches and infers) → publish the
replies (confirmed) → then ack. A message is acked only when every request it
carried has been answered (or dropped as expired), so a crash at any point
means redelivery, never loss.

Every message is settled: acked once answered; handed back to the broker
(``requeue``) when its replies could not be published after retries, so that
it is delivered again rather than held forever; dead-lettered when it cannot
be decoded, names a reply address that is no inbox (nothing is written
there), or is past its delivery limit (it has been in flight on workers that
died). The callers whose ids can still be read get a typed error at once.

Every item gets its own answer: whatever goes wrong while routing one request
becomes that request's typed error, and its neighbours are served.

A redelivered message that holds more than one request may hold the one that
killed the worker that had it; so its requests are published again, one per
message (same reply address, same ids), and the message is acked. From then on
each request has its own delivery count: a request that crashes every worker
that runs it is dead-lettered alone, and its former frame-mates are served.

The ingress is the :class:`~worker.pipeline.ReplySink` of every item it
produces, so it gets all of a batch's outcomes at once, and the replies of one
batch that go to the same reply address leave together, in as few frames as
fit the broker's message size limit. A single reply too large for the broker
is replaced by a ``LimitExceeded`` error reply.

What a worker holds (requests received and not yet answered, and their
messages' bytes) is bounded: past the bound it stops consuming, leaving the
rest in the broker for other workers, and consumes again once half is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleet import tracing, wire
from fleet.cache import CACHE_PARAM, DEFAULT_CACHE_TTL_S, ResultCache
from fleet.contract import ErrorInfo, ItemError, Priority, Reply, Request, Timings
from fleet.errors import DeadlineExceeded, FleetError, Internal, InvalidArgument, LimitExceeded
from fleet.eventloop import together
from fleet.jobs import OPEN_STATES, JobEvent, JobState, ResultStore, job_id_of, reply_of
from fleet.logging import get_logger
from fleet.payloads import (
    CLAIM,
    DEFAULT_CLAIM_THRESHOLD,
    PayloadStore,
    claim_reply,
    resolve_request,
)
from fleet.transport import (
    Capability,
    Consumer,
    DeadLetterTap,
    Delivery,
    Transport,
    is_reply_address,
)
from worker.ledger import Ledger
from worker.model_table import ModelTable
from worker.parked import Parked
from worker.pipeline import Item, Outcome, Pipeline
from worker.runtime import Feeds

log = get_logger("worker.broker_ingress")

_REPLY_ATTEMPTS = 4  # a reply that fails to publish is tried again after 0.25, 0.5, 1 s
# what a request's own content can make a runtime's checks raise: its caller's error
_INPUT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError)
_STOPPING = Internal("the worker is stopping")  # not an answer: the message goes back


@dataclass(eq=False, slots=True)
class _Message:
    """One broker message and the requests of it still unanswered."""

    delivery: Delivery
    reply_to: str
    remaining: int
    size: int
    dead_letter: bool = False
    failed: bool = False  # a reply could not be published: hand it back to the broker
    stages: bool = False  # its client reads replies with stage times (wire.FLAG_STAGES)
    claims: bool = False  # its client reads replies from the payload store (wire.FLAG_CLAIMS)


class BrokerIngress:
    """Consumes every served model's queues; publishes the replies and settles the messages."""

    def __init__(
        self,
        transport: Transport,
        table: ModelTable,
        ledger: Ledger,
        *,
        worker_id: str,
        max_message_bytes: int,
        prefetch: int | None = None,
        max_held_requests: int | None = None,
        max_held_bytes: int = 256 << 20,
        results: ResultStore | None = None,
        payloads: PayloadStore | None = None,
        claim_threshold: int = DEFAULT_CLAIM_THRESHOLD,
        cache: ResultCache | None = None,
        cache_ttl: float = DEFAULT_CACHE_TTL_S,
        notify: str | None = None,
    ) -> None:
        self._notify = notify
        self._cache, self._cache_ttl = cache, cache_ttl
        self._fills: set[asyncio.Task[None]] = set()
        self._transport = transport
        self._results = results
        self._payloads = payloads
        self._claim_threshold = claim_threshold
        self._table = table
        self._ledger = ledger
        self._worker_id = worker_id
        self._limits = wire.Limits(max_message_bytes=max_message_bytes)
        self._prefetch = prefetch
        self._max_held_requests = max_held_requests or 4 * table.max_batch_size()
        self._max_held_bytes = max_held_bytes
        self._consumers: list[Consumer] = []
        self._model_consumers: dict[str, list[Consumer]] = {}
        self._messages: set[_Message] = set()
        self._settling = 0  # messages whose ack (or reject, or requeue) is under way
        self._handling = 0  # deliveries not yet admitted (a job's start, a split, ...)
        self._held_requests = 0  # sum of remaining over _messages, kept as they change
        self._held_bytes = 0  # sum of size over _messages
        self._message_of: dict[Item, _Message] = {}
        self._closed = False
        self._stopped = False
        self._paused = False
        self._flow = asyncio.Lock()  # consuming and pausing, one at a time

    async def start(self) -> None:
        """Declare every model's queues and consume them (prefetch: 2x the model's max
        batch). Tracing starts here if the ``OTEL_*`` environment asks for it."""
        tracing.from_environment("fleet-worker")
        if self._notify is not None:  # a clash with what exists stops the worker here
            await self._transport.declare_notifications(self._notify)
        for model in self._table.models:
            await self._transport.declare_model(model)
        if self._cache is not None:  # clients look up answers under the version served now
            for model, version in self._table.latest.items():
                await self._cache.set_version(model, version)
        async with self._flow:
            await self._consume_all()

    async def _consume_all(self) -> None:
        await self._tap()
        for model in self._table.models:
            await self._consume(model)

    async def _consume(self, model: str) -> None:
        prefetch = self._prefetch or 2 * self._table.max_batch_size(model)
        for priority in Priority:
            consumer = await self._transport.consume(
                model, priority, self._on_delivery, prefetch=prefetch
            )
            self._consumers.append(consumer)
            self._model_consumers.setdefault(model, []).append(consumer)
            if self._paused:
                await consumer.pause()

    async def model_changed(self, model: str, new: bool) -> None:
        """The table's versions of ``model`` changed while serving: clients of
        the result cache look answers up under its default version from now
        on, and a model new to this worker gets its queues consumed."""
        if self._cache is not None:
            await self._cache.set_version(model, self._table.latest[model])
        if not new:
            return
        await self._transport.declare_model(model)
        async with self._flow:
            if not self._stopped:
                await self._consume(model)

    async def model_removed(self, model: str) -> None:
        """``model`` is unloaded: consume its queues no more (what was
        received is still answered)."""
        async with self._flow:
            consumers = self._model_consumers.get(model, [])
            self._consumers = [c for c in self._consumers if c not in consumers]
            for c in consumers:  # served until the broker confirms (see stop_consuming)
                await c.cancel()
            self._model_consumers.pop(model, None)

    async def _tap(self) -> None:
        """Jobs the broker dead-letters itself (past its delivery limit) end
        ``failed`` here: the worker never sees that delivery."""
        if self._results is not None and self._transport.can(Capability.DEAD_LETTER_TAP):
            assert isinstance(self._transport, DeadLetterTap)
            tap = await self._transport.tap_dead_letters(self._on_dead_letter, prefetch=16)
            self._consumers.append(tap)

    async def _on_dead_letter(self, delivery: Delivery) -> None:
        reply_to, ids = wire.salvage_ids(delivery.body)
        job = job_id_of(reply_to)
        try:
            if job is not None and ids:
                await self._fail_dead_job(job, ids[0])
        except FleetError as exc:
            log.warning("a dead job could not be failed; it goes back", job=job, error=str(exc))
            await asyncio.sleep(1.0)
            await self._settle_back(delivery)
            return
        try:
            await delivery.ack()
        except FleetError as exc:
            log.warning("ack failed; the message will be delivered again", error=str(exc))

    async def _fail_dead_job(self, job: str, request_id: str) -> None:
        """Store a dead-lettered job ``failed`` (and notify it), unless it ended."""
        assert self._results is not None
        record = await self._results.get(job)
        if record is None or record.state not in OPEN_STATES:
            return  # ended (refused by a worker, which stored why), or expired
        exc = Internal(
            f"job {job} was dead-lettered by the broker: the workers holding it stopped "
            f"{self._transport.options.delivery_limit} times"
        )
        reply = Reply(id=request_id, model=record.model, error=ErrorInfo.of(exc))
        log.warning("job dead-lettered by the broker; stored as failed", job=job)
        if await self._results.finish(job, ok=False, result=wire.encode_replies([reply])):
            if self._notify is not None:
                await self._publish_event(job, reply)

    async def stop_consuming(self) -> None:
        async with self._flow:
            self._stopped = True
            consumers, self._consumers = self._consumers, []
            # A broker delivers until it confirms a cancel: what comes meanwhile
            # is served like the rest. Handed back, it would come straight back
            # here, toward the delivery limit.
            for c in consumers:
                await c.cancel()
            self._model_consumers = {}

    async def settled(self) -> None:
        """Return once every message received was acked, rejected or handed back."""
        while self._messages or self._settling or self._handling:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Stop retrying replies: the transport is going away."""
        self._closed = True
        self._stopped = True

    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        return self._held_requests

    def held(self) -> tuple[int, int]:
        """Requests received and not yet answered, and their messages' bytes."""
        return self._held_requests, self._held_bytes

    @property
    def paused(self) -> bool:
        """Not consuming because the worker holds as much as it may."""
        return self._paused

    def idle_reasons(self) -> list[str]:
        """Why consumers get nothing (e.g. Kafka: more workers than partitions)."""
        return sorted({r for c in self._consumers if (r := c.idle_reason())})

    # ------------------------------------------------------------------ held work
    async def _check_hold(self) -> None:
        """Stop consuming at the bound; consume again once at most half of it
        is held. Decided under the lock, on what is held by then: a decision
        made before waiting for it could pause a worker whose held work was
        all settled meanwhile, and with nothing held nothing would resume it.
        Pausing cancels the consumers but keeps their channels (a paused
        Kafka consumer keeps its group membership: no rebalance). Where what
        is held asks for no change (most calls), it returns at once: a holder
        of the lock has set ``_paused`` to what it is making true."""
        if self._stopped or not self._hold_changes():
            return
        async with self._flow:
            if self._stopped or not self._hold_changes():
                return
            if not self._paused:
                self._paused = True
                log.debug("holding as much as allowed; consuming paused", held=self.held())
                for c in self._consumers:
                    await c.pause()
            else:
                self._paused = False
                log.debug("consuming again", held=self.held())
                for c in self._consumers:
                    await c.resume()

    def _hold_changes(self) -> bool:
        """Whether what is held asks to pause (at the bound) or to resume (at
        most half of it, while paused)."""
        requests, size = self.held()
        if not self._paused:
            return requests >= self._max_held_requests or size >= self._max_held_bytes
        return requests <= self._max_held_requests // 2 and size <= self._max_held_bytes // 2

    # ------------------------------------------------------------------ requests
    async def _on_delivery(self, delivery: Delivery) -> None:
        self._handling += 1  # a drain waits for it, whichever way it ends
        try:
            await self._handle(delivery)
        finally:
            self._handling -= 1

    async def _handle(self, delivery: Delivery) -> None:
        try:
            frame = wire.decode_requests(delivery.body, self._limits)
        except FleetError as exc:
            await self._refuse(delivery, exc)
            return
        job = job_id_of(frame.reply_to)
        if job is None and not is_reply_address(frame.reply_to):
            shown = frame.reply_to[:80]
            await self._refuse(delivery, InvalidArgument(f"{shown!r} is no reply address"))
            return
        if delivery.attempt > self._transport.options.delivery_limit:
            err = Internal(
                f"request failed on {delivery.attempt - 1} deliveries (the workers handling "
                "it stopped); moved to the dead-letter queue"
            )
            await self._refuse(delivery, err)
            return
        if job is not None and not await self._take_job(delivery, job, frame):
            return
        fetched = await self._fetch_claims(delivery, frame)
        if fetched is None:
            return
        frame = fetched
        if delivery.attempt > 1 and await self._isolate(delivery, frame):
            return
        msg = _Message(
            delivery=delivery,
            reply_to=frame.reply_to,
            remaining=len(frame.items),
            size=len(delivery.body),
            stages=bool(frame.flags & wire.FLAG_STAGES),
            claims=bool(frame.flags & wire.FLAG_CLAIMS),
        )
        self._messages.add(msg)
        self._held_requests += msg.remaining
        self._held_bytes += msg.size
        self._ledger.message(len(frame.items))
        replies = self._admit(msg, frame.items)
        await self._check_hold()
        if replies:
            await self._publish(msg.reply_to, replies, [msg] * len(replies))
        await self._maybe_settle(msg)

    async def _take_job(self, delivery: Delivery, job: str, frame: wire.Frame) -> bool:
        """Mark a job's request running; whether to serve it. A job already
        final (cancelled, or finished by a worker before a redelivery) is acked
        unserved; a store that does not answer hands the message back."""
        if self._results is None:
            await self._refuse(
                delivery, InvalidArgument("a job's request, and this worker has no result store")
            )
            return False
        if len(frame.items) != 1:
            await self._refuse(delivery, InvalidArgument("a job's message holds one request"))
            return False
        try:
            started = await self._results.start(job)
        except FleetError as exc:
            log.warning("result store unavailable; the job goes back", job=job, error=str(exc))
            await asyncio.sleep(1.0)  # not at once: the store is down for everyone
            await self._settle_back(delivery)
            return False
        if not started:
            log.info("job final or expired; not run", job=job, model=delivery.model)
            try:
                await self._notify_stored(job)
            except FleetError as exc:
                log.warning("notifying a finished job failed; it goes back", error=str(exc))
                await asyncio.sleep(1.0)
                await self._settle_back(delivery)
                return False
            try:
                await delivery.ack()
            except FleetError as exc:
                log.warning("ack failed; the message will be delivered again", error=str(exc))
        return started

    async def _fetch_claims(self, delivery: Delivery, frame: wire.Frame) -> wire.Frame | None:
        """The frame with every claimed request's inputs fetched from the
        payload store; one that cannot be is that request's typed error. A
        store that does not answer hands the message back (``None``)."""
        if not any(isinstance(i, Request) and CLAIM in i.parameters for i in frame.items):
            return frame
        items: list[Request | Reply | ItemError] = []
        for item in frame.items:
            if isinstance(item, Request) and CLAIM in item.parameters:
                try:
                    item = await resolve_request(item, self._payloads)
                except FleetError as exc:
                    if exc.retriable:
                        log.warning("payload store unavailable; message goes back", error=str(exc))
                        await asyncio.sleep(1.0)
                        await self._settle_back(delivery)
                        return None
                    item = ItemError(id=item.id, error=exc)
            items.append(item)
        return dataclasses.replace(frame, items=items)

    async def _claim_large(self, replies: list[Reply]) -> list[Reply]:
        """Replies over the claim threshold, through the payload store."""
        assert self._payloads is not None
        out = []
        for reply in replies:
            if sum(len(t.data) for t in reply.outputs) > self._claim_threshold:
                try:
                    reply = await claim_reply(reply, self._payloads)
                except FleetError as exc:
                    log.warning("could not store a large reply", id=reply.id, error=str(exc))
            out.append(reply)
        return out

    def _fill_cache(self, outcomes: Sequence[Outcome]) -> None:
        """Store the answers whose clients asked (their inputs' hash), in the
        background: a slow cache never holds up replies."""
        fills = [
            (o.reply, str(o.item.request.parameters[CACHE_PARAM]))
            for o in outcomes
            if o.reply is not None and o.reply.ok and CACHE_PARAM in o.item.request.parameters
        ]
        if fills and len(self._fills) < 64:  # a bound: past it, answers go uncached
            task = asyncio.get_running_loop().create_task(self._fill(fills))
            self._fills.add(task)
            task.add_done_callback(self._fills.discard)

    async def _fill(self, fills: list[tuple[Reply, str]]) -> None:
        assert self._cache is not None
        for reply, key in fills:
            try:
                frame = wire.encode_replies([reply])
                await self._cache.put(reply.model, reply.version, key, frame, self._cache_ttl)
            except FleetError as exc:
                log.warning("could not fill the cache", model=reply.model, error=str(exc))
                return

    async def _settle_back(self, delivery: Delivery) -> None:
        try:
            await delivery.requeue()
        except FleetError as exc:
            log.warning("requeue failed; the message will be delivered again", error=str(exc))

    async def _isolate(self, delivery: Delivery, frame: wire.Frame) -> bool:
        """Publish a redelivered message's requests again, one per message, then
        ack it; whether that was done (with one request, or with undecodable
        items, or if publishing fails, the message is served as it is)."""
        requests = [i for i in frame.items if isinstance(i, Request)]
        if len(requests) < 2 or len(requests) != len(frame.items):
            return False
        now = time.time()
        try:
            for req in requests:
                if req.expired(now):
                    self._ledger.expired(delivery.model)
                    continue
                body = wire.encode_requests([req], frame.reply_to, flags=frame.flags)
                await self._transport.publish_request(delivery.model, delivery.priority, body)
        except FleetError as exc:
            log.warning("could not split a redelivered message; serving it whole", error=str(exc))
            return False
        log.info(
            "redelivered message split into its requests",
            model=delivery.model,
            requests=len(requests),
            attempt=delivery.attempt,
        )
        try:
            await delivery.ack()
        except FleetError as exc:
            log.warning("ack failed; the message will be delivered again", error=str(exc))
        return True

    def _admit(self, msg: _Message, items: Sequence[Request | Reply | ItemError]) -> list[Reply]:
        """Submit a message's live requests to their pipelines; the error replies
        of those that cannot be (expired ones are dropped and counted)."""
        replies: list[Reply] = []
        now = time.time()
        for item in items:
            if isinstance(item, ItemError):
                msg.dead_letter = True
                replies.append(self._error_reply(item.id, msg.delivery.model, item.error))
            elif isinstance(item, Request) and item.expired(now):
                self._ledger.expired(msg.delivery.model)
                if job_id_of(msg.reply_to) is not None:  # a job's state must end
                    late = DeadlineExceeded(f"job {item.id!r} expired before a worker ran it")
                    replies.append(self._error_reply(item.id, msg.delivery.model, late))
                else:
                    self._answered(msg)
            elif isinstance(item, Request):
                error = self._submit(msg, item)
                if error is _STOPPING:  # the worker is stopping: the broker delivers it again
                    msg.failed = True
                    self._answered(msg)
                elif error is not None:
                    replies.append(self._error_reply(item.id, msg.delivery.model, error))
            else:
                error = InvalidArgument("a reply where a request was expected")
                replies.append(self._error_reply(item.id, msg.delivery.model, error))
        return replies

    def _submit(self, msg: _Message, req: Request) -> FleetError | None:
        """Route one request to its pipeline; the error to answer it with if that fails."""
        model = msg.delivery.model
        if model not in self._model_consumers:  # unloaded meanwhile: another worker's
            return _STOPPING
        try:
            pipe, feeds, rows = self._route(req, model)
        except FleetError as exc:
            return exc
        except _INPUT_ERRORS as exc:
            log.warning("request refused", model=model, id=req.id, error=repr(exc))
            return InvalidArgument(f"request {req.id!r}: its inputs do not fit: {exc}")
        except Exception as exc:
            log.exception("routing a request failed", model=model, id=req.id)
            return Internal(f"request {req.id!r} could not be served: {exc!r}")
        if not pipe.accepting:
            return _STOPPING
        submitted = Item(request=req, feeds=feeds, rows=rows, sink=self)
        try:
            pipe.submit(submitted)
        except Exception as exc:
            log.exception("submitting a request failed", model=model, id=req.id)
            return Internal(f"request {req.id!r} could not be served: {exc!r}")
        self._message_of[submitted] = msg
        self._ledger.submitted()
        return None

    def _route(self, req: Request, queue_model: str) -> tuple[Pipeline | Parked, Feeds, int]:
        if req.model != queue_model:
            raise InvalidArgument(
                f"request for model {req.model!r} arrived on {queue_model!r}'s queue"
            )
        return self._table.route(req)

    async def _refuse(self, delivery: Delivery, exc: FleetError) -> None:
        """Dead-letter a whole message, telling every caller it names (when its
        reply address is an inbox)."""
        reply_to, ids = wire.salvage_ids(delivery.body)
        log.warning("message dead-lettered", model=delivery.model, error=str(exc), ids=len(ids))
        told = is_reply_address(reply_to) or (
            job_id_of(reply_to) is not None and self._results is not None  # the job fails
        )
        if ids and told:
            replies = [self._error_reply(i, delivery.model, exc) for i in ids]
            for body, _ in self._frames(replies, [None] * len(replies)):
                if not await self._send(reply_to, body, replies):
                    log.warning("could not tell the callers", ids=len(ids))
        self._ledger.dead_lettered(len(ids))
        try:
            await delivery.reject()
        except FleetError as reject_exc:
            log.warning("reject failed; the message will be delivered again", error=str(reject_exc))

    def _error_reply(self, rid: str, model: str, exc: FleetError) -> Reply:
        self._ledger.error(model)
        return Reply(
            id=rid, model=model, error=ErrorInfo.of(exc), timings=Timings(worker_id=self._worker_id)
        )

    # ------------------------------------------------------------------ replies
    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Publish a batch's replies, grouped per reply address; settle their messages."""
        by_address: dict[str, tuple[list[Reply], list[_Message]]] = {}
        ended = min((o.ended for o in outcomes if o.ended), default=0.0)
        self._ledger.finished(outcomes)
        for o in outcomes:
            msg = self._message_of.pop(o.item)
            if o.reply is None:
                self._answered(msg)
                await self._maybe_settle(msg)
                continue
            replies, msgs = by_address.setdefault(msg.reply_to, ([], []))
            replies.append(o.reply)
            msgs.append(msg)
        await together(self._publish(a, r, m) for a, (r, m) in by_address.items())
        if self._cache is not None:
            self._fill_cache(outcomes)
        tracer = tracing.active()
        if tracer is not None:
            self._trace(tracer, outcomes)
        if ended and by_address:
            self._ledger.replied(
                outcomes[0].item.request.model,
                time.monotonic() - ended,
                sum(len(r) for r, _ in by_address.values()),
            )

    def _trace(self, tracer: Any, outcomes: Sequence[Outcome]) -> None:
        """The spans of the traced requests among these, just published."""
        published = time.time()
        for o in outcomes:
            headers, reply = o.item.request.headers, o.reply
            if not headers or reply is None or not reply.timings.received_at:
                continue
            tm = reply.timings
            try:
                tracing.worker_spans(
                    tracer,
                    headers,
                    model=reply.model,
                    version=reply.version,
                    received=tm.received_at,
                    batch_wait=tm.queue_ms / 1000,
                    inference=tm.inference_ms / 1000,
                    published=published,
                    batch_size=tm.batch_size,
                    worker_id=tm.worker_id,
                )
            except Exception:  # a tracing failure never fails serving
                log.exception("recording a trace failed", id=reply.id)

    async def _publish(self, reply_to: str, replies: list[Reply], msgs: list[_Message]) -> None:
        if self._payloads is not None and all(m.claims for m in msgs):
            replies = await self._claim_large(replies)
        try:
            frames = self._frames(replies, msgs, stages=any(m.stages for m in msgs))
        except Exception:
            log.exception("encoding replies failed; handing their messages back")
            frames = []
            for m in msgs:
                m.failed = True
        for body, frame_msgs in frames:
            if not await self._send(reply_to, body, replies):
                for fm in frame_msgs:
                    if fm is not None:
                        fm.failed = True
        for m in msgs:
            self._answered(m)
        # Settled together, a batch's acks leave in one frame where the transport can.
        await together(self._maybe_settle(m) for m in dict.fromkeys(msgs))

    def _frames(
        self, replies: list[Reply], msgs: Sequence[_Message | None], *, stages: bool = False
    ) -> list[tuple[bytes, list[_Message | None]]]:
        """The replies in as few frames as fit the broker's message size limit,
        each with the messages its replies answer."""
        limit = self._transport.max_message_bytes

        def encode_replies(replies: list[Reply]) -> bytes:
            return wire.encode_replies(replies, stages=stages)

        whole = encode_replies(replies)
        if len(whole) <= limit:
            return [(whole, list(msgs))]
        overhead = len(encode_replies([]))  # a frame's framing; each item adds its own
        frames: list[tuple[bytes, list[_Message | None]]] = []
        group: list[Reply] = []
        group_msgs: list[_Message | None] = []
        size = overhead
        for reply, msg in zip(replies, msgs, strict=True):
            one = len(encode_replies([reply])) - overhead
            if overhead + one > limit:
                reply = self._too_large(reply, overhead + one, limit)
                one = len(encode_replies([reply])) - overhead
            if group and size + one > limit:
                frames.append((encode_replies(group), group_msgs))
                group, group_msgs, size = [], [], overhead
            group.append(reply)
            group_msgs.append(msg)
            size += one
        if group:
            frames.append((encode_replies(group), group_msgs))
        return frames

    def _too_large(self, reply: Reply, size: int, limit: int) -> Reply:
        log.warning("reply over the broker's size limit", id=reply.id, bytes=size, limit=limit)
        self._ledger.error(reply.model)
        exc = LimitExceeded(
            f"the reply of {size} bytes is over the broker's message limit of {limit} bytes"
        )
        return Reply(
            id=reply.id,
            model=reply.model,
            version=reply.version,
            error=ErrorInfo.of(exc),
            timings=reply.timings,
        )

    async def _send(self, reply_to: str, body: bytes, replies: Sequence[Reply]) -> bool:
        """Publish one reply frame (a job's, its one reply: store it, ``done``
        or ``failed``, and notify), retrying what may pass; whether it was
        published."""
        job = job_id_of(reply_to)
        for attempt in range(_REPLY_ATTEMPTS):
            try:
                if job is not None:
                    await self._store_result(job, body, replies[0])
                else:
                    await self._transport.publish_reply(reply_to, body)
                return True
            except FleetError as exc:
                if exc.retriable and attempt + 1 < _REPLY_ATTEMPTS and not self._closed:
                    await asyncio.sleep(0.25 * 2**attempt)
                    continue
                log.warning("publishing replies failed", error=str(exc), bytes=len(body))
                return False
            except Exception:
                log.exception("publishing replies failed", bytes=len(body))
                return False
        return False

    async def _store_result(self, job: str, body: bytes, reply: Reply) -> None:
        """A job's reply frame into the result store, ``done`` or ``failed``,
        then its notification. A job final already (a delivery again after a
        worker stopped between the two) is notified from its record."""
        assert self._results is not None
        if not await self._results.finish(job, ok=reply.ok, result=body):
            log.info("job was final already; result not stored", job=job)
            await self._notify_stored(job)
            return
        if self._notify is not None:
            await self._publish_event(job, reply)
        if self._payloads is not None:  # its request's blob, if it had one, is done with
            try:
                await self._payloads.delete_named(f"{job}.request")
            except FleetError as exc:
                log.warning("could not delete a job's request payload", job=job, error=str(exc))

    async def _publish_event(self, job: str, reply: Reply) -> None:
        assert self._notify is not None
        event = JobEvent(
            job=job,
            model=reply.model,
            state=JobState.DONE if reply.ok else JobState.FAILED,
            version=reply.version,
            error=reply.error,
            finished_at=time.time(),
        )
        await self._transport.publish_notification(self._notify, event.key, event.encode())

    async def _notify_stored(self, job: str) -> None:
        """Notify a job stored ``done`` or ``failed`` before, from its record
        (at least once: the worker that stored it may have stopped first)."""
        if self._notify is None or self._results is None:
            return
        record = await self._results.get(job)
        if record is None or record.result is None:
            return  # cancelled, or expired
        try:
            reply = reply_of(record)
        except (FleetError, ValueError):
            log.warning("a stored result is unreadable; not notified", job=job)
            return
        await self._publish_event(job, reply)

    def _answered(self, msg: _Message) -> None:
        """One request of ``msg`` needs nothing more (replied, dropped or given back)."""
        if msg.remaining > 0:
            msg.remaining -= 1
            self._held_requests -= 1

    async def _maybe_settle(self, msg: _Message) -> None:
        if msg.remaining > 0 or msg not in self._messages:
            return
        self._messages.discard(msg)
        self._held_bytes -= msg.size
        self._settling += 1  # a drain waits for the ack too, not just the answer
        try:
            if msg.failed:
                log.warning(
                    "message not finished; handing it back to the broker", model=msg.delivery.model
                )
                await msg.delivery.requeue()
            elif msg.dead_letter:
                self._ledger.dead_lettered()
                await msg.delivery.reject()
            else:
                await msg.delivery.ack()
        except FleetError as exc:
            log.warning("settling failed; the message will be delivered again", error=str(exc))
        finally:
            self._settling -= 1
        await self._check_hold()


__all__ = ["BrokerIngress"]
