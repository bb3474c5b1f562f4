"""Synchronous requests into the pipelines: what the OIP servers share.

The Open Inference Protocol over HTTP (:mod:`worker.oip_http`) and over gRPC
(:mod:`worker.oip_grpc`) decode their calls and hand them here. A call becomes
an :class:`~worker.pipeline.Item` of the same pipeline the broker's deliveries
feed, so synchronous and queued requests for one model version share
batches; it goes in the synchronous lane, served before queued ``online`` and
``batch`` items. This object is the :class:`~worker.pipeline.ReplySink` of
those items and wakes each waiting call with its outcome.

Admission is shared by both protocols: at most ``max_queued`` synchronous
requests wait or run at once; one more is refused at once with
:class:`~fleet.errors.Overloaded` (HTTP 503, gRPC ``RESOURCE_EXHAUSTED``: a
load balancer retries elsewhere). A call's timeout is its deadline
(``default_timeout`` without one): an item not started by then is dropped and
the call fails with :class:`~fleet.errors.DeadlineExceeded`. A caller that
goes away cancels its item unless it already runs.

:meth:`SyncIngress.window` reports what the worker's heartbeat carries of
this path: requests arrived (refused ones included: they are demand too),
refused, in flight, and the median queue wait.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fleet.contract import ParamValue, Priority, Reply, Request, new_request_id
from fleet.errors import (
    DeadlineExceeded,
    FleetError,
    Internal,
    InvalidArgument,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from fleet.logging import get_logger
from fleet.tensor import Tensor
from worker.ledger import Ledger
from worker.model_table import ModelTable
from worker.pipeline import Item, Outcome
from worker.runtime import ModelRuntime

log = get_logger("worker.sync_ingress")

# what a request's own content can make a runtime's checks raise: its caller's error
_INPUT_ERRORS = (ValueError, TypeError, IndexError, KeyError, OverflowError)
_MAX_WAITS = 10_000  # queue waits kept per heartbeat window


@dataclass(frozen=True, kw_only=True, slots=True)
class SyncWindow:
    """The synchronous path since the last :meth:`SyncIngress.window`."""

    arrived_total: int  # calls that asked for inference, refused ones included
    rejected_total: int  # of those, refused because the worker was full
    in_flight: int  # submitted and not yet answered, now
    queue_wait_p50: float  # seconds, over the calls answered in the window


class SyncIngress:
    """Admission, deadlines and answers of one worker's synchronous calls."""

    def __init__(
        self,
        table: ModelTable,
        ledger: Ledger,
        *,
        ready: Callable[[], bool],
        max_queued: int,
        default_timeout: float,
    ) -> None:
        self.table = table
        self._ledger = ledger
        self._ready = ready
        self.max_queued = max_queued
        self.default_timeout = default_timeout
        self._waiting: dict[Item, asyncio.Future[Reply | None]] = {}
        self._queued = 0  # items submitted and not yet settled
        self._ids = map(f"oip-{new_request_id()[:12]}-{{}}".format, itertools.count())
        self.arrived_total = 0
        self.rejected_total = 0
        self._waits: list[float] = []

    # ------------------------------------------------------------------ state
    def ready(self) -> bool:
        return self._ready()

    def in_flight(self) -> int:
        """Synchronous requests submitted and not yet settled."""
        return self._queued

    def waiting(self) -> int:
        """Calls waiting for their answer (not those whose caller went away)."""
        return len(self._waiting)

    def window(self) -> SyncWindow:
        """The counters, and the median queue wait since the last call."""
        waits, self._waits = self._waits, []
        return SyncWindow(
            arrived_total=self.arrived_total,
            rejected_total=self.rejected_total,
            in_flight=self._queued,
            queue_wait_p50=statistics.median(waits) if waits else 0.0,
        )

    def new_id(self) -> str:
        """An id for a call that brought none (a uuid per call costs a syscall)."""
        return next(self._ids)

    def resolve(
        self, model: str, asked: str | None, request_id: str
    ) -> tuple[str, ModelRuntime | None]:
        """The version ``asked`` (a version, a label, or none: the default)
        means for this call, and its runtime where it is served now;
        :class:`ModelNotFound` for a model not served."""
        if model not in self.table.runtimes:
            raise ModelNotFound(
                f"this worker does not serve model {model!r}; models: {self.table.models}"
            )
        version = self.table.resolve(model, asked or None, request_id)
        return version, self.table.runtimes[model].get(version)

    def runtime(self, model: str, asked: str | None) -> tuple[str, ModelRuntime]:
        """The version served for ``asked`` (see :meth:`resolve`) and its
        runtime; :class:`ModelNotFound` naming what is served."""
        version, runtime = self.resolve(model, asked, "")
        if runtime is None:
            raise self.table.not_found(model, version)
        return version, runtime

    def abort_waiting(self) -> None:
        """Fail every call still waiting: its pipeline will not answer (abort)."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable("the worker stopped before answering"))

    # ------------------------------------------------------------------ inference
    async def infer(
        self,
        model: str,
        version: str,
        inputs: tuple[Tensor, ...],
        *,
        request_id: str,
        parameters: Mapping[str, ParamValue],
        timeout_s: float | None,
    ) -> Reply:
        """Submit one call to its pipeline and wait for its reply."""
        self.arrived_total += 1
        if not self._ready():
            raise Unavailable("the worker is not ready")
        if self._queued >= self.max_queued:
            self.rejected_total += 1
            raise Overloaded(f"{self._queued} synchronous requests are waiting; try another worker")
        timeout = timeout_s or self.default_timeout
        req = Request(
            id=request_id,
            model=model,
            version=version,
            inputs=inputs,
            deadline=time.time() + timeout,
            priority=Priority.ONLINE,
            parameters=parameters,
            sent_at=time.time(),
            timeout=timeout,
            arrived=time.monotonic(),
        )
        item = self._submit(req)
        fut = self._waiting[item]
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            item.cancelled = True
            raise DeadlineExceeded(f"no answer within the timeout of {timeout:g} s") from None
        except asyncio.CancelledError:  # the caller went away
            item.cancelled = True
            raise
        finally:
            self._waiting.pop(item, None)
        if reply is None:
            raise DeadlineExceeded(f"the deadline of {timeout:g} s passed before inference")
        return reply

    def _submit(self, req: Request) -> Item:
        try:
            pipe, feeds, rows = self.table.route(req)
        except FleetError:
            raise
        except _INPUT_ERRORS as exc:
            raise InvalidArgument(f"the inputs do not fit the model: {exc}") from None
        except Exception as exc:
            log.exception("routing a request failed", model=req.model)
            raise Internal(f"the request could not be served: {exc!r}") from None
        if not pipe.accepting:
            raise Unavailable("the worker is stopping")
        item = Item(request=req, feeds=feeds, rows=rows, sink=self, synchronous=True)
        try:
            pipe.submit(item)
        except Exception as exc:
            log.exception("submitting a request failed", model=req.model)
            raise Internal(f"the request could not be served: {exc!r}") from None
        self._waiting[item] = asyncio.get_running_loop().create_future()
        self._queued += 1
        self._ledger.submitted()
        return item

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Wake each waiting call with its outcome (a cancelled call's is dropped)."""
        self._ledger.finished(outcomes)
        for o in outcomes:
            self._queued -= 1
            timings = o.reply.timings if o.reply is not None else None
            if timings is not None and len(self._waits) < _MAX_WAITS:
                self._waits.append(timings.queue_ms / 1000)
            fut = self._waiting.get(o.item)
            if fut is not None and not fut.done():
                fut.set_result(o.reply)


__all__ = ["SyncIngress", "SyncWindow"]
