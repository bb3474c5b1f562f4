"""The publish-and-await client.

::

    async with Client("amqp://guest:guest@127.0.0.1/") as client:
        outputs = await client.infer("digits", {"input": x}, timeout=1.0)

Many requests may be in flight on one connection. Requests for the same model
and priority that are waiting while a publish is under way travel together in
the next broker message (coalescing: no added latency when idle, few messages
under load), each message kept under the broker's size limit. Each request has
a client-made id; replies are matched by id and a second reply for the same id
is dropped. After the broker connection comes back, every request still
unanswered is published again under the same id; a re-send the broker refuses
as full does not fail a request whose original may still be answered.

Every publish carries the request's remaining budget (measured on this
client's monotonic clock), so workers judge its deadline on their own clocks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet import tracing, wire
from fleet.cache import CACHE_PARAM, ResultCache, inputs_key
from fleet.contract import (
    ParamValue,
    Priority,
    Reply,
    Request,
    check_model_name,
    make_request,
    make_stages,
    new_request_id,
    with_stages,
)
from fleet.deadlines import Deadlines
from fleet.errors import (
    DeadlineExceeded,
    FleetError,
    InvalidArgument,
    LimitExceeded,
    Overloaded,
    Unavailable,
)
from fleet.jobs import DEFAULT_TTL_S, ResultStore, check_job_id, job_address, new_job_id, open_cache
from fleet.logging import get_logger
from fleet.payloads import (
    DEFAULT_CLAIM_THRESHOLD,
    PayloadStore,
    claim_request,
    inputs_size,
    is_claimed,
    open_payloads,
    resolve_reply,
)
from fleet.stages import CLIENT_STAGES, Histogram, StageHistograms, observe_each
from fleet.tensor import Tensor
from fleet.transport import Transport, connect
from producer.jobs import Jobs

log = get_logger("producer.client")

# the stages a reply's arrival counts (the publish stage was counted at its confirm)
_OBSERVED_HERE = tuple(i for i, stage in enumerate(CLIENT_STAGES) if stage != "publish")

_VERSION_TTL_S = 2.0  # how long a model's current version (the cache's) is trusted
_MAX_FRAME_BYTES = 1 << 20  # coalesce up to ~1 MiB per broker message
_FRAME_OVERHEAD = 8 + 2 + 4  # header, reply address length, item count
_ITEM_OVERHEAD = 4  # each item's length


@dataclass(eq=False, slots=True)
class _Pending:
    id: str
    model: str
    priority: Priority
    body: wire.Parts
    size: int
    deadline: float  # time.monotonic() when the caller stops waiting
    future: asyncio.Future[Reply]
    queued: bool = False
    published: int = 0  # publishes the broker took
    resent: bool = False  # queued again after a reconnect
    refused: FleetError | None = None  # a re-send's retriable refusal, kept for the deadline
    want_stages: bool = False  # the caller asked for the reply's stages
    enqueued: float = 0.0  # time.monotonic() when it entered its lane
    publish_started: float = 0.0  # time.monotonic() when its (last) publish began
    publish_wall: float = 0.0  # time.time() then
    confirmed: float = 0.0  # time.monotonic() when the broker confirmed that publish
    version: int = wire.VERSION  # its body's frame version: only equal ones share a frame
    span: Any = None  # its call's trace span, when tracing is on


@dataclass(slots=True)
class ClientStats:
    published: int = 0  # requests handed to the broker (re-sends included)
    messages: int = 0  # broker messages (one holds many coalesced requests)
    answered: int = 0
    duplicates_dropped: int = 0
    resent: int = 0
    failed: int = 0
    retried: int = 0  # attempts made again after a retriable error (``retries``)
    submitted_jobs: int = 0  # jobs published (submit)
    cache_hits: int = 0  # answered from the result cache
    cache_misses: int = 0  # looked up and not found: published

    @property
    def cache_hit_ratio(self) -> float:
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else 0.0


def _request(
    rid: str,
    model: str,
    version: str | None,
    inputs: Mapping[str, npt.ArrayLike],
    wait: float,
    priority: str | Priority,
    parameters: Mapping[str, ParamValue] | None,
    headers: Mapping[str, str],
) -> Request:
    """A request with ``wait`` seconds of budget from now (every field given,
    so made by the fast constructor: ``Request``'s own ``__init__`` checks nothing more)."""
    now = time.time()
    return make_request(
        rid,
        model,
        version,
        tuple([Tensor.from_numpy(n, np.asarray(a)) for n, a in inputs.items()]),
        now + wait,  # deadline
        Priority.parse(priority),
        dict(parameters or {}),
        now,  # sent_at
        wait,  # timeout
        None,  # arrived: stamped by the worker
        headers,
    )


@dataclass(eq=False)
class _Lane:
    queue: deque[_Pending] = field(default_factory=deque)
    publishers: int = 0


def _check_timeout(value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidArgument(f"timeout must be a positive, finite number of seconds, not {value}")
    return float(value)


class Client:
    """Publishes inference requests and awaits their replies.

    Args:
        url: the broker, ``memory://NAME``, ``amqp://…`` or ``kafka://…``.
        timeout: default seconds to wait for a reply (the request's deadline);
            positive and finite.
        max_in_flight: requests awaiting replies at once. Past it ``infer``
            raises :class:`Overloaded` at once, or waits (see
            ``wait_for_capacity``).
        max_bytes_in_flight: encoded request bytes awaiting replies at once
            (``None``: no limit); past it, like ``max_in_flight``. A single
            request larger than this raises :class:`LimitExceeded` at once.
        wait_for_capacity: when true, a request past ``max_in_flight`` or
            ``max_bytes_in_flight`` waits (first come, first served) for
            capacity instead of raising; the wait counts against its timeout
            and ends in :class:`DeadlineExceeded`.
        retries: how many times a request is tried again, with exponential
            backoff and within its timeout, after a retriable error
            (:class:`Overloaded`, :class:`Unavailable`, or a retriable error
            reply). 0 (the default): never.
        max_batch: at most this many requests per broker message.
        max_publishes: publishes under way at once per model and priority.
        max_message_bytes: the largest broker message the client makes; at
            most (and by default) the transport's ``max_message_bytes``, the
            broker's own limit. Coalesced messages stay under it, framing
            included; a request that cannot fit raises a non-retriable
            :class:`LimitExceeded` at once.
        transport_options: passed to :func:`fleet.transport.connect`.
    """

    def __init__(
        self,
        url: str = "memory://default",
        *,
        timeout: float = 5.0,
        max_in_flight: int = 10_000,
        max_bytes_in_flight: int | None = None,
        wait_for_capacity: bool = False,
        retries: int = 0,
        max_batch: int = 64,
        max_publishes: int = 1,
        max_message_bytes: int | None = None,
        results: str | ResultStore | None = None,
        payloads: str | PayloadStore | None = None,
        claim_threshold: int = DEFAULT_CLAIM_THRESHOLD,
        cache: str | ResultCache | None = None,
        **transport_options: object,
    ) -> None:
        self.url = url
        self.cache = open_cache(cache) if isinstance(cache, str) else cache
        """The result cache (:mod:`fleet.cache`): looked up before publishing."""
        self._versions: dict[str, tuple[str | None, float]] = {}  # model: (version, read at)
        self.payloads = open_payloads(payloads) if isinstance(payloads, str) else payloads
        """Where requests and replies too large for a message go (the claim check)."""
        self.claim_threshold = claim_threshold
        self.jobs: Jobs | None = None if results is None else Jobs(results, payloads=self.payloads)
        """Jobs in the result store ``results`` names (:meth:`submit`)."""
        self.timeout = _check_timeout(timeout)
        if retries < 0 or max_in_flight < 1 or (max_bytes_in_flight or 1) < 1:
            raise InvalidArgument("retries, max_in_flight and max_bytes_in_flight must be >= 0/1")
        self.max_in_flight = max_in_flight
        self.max_bytes_in_flight = max_bytes_in_flight
        self.wait_for_capacity = wait_for_capacity
        self.retries = retries
        self.max_batch = max_batch
        self.max_publishes = max_publishes
        self.stats = ClientStats()
        self.stages = StageHistograms(
            "fleet_client_stage_seconds",
            "Per request, where its time went (stages of fleet.stages)",
            labels=("model",),
        )
        """Stage histograms, a Prometheus collector: ``REGISTRY.register(client.stages)``."""
        self._stage_hists: dict[str, tuple[Histogram, ...]] = {}
        self._transport: Transport = connect(url, **transport_options)
        broker_limit = self._transport.max_message_bytes
        self.max_message_bytes = min(max_message_bytes or broker_limit, broker_limit)
        self._pending: dict[str, _Pending] = {}
        self._deadlines = Deadlines()
        self._bytes_in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._lanes: dict[tuple[str, Priority], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reply_to = ""
        self._limits = wire.Limits(max_message_bytes=max(self.max_message_bytes, 64 << 20))
        self._closed = True
        self._declared: set[str] = set()  # models whose queues submit declared
        self._flags = wire.FLAG_STAGES | (wire.FLAG_CLAIMS if self.payloads is not None else 0)

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def bytes_in_flight(self) -> int:
        return self._bytes_in_flight

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        tracing.from_environment("fleet-client")
        if self.jobs is not None:
            await self.jobs.connect()
        if self.cache is not None:
            await self.cache.connect()
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
        self._deadlines.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Unavailable("client closed"))
        await self._transport.close()
        if self.jobs is not None:
            await self.jobs.close()
        if self.cache is not None:
            await self.cache.close()

    # ------------------------------------------------------------------ jobs
    async def submit(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        version: str | None = None,
        timeout: float = 3600.0,
        ttl: float = DEFAULT_TTL_S,
        priority: str | Priority = Priority.BATCH,
        parameters: Mapping[str, ParamValue] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Submit ``model`` on ``inputs`` as a job and return its id at once.

        The job must start within ``timeout`` seconds (else it fails with
        :class:`DeadlineExceeded`); its record and result are kept ``ttl``
        seconds. Read it with :attr:`jobs` (or :class:`producer.jobs.Jobs`
        from any process): ``await client.jobs.result(job_id)``. Needs a
        client made with ``results=``."""
        if self.jobs is None:
            raise InvalidArgument("jobs need a result store: Client(url, results='redis://...')")
        if self._closed:
            raise Unavailable("client is not connected: use 'async with Client(url)'")
        check_model_name(model)
        if not inputs:
            raise InvalidArgument("inputs must name at least one tensor")
        wait = _check_timeout(timeout)
        job_id = new_job_id() if job_id is None else check_job_id(job_id)
        req = _request(job_id, model, version, inputs, wait, priority, parameters, {})
        if self._should_claim(req):
            assert self.payloads is not None
            req, _ = await claim_request(req, self.payloads)  # the worker deletes it
        body = wire.encode_requests([req], job_address(job_id), flags=self._flags)
        if len(body) > self.max_message_bytes:
            raise LimitExceeded(
                f"job request of {len(body)} bytes is over the broker's limit of "
                f"{self.max_message_bytes} (max_message_bytes)"
            )
        await self._declare_for_jobs(model)
        await self.jobs.store.create(job_id, model=model, ttl=max(ttl, wait))
        try:
            await self._transport.publish_request(model, req.priority, body)
        except BaseException:
            await asyncio.shield(self.jobs.store.delete(job_id))
            raise
        self.stats.submitted_jobs += 1
        return job_id

    async def _declare_for_jobs(self, model: str) -> None:
        """A job waits in the broker for a worker even when none runs yet (a
        fleet scaled to zero): its model's queues are declared once, here. A
        user without the right to declare leaves it to the workers."""
        if model in self._declared:
            return
        try:
            await self._transport.declare_model(model)
        except FleetError as exc:
            if exc.retriable:
                raise
            log.info("could not declare the model's queues; workers will", model=model)
        self._declared.add(model)

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
        Cancelling it before its request is published keeps the request from
        being published; after, its reply (if any) is dropped.
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
        stages: bool = False,
    ) -> Reply:
        """Like :meth:`infer` but returns the whole :class:`Reply` (timings,
        or the error without raising it); with ``stages``, its
        :attr:`Reply.stages` says where the request's time went."""
        if self._closed:
            raise Unavailable("client is not connected: use 'async with Client(url)'")
        check_model_name(model)
        if not inputs:
            raise InvalidArgument("inputs must name at least one tensor")
        wait = self.timeout if timeout is None else _check_timeout(timeout)
        tracer = tracing.active()
        span, headers = tracing.start_call(tracer, model) if tracer is not None else (None, {})
        rid = request_id or new_request_id()
        req = _request(rid, model, version, inputs, wait, priority, parameters, headers)
        if span is None:
            return await self._claimed_send(req, time.monotonic() + wait, stages, None)
        try:
            reply = await self._claimed_send(req, time.monotonic() + wait, stages, span)
        except BaseException as exc:
            tracing.end_call(span, exc)
            raise
        tracing.end_call(span, None if reply.error is None else reply.error.to_exception())
        return reply

    def _should_claim(self, req: Request) -> bool:
        """Whether ``req`` goes through the payload store: over the threshold,
        or too large for a broker message."""
        if self.payloads is None:
            return False
        limit = min(self.claim_threshold, self.max_message_bytes - 4096)
        return inputs_size(req) > limit

    async def _cached(self, req: Request) -> tuple[Reply | None, Request]:
        """A cached answer to ``req`` (a hit), else ``req`` asking the worker
        to fill the cache. A cache that does not answer is a miss."""
        assert self.cache is not None
        key = inputs_key(req)
        try:
            version = req.version or await self._current_version(req.model)
            frame = None if version is None else await self.cache.get(req.model, version, key)
            hit = None if frame is None else wire.decode_replies(frame, self._limits).items[0]
        except FleetError as exc:
            log.warning("result cache unavailable; a miss", error=str(exc))
            hit = None
        if isinstance(hit, Reply) and hit.ok:
            self.stats.cache_hits += 1
            return replace(hit, id=req.id), req
        self.stats.cache_misses += 1
        return None, replace(req, parameters={**req.parameters, CACHE_PARAM: key})

    async def _current_version(self, model: str) -> str | None:
        """The model's current version, read again after a few seconds."""
        assert self.cache is not None
        version, read_at = self._versions.get(model, (None, -math.inf))
        if time.monotonic() - read_at > _VERSION_TTL_S:
            version = await self.cache.current_version(model)
            self._versions[model] = (version, time.monotonic())
        return version

    async def _claimed_send(self, req: Request, deadline: float, stages: bool, span: Any) -> Reply:
        """The request sent (:meth:`_with_retries`), answered by the cache when
        it can, through the payload store when the request or its reply is
        large; the blobs are deleted when the call ends."""
        if self.cache is not None:
            hit, req = await self._cached(req)
            if hit is not None:
                return hit
        if not self._should_claim(req):
            reply = await self._with_retries(req, self._encoded(req), deadline, stages, span)
        else:
            assert self.payloads is not None
            req, ref = await claim_request(req, self.payloads)
            try:
                reply = await self._with_retries(req, self._encoded(req), deadline, stages, span)
            finally:
                await asyncio.shield(self.payloads.delete(ref))
        if not is_claimed(reply):
            return reply
        reply, blob = await resolve_reply(reply, self.payloads)
        if blob is not None and self.payloads is not None:
            await self.payloads.delete(blob)
        return reply

    def _encoded(self, req: Request) -> wire.Parts:
        """``req``'s body, checked to be sendable."""
        if req.id in self._pending:
            raise InvalidArgument(f"request id {req.id!r} is already in flight")
        body = wire.encode_request_body(req)
        self._check_size(sum(map(len, body)))
        return body

    def _check_size(self, size: int) -> None:
        framed = size + _ITEM_OVERHEAD + _FRAME_OVERHEAD + len(self._reply_to.encode())
        if framed > self.max_message_bytes:
            raise LimitExceeded(
                f"request of {framed} bytes (framed) is over the broker's limit of "
                f"{self.max_message_bytes} (max_message_bytes)"
            )
        if self.max_bytes_in_flight is not None and size > self.max_bytes_in_flight:
            raise LimitExceeded(
                f"request of {size} bytes is over max_bytes_in_flight={self.max_bytes_in_flight}"
            )

    async def _with_retries(
        self, req: Request, body: wire.Parts, deadline: float, stages: bool, span: Any
    ) -> Reply:
        """Attempts of one request: again after a retriable error, while
        ``retries`` and the deadline allow."""
        attempt = 0
        while True:
            try:
                reply = await self._attempt(req, body, deadline, stages, span)
                error = None if reply.error is None else reply.error.to_exception()
            except FleetError as exc:
                error, reply = exc, None
            if error is None or not error.retriable or attempt >= self.retries:
                if reply is not None:
                    return reply
                assert error is not None
                raise error
            backoff = min(1.0, 0.05 * 2**attempt)
            if time.monotonic() + backoff >= deadline:
                raise error
            attempt += 1
            self.stats.retried += 1
            await asyncio.sleep(backoff)

    async def _attempt(
        self, req: Request, body: wire.Parts, deadline: float, stages: bool, span: Any
    ) -> Reply:
        size = sum(map(len, body))
        await self._reserve(req.model, size, deadline)
        pending = _Pending(
            id=req.id,
            model=req.model,
            priority=req.priority,
            body=body,
            size=size,
            deadline=deadline,
            future=asyncio.get_running_loop().create_future(),
            want_stages=stages,
            version=wire.body_version(req),
            span=span,
        )
        self._pending[req.id] = pending
        self._bytes_in_flight += size
        self._enqueue(pending)
        # The deadline fails the future itself (one timer for all requests),
        # not wait_for and shield: they cost a coroutine, two futures and
        # their callbacks on every request. A caller cancelled here cancels
        # the future, which every path that answers it checks, and _release
        # cleans up either way.
        self._deadlines.add(deadline, pending.future, len(self._pending))
        try:
            return await pending.future
        except TimeoutError:
            raise self._timed_out(pending, req.timeout or 0.0) from None
        finally:
            self._release(pending)

    def _timed_out(self, p: _Pending, wait: float) -> FleetError:
        if p.refused is not None:
            return type(p.refused)(
                f"{p.model}: no reply within {wait:.3g}s; its re-send after a reconnect "
                f"was refused: {p.refused.message}",
                retriable=p.refused.retriable,
            )
        if not self._transport.connected:
            return Unavailable(f"{p.model}: no reply within {wait:.3g}s; the broker is unreachable")
        return DeadlineExceeded(f"{p.model}: no reply within {wait:.3g}s")

    # ------------------------------------------------------------------ capacity
    def _has_room(self, size: int) -> bool:
        if len(self._pending) >= self.max_in_flight:
            return False
        limit = self.max_bytes_in_flight
        return limit is None or self._bytes_in_flight + size <= limit

    async def _reserve(self, model: str, size: int, deadline: float) -> None:
        """Return once a request of ``size`` bytes may go in flight (the
        caller then takes the room before its next ``await``)."""
        if not self._waiters and self._has_room(size):
            return
        if not self.wait_for_capacity:
            raise Overloaded(
                f"{len(self._pending)} requests, {self._bytes_in_flight} bytes in flight "
                "(max_in_flight, max_bytes_in_flight)"
            )
        first = True
        while True:
            waiter = asyncio.get_running_loop().create_future()
            if first:
                self._waiters.append(waiter)
            else:  # woken at the head but still no room: keep its place
                self._waiters.appendleft(waiter)
            first = False
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
            except (TimeoutError, asyncio.CancelledError) as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake()  # pass on a wake-up this caller cannot use
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded(f"{model}: no capacity to send it in time") from None
                raise
            if self._has_room(size):
                if self._has_room(0):
                    self._wake()  # maybe room for the next one too
                return

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, p: _Pending) -> None:
        if self._pending.get(p.id) is p:
            del self._pending[p.id]
            self._bytes_in_flight -= p.size
        if not p.future.done():
            p.future.cancel()  # not yet published: its lane drops it
        self._wake()

    # ------------------------------------------------------------------ publishing
    def _enqueue(self, p: _Pending) -> None:
        if p.queued:
            return
        p.queued = True
        p.enqueued = time.monotonic()
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
        budget = min(_MAX_FRAME_BYTES, self.max_message_bytes)
        size = _FRAME_OVERHEAD + len(self._reply_to.encode())
        now = time.monotonic()
        while lane.queue and len(chunk) < self.max_batch:
            p = lane.queue[0]
            if p.future.done() or p.deadline <= now:
                lane.queue.popleft()
                p.queued = False
                continue  # answered, cancelled or given up while waiting to be sent
            if chunk and (size + _ITEM_OVERHEAD + p.size > budget or p.version != chunk[0].version):
                break
            lane.queue.popleft()
            p.queued = False
            chunk.append(p)
            size += _ITEM_OVERHEAD + p.size
        return chunk

    def _frame(self, chunk: list[_Pending]) -> bytes:
        """The chunk as one message, each request stamped with the budget it has left."""
        now, wall = time.monotonic(), time.time()
        for p in chunk:
            p.publish_started, p.publish_wall = now, wall
        bodies = [wire.with_timeout(p.body, p.deadline - now) for p in chunk]
        return wire.encode_requests(
            bodies, self._reply_to, flags=self._flags, version=chunk[0].version
        )

    async def _publish_lane(self, key: tuple[str, Priority], lane: _Lane) -> None:
        model, priority = key
        failures = 0
        try:
            while chunk := self._next_chunk(lane):
                try:
                    await self._transport.publish_request(model, priority, self._frame(chunk))
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
                    self._refused(chunk, exc)
                else:
                    failures = 0
                    confirmed = time.monotonic()
                    for p in chunk:
                        p.published += 1
                        p.confirmed = confirmed
                    self._hists(model)[1].observe(confirmed - chunk[0].publish_started, len(chunk))
                    self.stats.published += len(chunk)
                    self.stats.messages += 1
        finally:
            lane.publishers -= 1

    def _refused(self, chunk: list[_Pending], exc: FleetError) -> None:
        """A publish the broker refused: its requests fail at once, except
        re-sends refused for a retriable reason, whose originals may still be
        answered: they wait for a reply until their deadline."""
        for p in chunk:
            if p.resent and p.published and exc.retriable:
                log.info("re-send refused; awaiting the original's reply", error=str(exc))
                p.refused = exc
            else:
                self._fail(p, exc)

    def _fail(self, p: _Pending, exc: FleetError) -> None:
        if not p.future.done():
            self.stats.failed += 1
            p.future.set_exception(exc)

    async def _resend_unanswered(self) -> None:
        waiting = [p for p in self._pending.values() if not p.future.done()]
        if waiting:
            log.info("re-sending unanswered requests after reconnect", count=len(waiting))
        self.stats.resent += len(waiting)
        for p in waiting:
            p.resent = True
            self._enqueue(p)

    # ------------------------------------------------------------------ replies
    def _on_reply(self, body: bytes) -> None:
        received, received_wall = time.monotonic(), time.time()
        try:
            frame = wire.decode_replies(body, self._limits)
        except FleetError as exc:
            log.warning("undecodable reply message dropped", error=str(exc))
            return
        decoded = time.monotonic()
        for item in frame.items:
            if not isinstance(item, Reply):
                log.warning("undecodable reply dropped", id=getattr(item, "id", ""))
                continue
            p = self._pending.get(item.id)
            if p is None or p.future.done():
                self.stats.duplicates_dropped += 1
                continue
            if item.error is not None and item.error.retriable and p.resent:
                p.refused = item.error.to_exception()  # the original may still answer
                continue
            self.stats.answered += 1
            values = self._observe_stages(p, item, received, decoded)
            if p.want_stages:
                item = with_stages(item, make_stages(*[v * 1000 for v in values]))
            if p.span is not None:
                self._trace_stages(p, received_wall, decoded - received)
            p.future.set_result(item)

    def _trace_stages(self, p: _Pending, received_wall: float, decode: float) -> None:
        tracer = tracing.active()
        if tracer is None:
            return
        marks = {"coalesce": (tracing.wall_of(p.enqueued), p.publish_wall)}
        if p.confirmed >= p.publish_started:
            marks["publish"] = (p.publish_wall, p.publish_wall + p.confirmed - p.publish_started)
        marks["decode"] = (received_wall, received_wall + decode)
        tracing.client_stages(tracer, p.span, marks)

    def _hists(self, model: str) -> tuple[Histogram, ...]:
        hists = self._stage_hists.get(model)
        if hists is None:
            hists = tuple(self.stages.histogram(stage, model) for stage in CLIENT_STAGES)
            self._stage_hists[model] = hists
        return hists

    def _observe_stages(
        self, p: _Pending, reply: Reply, received: float, decoded: float
    ) -> tuple[float, ...]:
        """The request's stages in seconds, in :data:`CLIENT_STAGES` order, counted
        in the histograms (the publish stage was counted at its confirm)."""
        tm = reply.timings
        publish = p.confirmed - p.publish_started if p.confirmed >= p.publish_started else 0.0
        request_broker = reply_broker = worker_reply = 0.0
        batch_wait, inference = tm.queue_ms / 1000, tm.inference_ms / 1000
        if tm.received_at and tm.replied_at:  # a worker that sends stage times
            worker = max(0.0, tm.replied_at - tm.received_at)
            broker = max(0.0, received - p.publish_started - worker)
            request_broker = min(max(0.0, tm.received_at - p.publish_wall), broker)
            reply_broker = broker - request_broker
            worker_reply = max(0.0, worker - batch_wait - inference)
        values = (
            p.publish_started - p.enqueued,
            publish,
            request_broker,
            batch_wait,
            inference,
            worker_reply,
            reply_broker,
            decoded - received,
            decoded - p.enqueued,
        )
        observe_each(self._hists(reply.model), values, _OBSERVED_HERE)
        return values


__all__ = ["Client", "ClientStats"]
