"""The publish-and-await client.

::

    async with Client("amqp://guest:guest@127.0.0.1/") as client:
        outputs = await client.infer("digits", {"input": x}, timeout=1.0)

Many requests may be in flight on one connection. Requests for the same model
and priority that are waiting while a publish is under way travel together in
the next broker message (coalescing: no added latency when idle, few messages
under load). Each request has a client-made id; replies are matched by id and a
second reply for the same id is dropped. After the broker connection comes
back, every request still unanswered is published again under the same id.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet import wire
from fleet.contract import ParamValue, Priority, Reply, Request, check_model_name, new_request_id
from fleet.errors import (
    DeadlineExceeded,
    FleetError,
    InvalidArgument,
    LimitExceeded,
    Overloaded,
    Unavailable,
)
from fleet.logging import get_logger
from fleet.tensor import Tensor
from fleet.transport import Transport, connect

log = get_logger("producer.client")

_MAX_FRAME_BYTES = 1 << 20  # coalesce up to ~1 MiB per broker message


@dataclass(eq=False, slots=True)
class _Pending:
    id: str
    model: str
    priority: Priority
    body: list[bytes]
    size: int
    deadline: float
    future: asyncio.Future[Reply]
    queued: bool = False


@dataclass(slots=True)
class ClientStats:
    published: int = 0  # requests handed to the broker (re-sends included)
    messages: int = 0  # broker messages (one holds many coalesced requests)
    answered: int = 0
    duplicates_dropped: int = 0
    resent: int = 0
    failed: int = 0


@dataclass(eq=False)
class _Lane:
    queue: deque[_Pending] = field(default_factory=deque)
    publishers: int = 0


class Client:
    """Publishes inference requests and awaits their replies.

    Args:
        url: the broker, ``memory://NAME``, ``amqp://…`` or ``kafka://…``.
        timeout: default seconds to wait for a reply (the request's deadline).
        max_in_flight: requests awaiting replies before ``infer`` raises
            :class:`Overloaded` at once.
        max_batch: at most this many requests per broker message.
        max_publishes: publishes under way at once per model and priority.
        max_message_bytes: requests larger than this are refused locally.
        transport_options: passed to :func:`fleet.transport.connect`.
    """

    def __init__(
        self,
        url: str = "memory://default",
        *,
        timeout: float = 5.0,
        max_in_flight: int = 10_000,
        max_batch: int = 64,
        max_publishes: int = 1,
        max_message_bytes: int = wire.DEFAULT_LIMITS.max_message_bytes,
        **transport_options: object,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("timeout must be positive")
        self.url = url
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.max_publishes = max_publishes
        self.max_message_bytes = max_message_bytes
        self.stats = ClientStats()
        self._transport: Transport = connect(url, **transport_options)
        self._pending: dict[str, _Pending] = {}
        self._lanes: dict[tuple[str, Priority], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply_to = ""
        self._limits = wire.Limits(max_message_bytes=max(max_message_bytes, 64 << 20))
        self._closed = True

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._transport.connect()
        self._transport.add_reconnect_listener(self._resend_unanswered)
        self._reply_to = await self._transport.open_inbox(self._on_reply)
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(Unavailable("client closed"))
        self._pending.clear()
        await self._transport.close()

    # ------------------------------------------------------------------ requests
    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: str | None = None,
        timeout: float | None = None,
        priority: str | Priority = Priority.ONLINE,
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run ``model`` on ``inputs`` and return its outputs as numpy arrays.

        Raises the reply's typed error (:class:`fleet.errors.FleetError`), or
        :class:`DeadlineExceeded` when no reply came within ``timeout``.
        """
        reply = await self.infer_reply(
            model,
            inputs,
            version=version,
            timeout=timeout,
            priority=priority,
            parameters=parameters,
        )
        return reply.arrays()

    async def infer_reply(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: str | None = None,
        timeout: float | None = None,
        priority: str | Priority = Priority.ONLINE,
        parameters: Mapping[str, ParamValue] | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """Like :meth:`infer` but returns the whole :class:`Reply` (timings,
        or the error without raising it)."""
        if self._closed:
            raise Unavailable("client is not connected: use 'async with Client(url)'")
        check_model_name(model)
        if not inputs:
            raise InvalidArgument("inputs must name at least one tensor")
        if len(self._pending) >= self.max_in_flight:
            raise Overloaded(f"{len(self._pending)} requests in flight (max_in_flight)")
        wait = self.timeout if timeout is None else timeout
        if wait <= 0:
            raise InvalidArgument("timeout must be positive")
        now = time.time()
        req = Request(
            id=request_id or new_request_id(),
            model=model,
            version=version,
            inputs=tuple(Tensor.from_numpy(n, np.asarray(a)) for n, a in inputs.items()),
            deadline=now + wait,
            priority=Priority.parse(priority),
            parameters=dict(parameters or {}),
            sent_at=now,
        )
        pending = self._pending_for(req)
        self._pending[req.id] = pending
        self._enqueue(pending)
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), wait)
        except TimeoutError:
            if not self._transport.connected:
                raise Unavailable(
                    f"{model}: no reply within {wait:.3g}s; the broker is unreachable"
                ) from None
            raise DeadlineExceeded(f"{model}: no reply within {wait:.3g}s") from None
        finally:
            self._pending.pop(req.id, None)

    def _pending_for(self, req: Request) -> _Pending:
        """The encoded request, checked against the client's limits."""
        if req.id in self._pending:
            raise InvalidArgument(f"request id {req.id!r} is already in flight")
        body = wire.encode_request_body(req)
        size = sum(len(b) for b in body)
        if size > self.max_message_bytes:
            raise LimitExceeded(
                f"request of {size} bytes is over the limit of {self.max_message_bytes}"
            )
        return _Pending(
            id=req.id,
            model=req.model,
            priority=req.priority,
            body=body,
            size=size,
            deadline=req.deadline,
            future=asyncio.get_running_loop().create_future(),
        )

    # ------------------------------------------------------------------ publishing
    def _enqueue(self, p: _Pending) -> None:
        if p.queued:
            return
        p.queued = True
        key = (p.model, p.priority)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(p)
        if lane.publishers < self.max_publishes:
            lane.publishers += 1
            task = asyncio.get_running_loop().create_task(self._publish_lane(key, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next_chunk(self, lane: _Lane) -> list[_Pending]:
        chunk: list[_Pending] = []
        size = 0
        now = time.time()
        while lane.queue and len(chunk) < self.max_batch:
            p = lane.queue[0]
            if p.future.done() or p.deadline <= now:
                lane.queue.popleft()
                p.queued = False
                continue  # answered or given up while waiting to be sent
            if chunk and size + p.size > _MAX_FRAME_BYTES:
                break
            lane.queue.popleft()
            p.queued = False
            chunk.append(p)
            size += p.size
        return chunk

    async def _publish_lane(self, key: tuple[str, Priority], lane: _Lane) -> None:
        model, priority = key
        failures = 0
        try:
            while chunk := self._next_chunk(lane):
                frame = wire.encode_requests([p.body for p in chunk], self._reply_to)
                try:
                    await self._transport.publish_request(model, priority, frame)
                except Unavailable as exc:
                    if not self._transport.connected:
                        # kept pending: re-sent when the connection is back, or
                        # the caller's deadline ends the wait
                        log.warning("publish failed; will re-send after reconnect", error=str(exc))
                        continue
                    # connected but not confirmed: try again (same ids) until
                    # the callers' deadlines end the wait
                    failures += 1
                    log.warning("publish not confirmed; trying again", error=str(exc))
                    for p in reversed(chunk):
                        p.queued = True
                        lane.queue.appendleft(p)
                    await asyncio.sleep(min(1.0, 0.05 * 2**failures))
                except FleetError as exc:
                    for p in chunk:
                        self._fail(p, exc)
                else:
                    failures = 0
                    self.stats.published += len(chunk)
                    self.stats.messages += 1
        finally:
            lane.publishers -= 1

    def _fail(self, p: _Pending, exc: FleetError) -> None:
        self._pending.pop(p.id, None)
        if not p.future.done():
            self.stats.failed += 1
            p.future.set_exception(exc)

    async def _resend_unanswered(self) -> None:
        waiting = [p for p in self._pending.values() if not p.future.done()]
        if waiting:
            log.info("re-sending unanswered requests after reconnect", count=len(waiting))
        self.stats.resent += len(waiting)
        for p in waiting:
            self._enqueue(p)

    # ------------------------------------------------------------------ replies
    def _on_reply(self, body: bytes) -> None:
        try:
            frame = wire.decode_replies(body, self._limits)
        except FleetError as exc:
            log.warning("undecodable reply message dropped", error=str(exc))
            return
        for item in frame.items:
            if not isinstance(item, Reply):
                log.warning("undecodable reply dropped", id=getattr(item, "id", ""))
                continue
            p = self._pending.get(item.id)
            if p is None or p.future.done():
                self.stats.duplicates_dropped += 1
                continue
            self.stats.answered += 1
            p.future.set_result(item)


__all__ = ["Client", "ClientStats"]
