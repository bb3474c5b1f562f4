"""Jobs from any process: submit now, read the state and the result later.

::

    async with Client(broker, results="redis://:pw@127.0.0.1:6390/0") as client:
        job_id = await client.submit("digits", {"input": x})

    # later, anywhere (only the result store is needed)
    async with Jobs("redis://:pw@127.0.0.1:6390/0") as jobs:
        outputs = await jobs.result(job_id, timeout=60)

:meth:`Client.submit <producer.client.Client.submit>` records the job as
``queued`` in the result store, then publishes its request (``batch``
priority by default) with the job's address as its reply address; a worker
started with ``--results`` (the same store) marks it ``running`` and stores
its reply with the final state. See :mod:`fleet.jobs` for the states and what
happens on faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy.typing as npt

from fleet.contract import Reply
from fleet.errors import (
    DeadlineExceeded,
    DecodeError,
    FleetError,
    JobCancelled,
    JobNotFound,
)
from fleet.jobs import JobEvent, JobState, ResultStore, check_job_id, open_store, reply_of
from fleet.logging import get_logger
from fleet.payloads import PayloadStore, open_payloads, reply_claim, resolve_reply
from fleet.transport import Consumer, Transport, check_destination, connect

log = get_logger("producer.jobs")

_POLL_FIRST_S, _POLL_MAX_S = 0.02, 0.5


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStatus:
    """A job's state as the store has it; ``error`` for a ``failed`` one."""

    id: str
    state: JobState
    model: str = ""
    submitted_at: float = 0.0
    updated_at: float = 0.0
    attempts: int = 0
    error: FleetError | None = None


class Jobs:
    """Reads, waits for and cancels jobs in a result store (a URL or a store)."""

    def __init__(
        self, results: str | ResultStore, *, payloads: str | PayloadStore | None = None
    ) -> None:
        self.store = open_store(results) if isinstance(results, str) else results
        self._owned = isinstance(results, str)
        self.payloads = open_payloads(payloads) if isinstance(payloads, str) else payloads
        """Where large results are (the claim check)."""

    async def __aenter__(self) -> Jobs:
        await self.connect()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Check that the store answers."""
        await self.store.connect()

    async def close(self) -> None:
        """Close the store, if it was made here (from a URL)."""
        if self._owned:
            await self.store.close()

    async def status(self, job_id: str) -> JobStatus:
        """The job's state now (:attr:`JobState.UNKNOWN` when the store has no record)."""
        record = await self.store.get(check_job_id(job_id))
        if record is None:
            return JobStatus(id=job_id, state=JobState.UNKNOWN)
        error = None
        if record.state is JobState.FAILED:
            reply = reply_of(record)
            error = reply.error.to_exception() if reply.error is not None else None
        return JobStatus(
            id=job_id,
            state=record.state,
            model=record.model,
            submitted_at=record.submitted_at,
            updated_at=record.updated_at,
            attempts=record.attempts,
            error=error,
        )

    async def reply(self, job_id: str, *, timeout: float | None = None) -> Reply:
        """Wait up to ``timeout`` seconds (``None``: as long as it takes) for
        the job to end; its :class:`Reply` (a failed job's carries its error).
        :class:`JobCancelled`, :class:`JobNotFound`, or
        :class:`DeadlineExceeded` when it is still open at the timeout."""
        check_job_id(job_id)
        end = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_FIRST_S
        while True:
            record = await self.store.get(job_id)
            if record is None:
                raise JobNotFound(f"job {job_id}: no record (expired, or never submitted)")
            if record.state is JobState.CANCELLED:
                raise JobCancelled(f"job {job_id} was cancelled")
            if record.state.final:
                reply, _ = await resolve_reply(reply_of(record), self.payloads)
                return reply
            if end is not None and time.monotonic() >= end:
                raise DeadlineExceeded(
                    f"job {job_id} still {record.state} after {timeout} s", retriable=True
                )
            wait = pause if end is None else min(pause, max(0.0, end - time.monotonic()))
            await asyncio.sleep(wait)
            pause = min(pause * 2, _POLL_MAX_S)

    async def result(
        self, job_id: str, *, timeout: float | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """The job's outputs, or its typed error raised (see :meth:`reply`)."""
        return (await self.reply(job_id, timeout=timeout)).arrays()

    async def cancel(self, job_id: str) -> bool:
        """Cancel an open job; ``False`` when it had ended (or is unknown)."""
        return await self.store.cancel(check_job_id(job_id))

    async def forget(self, job_id: str) -> None:
        """Delete the job's record and result now, before its TTL (a large
        result's blob too)."""
        record = await self.store.get(check_job_id(job_id))
        if record is not None and record.result is not None and self.payloads is not None:
            blob = reply_claim(reply_of(record))
            if blob is not None:
                await self.payloads.delete(blob)
        await self.store.delete(job_id)


class JobEvents:
    """The notifications of finished jobs (:class:`~fleet.jobs.JobEvent`)
    that workers started with ``--notify DESTINATION`` publish, from now on::

        async with JobEvents(broker, "jobs-finished") as events:
            async for event in events:
                print(event.job, event.state)

    A message that is no job notification is logged and skipped. Delivery is
    at least once: an id may come twice."""

    def __init__(self, broker: str | Transport, destination: str, *, maxsize: int = 10_000):
        self.transport = connect(broker) if isinstance(broker, str) else broker
        self._owned = isinstance(broker, str)
        self.destination = check_destination(destination)
        self._queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize)
        self._consumer: Consumer | None = None
        self.dropped = 0
        """Events not kept: unreadable, or more than ``maxsize`` unread."""

    async def __aenter__(self) -> JobEvents:
        if self._owned:
            await self.transport.connect()
        self._consumer = await self.transport.subscribe_notifications(
            self.destination, self._on_message
        )
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
        if self._owned:
            await self.transport.close()

    def _on_message(self, body: bytes) -> None:
        try:
            self._queue.put_nowait(JobEvent.decode(body))
        except (DecodeError, asyncio.QueueFull) as exc:
            self.dropped += 1
            log.warning("job notification dropped", destination=self.destination, error=str(exc))

    async def get(self, *, timeout: float | None = None) -> JobEvent:
        """The next event; :class:`DeadlineExceeded` after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"no job notification in {timeout} s", retriable=True) from None

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobEvent]:
        while True:
            yield await self._queue.get()


__all__ = ["JobEvents", "JobStatus", "Jobs", "reply_of"]
