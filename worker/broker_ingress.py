"""The broker ingress: deliveries in, replies out, each message settled once.

For every broker message: decode → drop what expired → route each request to
its model version's pipeline → (the pipeline batches and infers) → publish the
replies (confirmed) → then ack. A message is acked only when every request it
carried has been answered (or dropped as expired), so a crash at any point
means redelivery, never loss.

A message that cannot be decoded goes to the dead-letter queue, and the callers
whose ids can still be read get a typed error at once. So does a message on its
last allowed delivery (it has been in flight on workers that died).

The ingress is the :class:`~worker.pipeline.ReplySink` of every item it
produces, so it gets all of a batch's outcomes at once, and the replies of one
batch that go to the same reply address leave in one frame, whichever messages
their requests came in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fleet import wire
from fleet.contract import ErrorInfo, ItemError, Priority, Reply, Request, Timings
from fleet.errors import FleetError, Internal, InvalidArgument
from fleet.logging import get_logger
from fleet.transport import Consumer, Delivery, Transport
from worker.ledger import Ledger
from worker.model_table import ModelTable
from worker.pipeline import Item, Outcome, Pipeline
from worker.runtime import Feeds

log = get_logger("worker.broker_ingress")

_REPLY_ATTEMPTS = 4  # a reply that fails to publish is tried again after 0.25, 0.5, 1 s


@dataclass(eq=False, slots=True)
class _Message:
    """One broker message and the requests of it still unanswered."""

    delivery: Delivery
    reply_to: str
    remaining: int
    dead_letter: bool = False
    failed: bool = False  # a reply could not be published: leave it unacked


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
    ) -> None:
        self._transport = transport
        self._table = table
        self._ledger = ledger
        self._worker_id = worker_id
        self._limits = wire.Limits(max_message_bytes=max_message_bytes)
        self._prefetch = prefetch
        self._consumers: list[Consumer] = []
        self._messages: set[_Message] = set()
        self._message_of: dict[Item, _Message] = {}
        self._closed = False

    async def start(self) -> None:
        """Declare every model's queues and consume them (prefetch: 2x the model's max batch)."""
        for model in self._table.models:
            await self._transport.declare_model(model)
            prefetch = self._prefetch or 2 * self._table.max_batch_size(model)
            for priority in Priority:
                self._consumers.append(
                    await self._transport.consume(
                        model, priority, self._on_delivery, prefetch=prefetch
                    )
                )

    async def stop_consuming(self) -> None:
        for c in self._consumers:
            await c.cancel()

    async def settled(self) -> None:
        """Return once every message received was acked, rejected or left."""
        while self._messages:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Stop retrying replies: the transport is going away."""
        self._closed = True

    def in_flight(self) -> int:
        """Requests received and not yet answered."""
        return sum(m.remaining for m in self._messages)

    def idle_reasons(self) -> list[str]:
        """Why consumers get nothing (e.g. Kafka: more workers than partitions)."""
        return sorted({r for c in self._consumers if (r := c.idle_reason())})

    # ------------------------------------------------------------------ requests
    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            frame = wire.decode_requests(delivery.body, self._limits)
        except FleetError as exc:
            await self._refuse(delivery, exc)
            return
        if delivery.attempt >= self._transport.options.delivery_limit:
            err = Internal(
                f"request failed on {delivery.attempt} deliveries (the workers handling it "
                "stopped); moved to the dead-letter queue"
            )
            await self._refuse(delivery, err)
            return
        msg = _Message(delivery=delivery, reply_to=frame.reply_to, remaining=len(frame.items))
        self._messages.add(msg)
        self._ledger.message(len(frame.items))
        replies = self._admit(msg, frame.items)
        if replies:
            await self._publish(msg.reply_to, replies, [msg] * len(replies))
        await self._maybe_settle(msg)

    def _admit(self, msg: _Message, items: Sequence[Request | Reply | ItemError]) -> list[Reply]:
        """Submit a message's live requests to their pipelines; the error replies
        of those that cannot be (expired ones are dropped and counted)."""
        model = msg.delivery.model
        replies: list[Reply] = []
        now = time.time()
        for item in items:
            if isinstance(item, ItemError):
                msg.dead_letter = True
                replies.append(self._error_reply(item.id, model, item.error))
                continue
            assert isinstance(item, Request)
            if item.expired(now):
                self._ledger.expired(model)
                msg.remaining -= 1
                continue
            try:
                pipe, feeds, rows = self._route(item, model)
            except FleetError as exc:
                replies.append(self._error_reply(item.id, model, exc))
                continue
            self._ledger.submitted()
            submitted = Item(request=item, feeds=feeds, rows=rows, sink=self)
            self._message_of[submitted] = msg
            pipe.submit(submitted)
        return replies

    def _route(self, req: Request, queue_model: str) -> tuple[Pipeline, Feeds, int]:
        if req.model != queue_model:
            raise InvalidArgument(
                f"request for model {req.model!r} arrived on {queue_model!r}'s queue"
            )
        return self._table.route(req)

    async def _refuse(self, delivery: Delivery, exc: FleetError) -> None:
        """Dead-letter a whole message, telling every caller it names."""
        reply_to, ids = wire.salvage_ids(delivery.body)
        log.warning("message dead-lettered", model=delivery.model, error=str(exc), ids=len(ids))
        if reply_to and ids:
            replies = [self._error_reply(i, delivery.model, exc) for i in ids]
            try:
                await self._transport.publish_reply(reply_to, wire.encode_replies(replies))
            except FleetError as pub_exc:
                log.warning("could not tell the callers", error=str(pub_exc))
        self._ledger.dead_lettered(len(ids))
        await delivery.reject()

    def _error_reply(self, rid: str, model: str, exc: FleetError) -> Reply:
        self._ledger.error(model)
        return Reply(
            id=rid, model=model, error=ErrorInfo.of(exc), timings=Timings(worker_id=self._worker_id)
        )

    # ------------------------------------------------------------------ replies
    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Publish a batch's replies, one frame per reply address; settle their messages."""
        by_address: dict[str, tuple[list[Reply], list[_Message]]] = {}
        for o in outcomes:
            msg = self._message_of.pop(o.item)
            self._ledger.finished(o)
            if o.reply is None:
                msg.remaining -= 1
                await self._maybe_settle(msg)
                continue
            replies, msgs = by_address.setdefault(msg.reply_to, ([], []))
            replies.append(o.reply)
            msgs.append(msg)
        await asyncio.gather(*(self._publish(a, r, m) for a, (r, m) in by_address.items()))

    async def _publish(self, reply_to: str, replies: list[Reply], msgs: list[_Message]) -> None:
        body = wire.encode_replies(replies)
        for attempt in range(_REPLY_ATTEMPTS):
            try:
                await self._transport.publish_reply(reply_to, body)
                break
            except FleetError as exc:
                if exc.retriable and attempt + 1 < _REPLY_ATTEMPTS and not self._closed:
                    await asyncio.sleep(0.25 * 2**attempt)
                    continue
                # not acked: the broker delivers the message again, here or elsewhere
                log.warning(
                    "publishing replies failed; leaving the request unacked", error=str(exc)
                )
                for m in msgs:
                    m.failed = True
        for m in msgs:
            m.remaining -= 1
        for m in set(msgs):
            await self._maybe_settle(m)

    async def _maybe_settle(self, msg: _Message) -> None:
        if msg.remaining > 0 or msg not in self._messages:
            return
        self._messages.discard(msg)
        try:
            if msg.failed:
                return
            if msg.dead_letter:
                self._ledger.dead_lettered()
                await msg.delivery.reject()
            else:
                await msg.delivery.ack()
        except FleetError as exc:
            log.warning("ack failed; the message will be delivered again", error=str(exc))


__all__ = ["BrokerIngress"]
