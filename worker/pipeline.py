"""One model version's pipeline: batcher → model run → reply sinks.

An :class:`Item` is one request, already validated, and the :class:`ReplySink`
its answer goes to. Every ingress (broker deliveries, an HTTP or a gRPC
endpoint) produces the same items; the pipeline hands each sink the outcomes
of its items, a batch at a time, and knows nothing of where they came from.

A model runs in a thread of its own, so the event loop receives and replies
while it computes; but a batch the model is known to finish in less than
``inline_below`` seconds runs on the event loop itself, where handing it to a
thread and back would cost more than it saves. The pipeline learns that from
the runs it makes (the run alone, without the hand-over), per size class of
batch (rows 1, 2-3, 4-7, ...): a class not yet run, or run slower than the
bound of late, goes to the thread.

Items come in bursts: every delivery of one read from the socket is handled
before the batch loop has its turn again. So a full batch does not wait for
that turn when a model slot is free (the batch loop holding it while it waits
for items, or a run that ended on the model's thread before the loop heard of
it): :meth:`Pipeline.submit` hands it to the model's thread at once. Work that
would wait for a busy model stays in the batcher, where the batch loop forms
the next batch as ever.

Items whose deadline passed, or that their ingress cancelled (a synchronous
caller that went away), are dropped before inference. When a batch fails,
its items are run one by one so that only the bad one fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fleet.contract import ErrorInfo, Reply, Request, Timings, make_reply, make_timings
from fleet.errors import FleetError, Internal
from fleet.eventloop import together
from fleet.logging import get_logger
from fleet.tensor import Tensor, split_rows
from worker.batcher import Batcher
from worker.runtime import Feeds

log = get_logger("worker.pipeline")


@dataclass(eq=False, slots=True)
class _Launch:
    """A batch's run as started: when, its rows, and the thread's future
    (``None``: it runs inline, where it is awaited)."""

    started: float  # time.time()
    started_mono: float
    t0: float  # the pipeline's clock
    rows: int
    run: asyncio.Future[tuple[Feeds, float, float]] | None = None
    owns_slot: bool = False  # a batch's run, holding a model slot (not an isolating rerun)
    finished: bool = False  # set by the model's thread as the run ends
    slot_passed: bool = False  # its slot went to the next batch before the loop heard it end


class ModelRunner(Protocol):
    """What the pipeline needs of a :class:`worker.runtime.ModelRuntime`."""

    @property
    def max_batch_size(self) -> int: ...

    def run(self, feeds: Feeds) -> Feeds: ...


class ReplySink(Protocol):
    """Where items' answers go, and how they are settled: one per ingress, or
    one per request; the pipeline only groups a batch's outcomes by sink."""

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Deliver these outcomes (all of them this sink's) and settle their requests.

        An outcome without a reply is a request dropped because its deadline
        passed. Called once per batch with every outcome of it for this sink.
        """
        ...


@dataclass(eq=False, slots=True)
class Item:
    """One validated request on its way through a pipeline."""

    request: Request
    feeds: Feeds
    rows: int
    sink: ReplySink
    synchronous: bool = False  # a caller holds a connection open: served first
    cancelled: bool = False  # set by the ingress: drop it unless it already runs


@dataclass(frozen=True, slots=True)
class Outcome:
    item: Item
    reply: Reply | None  # None: expired, dropped without a reply
    ended: float = 0.0  # time.monotonic() when its batch's run ended (0: it did not run)


@dataclass(frozen=True, slots=True)
class BatchStats:
    model: str
    rows: int
    inference_s: float
    queue_wait_s: list[float] = field(default_factory=list)
    version: str = ""


class Pipeline:
    def __init__(
        self,
        *,
        model: str,
        version: str,
        runner: ModelRunner,
        max_wait: float,
        worker_id: str,
        on_batch: Callable[[BatchStats], None],
        threads: int = 1,
        inline_below: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model = model
        self.version = version
        self.runner = runner
        self.worker_id = worker_id
        self.batcher: Batcher[Item] = Batcher(runner.max_batch_size, max_wait)
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=f"ort-{model}")
        self._free = threads  # model slots no batch holds
        self._slot_waiter: asyncio.Future[None] | None = None  # the batch loop's, for a slot
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._inline_below = inline_below
        self._clock = clock
        self._run_s: dict[int, float] = {}  # size class -> moving average of a run, seconds
        self.inline_runs = 0
        self.early_batches = 0  # full batches started from submit
        self._in_flight: set[_Launch] = set()  # runs handed to the model's thread

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, item: Item) -> None:
        self.batcher.put(
            item, rows=item.rows, priority=item.request.priority, synchronous=item.synchronous
        )
        if self.batcher.rows >= self.batcher.max_batch_size:
            self._start_full_batch()

    def _start_full_batch(self) -> None:
        """Hand a full batch to the model's thread now. Items come in bursts
        (every delivery of one read from the socket is handled before the
        batch loop's turn comes round again): without this, the model would
        sit idle until the whole burst was decoded, and each batch would
        wait for the burst ahead of it. Only while a model slot is free:
        work that would wait for a busy model stays in the batcher, where the
        batch loop forms the next batch as it always does (a later
        synchronous request first, a cancelled one dropped). A batch of a
        size class known to run inline is left to the batch loop too."""
        if self._runs_inline(self.batcher.max_batch_size):
            return
        donor = None  # a run that ended on the thread: its slot, not yet released
        if not self._free:
            donor = next(
                (r for r in self._in_flight if r.owns_slot and r.finished and not r.slot_passed),
                None,
            )
            if donor is None:
                return  # every slot busy: the batch loop takes it when one is free
        batch = self.batcher.full_batch()
        if not batch:
            return
        if donor is None:
            self._free -= 1
        else:
            donor.slot_passed = True
        outcomes, live = _triage(batch)
        launch = self._launch(live, inline=False, owns_slot=True) if live else None
        self.early_batches += 1
        self._spawn(self._finish(outcomes, live, launch))

    async def _finish(
        self, outcomes: list[Outcome], live: list[Item], launch: _Launch | None
    ) -> None:
        try:
            if launch is not None:
                outcomes.extend(await self._infer(live, launch))
        finally:
            self._release(launch)
        await self._hand_over(outcomes)

    def _release(self, launch: _Launch | None) -> None:
        """Free a batch's slot, unless it went on to the next batch already."""
        if launch is None or not launch.slot_passed:
            self._free += 1
            waiter, self._slot_waiter = self._slot_waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` takes items (not once closing or aborted)."""
        return not self.batcher.closed

    @property
    def busy(self) -> bool:
        return len(self.batcher) > 0 or bool(self._tasks)

    async def close(self) -> None:
        """Finish what was submitted, then stop."""
        self.batcher.close()
        if self._loop_task is not None:
            await self._loop_task
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def abort(self) -> None:
        """Stop now; unfinished items are never answered (a broker delivers
        their messages again)."""
        self.batcher.close()
        self.batcher.drain()
        if self._loop_task is not None:
            self._loop_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(
            self._loop_task or asyncio.sleep(0), *self._tasks, return_exceptions=True
        )
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        """Take a batch each time one is due and a model slot is free: what
        arrived while the model ran goes into the next batch whole, and with
        ``max_wait`` 0 an idle model runs a request at once rather than waiting
        for company. The loop waits for a slot only while every one is busy,
        so a batch that ends with nothing queued wakes nobody."""
        while True:
            await self.batcher.ready()
            if not self._free:
                self._slot_waiter = asyncio.get_running_loop().create_future()
                await self._slot_waiter
                continue  # a batch may have started from submit meanwhile
            batch = self.batcher.take()
            if not batch:
                return  # ready() with nothing queued: closed, and all of it taken
            self._free -= 1
            self._spawn(self._process(batch))

    async def _process(self, batch: list[Item]) -> None:
        launch = None
        try:
            outcomes, live = _triage(batch)
            if live:
                launch = self._launch(live, owns_slot=True)
                outcomes.extend(await self._infer(live, launch))
        finally:
            self._release(launch)  # the next batch may run while these replies go out
        await self._hand_over(outcomes)

    async def _hand_over(self, outcomes: list[Outcome]) -> None:
        """Give each sink (by identity) its outcomes of the batch, every sink at once."""
        by_sink: dict[int, tuple[ReplySink, list[Outcome]]] = {}
        for o in outcomes:
            by_sink.setdefault(id(o.item.sink), (o.item.sink, []))[1].append(o)
        await together(self._settle(sink, outs) for sink, outs in by_sink.values())

    async def _settle(self, sink: ReplySink, outcomes: list[Outcome]) -> None:
        try:
            await sink.settle(outcomes)
        except Exception:
            log.exception("publishing replies failed", model=self.model)

    def _launch(
        self, items: list[Item], *, inline: bool = True, owns_slot: bool = False
    ) -> _Launch:
        """Start ``items``' run on the model's thread now, or (``inline`` and
        its size class known to be quick) leave it to run where awaited."""
        rows = sum(i.rows for i in items)
        launch = _Launch(time.time(), time.monotonic(), self._clock(), rows, owns_slot=owns_slot)
        if not (inline and self._runs_inline(rows)):
            launch.run = asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_on_thread, launch, items
            )
            self._in_flight.add(launch)
        return launch

    def _run_on_thread(self, launch: _Launch, items: list[Item]) -> tuple[Feeds, float, float]:
        try:
            return self._run_batch(items, launch.rows)
        finally:
            launch.finished = True  # the model is free, before the loop hears of it

    async def _infer(self, items: list[Item], launch: _Launch | None = None) -> list[Outcome]:
        launch = launch or self._launch(items)
        started, started_mono, t0, rows = (
            launch.started,
            launch.started_mono,
            launch.t0,
            launch.rows,
        )
        try:
            if launch.run is None:
                self.inline_runs += 1
                outputs, run_start, run_end = self._run_batch(items, rows)
            else:
                try:
                    outputs, run_start, run_end = await launch.run
                finally:
                    self._in_flight.discard(launch)
        except Exception as exc:
            if len(items) == 1:
                return [self._error(items[0], exc)]
            log.warning("batch failed; isolating its items", model=self.model, size=len(items))
            results: list[Outcome] = []
            for item in items:
                results.extend(await self._infer([item]))
            return results
        # the run alone is the inference; the hand-over to the model's thread
        # (and the batch's assembly) is waiting, the hand-back is the reply's
        elapsed = run_end - run_start
        lead = max(0.0, run_start - t0)
        started, started_mono = started + lead, started_mono + lead
        ended = time.monotonic() - max(0.0, self._clock() - run_end)
        waits = [i.request.waited(started, monotonic=started_mono) for i in items]
        self._on_batch(
            BatchStats(
                model=self.model,
                rows=rows,
                inference_s=elapsed,
                queue_wait_s=waits,
                version=self.version,
            )
        )
        out: list[Outcome] = []
        counts = [i.rows for i in items]
        per_output = [split_rows(name, arr, counts) for name, arr in outputs.items()]
        run_ms = elapsed * 1000
        for n, (item, wait) in enumerate(zip(items, waits, strict=True)):
            tensors = tuple(pieces[n] for pieces in per_output)
            timings = make_timings(wait * 1000, run_ms, rows, self.worker_id, started - wait, 0.0)
            out.append(Outcome(item, self._reply(item, outputs=tensors, timings=timings), ended))
        return out

    def _runs_inline(self, rows: int) -> bool:
        """Whether a batch of ``rows``'s size class is known to run in under ``inline_below``."""
        if self._inline_below <= 0:
            return False
        known = self._run_s.get(rows.bit_length())
        return known is not None and known < self._inline_below

    def _learn(self, rows: int, elapsed: float) -> None:
        size_class = rows.bit_length()
        known = self._run_s.get(size_class)
        self._run_s[size_class] = elapsed if known is None else known + 0.2 * (elapsed - known)

    def _run_batch(self, items: list[Item], rows: int) -> tuple[Feeds, float, float]:
        """Run ``items`` as one batch where it is called (the loop or the
        thread), learning how long a run of its size class takes: the run alone,
        not the hand-over to a thread and back. Returns the outputs and when
        the run started and ended, on the pipeline's clock."""
        if len(items) == 1:
            feeds = items[0].feeds
        else:
            feeds = {
                name: np.concatenate([i.feeds[name] for i in items], axis=0)
                for name in items[0].feeds
            }
        t0 = self._clock()
        outputs = self.runner.run(feeds)
        t1 = self._clock()
        self._learn(rows, t1 - t0)
        return outputs, t0, t1

    def _reply(
        self,
        item: Item,
        *,
        outputs: tuple[Tensor, ...] = (),
        error: ErrorInfo | None = None,
        timings: Timings | None = None,
    ) -> Reply:
        timings = timings or Timings(worker_id=self.worker_id)
        return make_reply(item.request.id, self.model, self.version, outputs, error, timings, None)

    def _error(self, item: Item, exc: BaseException) -> Outcome:
        if not isinstance(exc, FleetError):
            log.warning("model run failed", model=self.model, error=repr(exc))
            exc = Internal(f"model {self.model} version {self.version} failed: {exc}")
        return Outcome(item, self._reply(item, error=ErrorInfo.of(exc)))


def _triage(batch: list[Item]) -> tuple[list[Outcome], list[Item]]:
    """The outcomes of the items to drop (deadline passed, or cancelled by
    their ingress), and the items to run."""
    now = time.time()
    dropped = [i.cancelled or i.request.expired(now) for i in batch]
    outcomes = [Outcome(i, None) for i, d in zip(batch, dropped, strict=True) if d]
    live = [i for i, d in zip(batch, dropped, strict=True) if not d]
    return outcomes, live


__all__ = ["BatchStats", "Item", "ModelRunner", "Outcome", "Pipeline", "ReplySink"]
